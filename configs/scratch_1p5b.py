"""Pretraining a 1.5B model (24 layers) from scratch: p_max 0.1 rising over time, e_scale 0.2, rotational R=23."""

from configs import base


def get_config():
    return base.paper_recipe(
        p_max=0.1, e_scale=0.2, curriculum="rotational", rotation=23, from_scratch=True,
        model=base.LAYERSKIP_1P5B)
