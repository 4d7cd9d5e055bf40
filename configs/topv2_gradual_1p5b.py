"""Task fine-tuning (TOPv2-style) of the 1.5B model: p_max 0.2, e_scale 1.0, gradual curriculum.

Needs --config.init_from (an HF Llama directory) and a prepared TFDS dataset (--config.data.name).
"""

from configs import base


def get_config():
    return base.paper_recipe(
        p_max=0.2, e_scale=1.0, curriculum="gradual",
        model=base.LAYERSKIP_1P5B)
