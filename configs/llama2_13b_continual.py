"""Continual pretraining of Llama2 13B (40 layers): p_max 0.1, e_scale 0.1, rotational R=39.

Needs --config.init_from (an HF Llama directory) and a prepared TFDS dataset (--config.data.name).
"""

from configs import base

LLAMA2_13B = dict(base.LLAMA2_7B, hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40,
                  num_kv_heads=40)


def get_config():
    return base.paper_recipe(p_max=0.1, e_scale=0.1, curriculum="rotational", rotation=39, model=LLAMA2_13B)
