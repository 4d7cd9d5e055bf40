"""Pretraining a 7B model (32 layers) from scratch: p_max 0.2 rising over time, e_scale 0.2, rotational R=31."""

from configs import base


def get_config():
    return base.paper_recipe(
        p_max=0.2, e_scale=0.2, curriculum="rotational", rotation=31, from_scratch=True,
        model=base.LLAMA2_7B)
