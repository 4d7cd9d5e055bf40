"""Fine-tuning a 7B Llama on code: p_max 0.1, e_scale 1.0, rotational R=16.

Needs --config.init_from (an HF Llama directory) and a prepared TFDS dataset (--config.data.name).
"""

from configs import base


def get_config():
    return base.paper_recipe(
        p_max=0.1, e_scale=1.0, curriculum="rotational", rotation=16,
        model=base.LLAMA2_7B)
