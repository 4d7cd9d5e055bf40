"""The LayerSkip training objective: per-sample layer dropout inside the forward pass, then the early-exit loss.

One function for the train step and one for held-out evaluation, both pure, so that the training loop
only handles optimisation, data and bookkeeping.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lsjax import early_exit, layer_dropout, model
from lsjax.config import LlamaConfig


class Recipe(NamedTuple):
    """The static knobs of SPEC section 1 (hashable: a static argument of the jitted step)."""

    p_max: float
    layer_dropout_scale: str
    layer_dropout_time_scale: str
    e_scale: float
    exit_scale_shape: str
    curriculum: str
    rotation: int
    self_distill_beta: float
    total_steps: int
    seed: int
    loss_chunk_size: int

    @classmethod
    def from_config(cls, train_cfg) -> "Recipe":
        return cls(float(train_cfg.p_max), train_cfg.layer_dropout_scale, train_cfg.layer_dropout_time_scale,
                   float(train_cfg.e_scale), train_cfg.exit_scale_shape, train_cfg.curriculum, int(train_cfg.rotation),
                   float(train_cfg.self_distill_beta), int(train_cfg.steps), int(train_cfg.seed),
                   int(train_cfg.loss_chunk_size))


def _forward_layers(config: LlamaConfig, params, batch, residual_mask=None):
    return model.forward(config, params, batch["inputs"], positions=batch["positions"],
                         segment_ids=batch["segment_ids"], residual_mask=residual_mask, collect_hidden=True).hidden


def layerskip_loss(config: LlamaConfig, recipe: Recipe, params, batch, step):
    """(loss, (ExitLoss, selected layer indices [K])) for one (micro-)batch at `step`.

    batch: dict of [B, T] arrays `inputs`, `targets`, `positions`, `segment_ids`, `loss_mask`, and [B]
    `sample_index` (global indices, so layer-dropout draws do not depend on the device layout).
    """
    keep = None
    if recipe.p_max > 0:
        rates = layer_dropout.drop_rates(recipe.p_max, config.num_layers, step, recipe.total_steps,
                                         recipe.layer_dropout_scale, recipe.layer_dropout_time_scale)
        keep = layer_dropout.keep_mask(recipe.seed, step, batch["sample_index"], rates)
    hidden = _forward_layers(config, params, batch, keep)
    selection = early_exit.select_layers(recipe.curriculum, config.num_layers, step, recipe.total_steps,
                                         recipe.e_scale, recipe.rotation, recipe.exit_scale_shape)
    out = early_exit.early_exit_loss(config, params, hidden, batch["targets"], selection,
                                     loss_mask=batch["loss_mask"], beta=recipe.self_distill_beta,
                                     chunk_size=recipe.loss_chunk_size)
    return out.loss, (out, selection.layers)


def evaluate_exits(config: LlamaConfig, params, batch, chunk_size: int = 1024):
    """Per-layer held-out statistics of every exit (no dropout): sums of loss, correct, agreement; and count."""
    hidden = _forward_layers(config, params, batch)
    every_layer = early_exit.Selection(jnp.arange(config.num_layers, dtype=jnp.int32),
                                       jnp.zeros((config.num_layers,), jnp.float32))
    out = early_exit.early_exit_loss(config, params, hidden, batch["targets"], every_layer,
                                     loss_mask=batch["loss_mask"], chunk_size=chunk_size, measure_agreement=True)
    count = jnp.sum(batch["loss_mask"])
    return jax.tree.map(lambda x: x * count, (out.layer_loss, out.layer_accuracy, out.layer_agreement)), count
