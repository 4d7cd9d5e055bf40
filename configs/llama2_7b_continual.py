"""Continual pretraining of Llama2 7B (32 layers): p_max 0.1, e_scale 0.2, rotational R=8.

Needs --config.init_from (an HF Llama directory) and a prepared TFDS dataset (--config.data.name).
"""

from configs import base


def get_config():
    return base.paper_recipe(
        p_max=0.1, e_scale=0.2, curriculum="rotational", rotation=8,
        model=base.LLAMA2_7B)
