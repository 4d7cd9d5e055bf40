"""The LayerSkip training objective: per-sample layer dropout inside the forward pass, then the early-exit loss;
or, with `train.objective = free`, FREE's shallow-deep objective (`lsjax.shallow_deep`).

One function for the train step and one for held-out evaluation, both pure, so that the training loop
only handles optimisation, data and bookkeeping.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from lsjax import early_exit_loss, layer_dropout, model, shallow_deep
from lsjax.config import LlamaConfig


class Recipe(NamedTuple):
    """The static knobs of the recipe (docs/algorithms.md, the LayerSkip recipe); hashable: a static argument of
    the jitted step."""

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
    objective: str = "layerskip"  # layerskip | free
    free_exit_layer: int = 0  # S of the free objective; 0: a quarter of the layers
    free_alpha: float = shallow_deep.ALPHA
    free_mapping: str = "dynamic"  # uniform | last | dynamic
    exits: tuple[int, ...] = ()  # the "fixed" curriculum's exits E (after layers [0, E))

    @classmethod
    def from_config(cls, train_cfg) -> Recipe:
        return cls(float(train_cfg.p_max), train_cfg.layer_dropout_scale, train_cfg.layer_dropout_time_scale,
                   float(train_cfg.e_scale), train_cfg.exit_scale_shape, train_cfg.curriculum, int(train_cfg.rotation),
                   float(train_cfg.self_distill_beta), int(train_cfg.steps), int(train_cfg.seed),
                   int(train_cfg.loss_chunk_size), train_cfg.get("objective", "layerskip"),
                   int(train_cfg.get("free_exit_layer", 0)), float(train_cfg.get("free_alpha", shallow_deep.ALPHA)),
                   train_cfg.get("free_mapping", "dynamic"), tuple(int(e) for e in train_cfg.get("exits", ())))


# Held-out evaluation unembeds this many exits at a time (with every exit's logits of a chunk at once, a
# 16-layer model on a 128k vocabulary would hold 16 x chunk x 128k floats).
EVAL_EXIT_GROUP = 4


def _forward_layers(config: LlamaConfig, params, batch, residual_mask=None):
    return model.forward(config, params, batch["inputs"], positions=batch["positions"],
                         segment_ids=batch["segment_ids"], residual_mask=residual_mask, collect_hidden=True).hidden


def layerskip_loss(config: LlamaConfig, recipe: Recipe, params, batch, step):
    """(loss, (ExitLoss, selected layer indices [K])) for one (micro-)batch at `step`; with
    recipe.objective == "free" the shallow-deep loss instead (its two exits are the selected layers).

    batch: dict of [B, T] arrays `inputs`, `targets`, `positions`, `segment_ids`, `loss_mask`, and [B]
    `sample_index` (global indices, so layer-dropout draws do not depend on the device layout).
    """
    params = model.in_compute_dtype(config, params)
    keep = None
    if recipe.p_max > 0:
        rates = layer_dropout.drop_rates(recipe.p_max, config.num_layers, step, recipe.total_steps,
                                         recipe.layer_dropout_scale, recipe.layer_dropout_time_scale)
        keep = layer_dropout.keep_mask(recipe.seed, step, batch["sample_index"], rates)
    hidden = _forward_layers(config, params, batch, keep)
    if recipe.objective == "free":
        shallow = recipe.free_exit_layer or shallow_deep.default_exit(config.num_layers)
        value, out, layers = shallow_deep.loss(config, params, hidden, batch["targets"], batch["loss_mask"], shallow,
                                               recipe.free_alpha, recipe.free_mapping, recipe.loss_chunk_size)
        return value, (out, layers)
    selection = early_exit_loss.select_layers(recipe.curriculum, config.num_layers, step, recipe.total_steps,
                                              recipe.e_scale, recipe.rotation, recipe.exit_scale_shape, recipe.exits)
    out = early_exit_loss.early_exit_loss(config, params, hidden, batch["targets"], selection,
                                          loss_mask=batch["loss_mask"], beta=recipe.self_distill_beta,
                                          chunk_size=recipe.loss_chunk_size)
    return out.loss, (out, selection.layers)


def evaluate_exits(config: LlamaConfig, params, batch, chunk_size: int = 1024):
    """Per-layer held-out statistics of every exit (no dropout): sums of loss, correct, agreement; and count.

    The exits are unembedded EVAL_EXIT_GROUP at a time, each group in chunks of tokens."""
    params = model.in_compute_dtype(config, params)
    hidden = _forward_layers(config, params, batch)
    groups = []
    for first in range(0, config.num_layers, EVAL_EXIT_GROUP):
        layers = jnp.arange(first, min(first + EVAL_EXIT_GROUP, config.num_layers), dtype=jnp.int32)
        groups.append(early_exit_loss.early_exit_loss(
            config, params, hidden, batch["targets"], early_exit_loss.Selection(layers, jnp.zeros(layers.shape)),
            loss_mask=batch["loss_mask"], chunk_size=chunk_size, measure_agreement=True))
    count = jnp.sum(batch["loss_mask"])
    stats = [jnp.concatenate([getattr(g, name) for g in groups]) * count
             for name in ("layer_loss", "layer_accuracy", "layer_agreement")]
    return tuple(stats), count
