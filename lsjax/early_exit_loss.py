"""LayerSkip early-exit loss: every selected layer is unembedded through the one shared head
(docs/algorithms.md, early-exit loss).

J = sum_l ẽ(t,l) CE(g(x_{l+1}), Y) with e(l) rising quadratically over depth, normalised over the layers a
curriculum enables at step t. Shapes stay static: each curriculum selects a fixed number K of layers per
step by traced indices (unused slots point at the last layer with weight 0), and the cross-entropy runs over
chunks of tokens with rematerialisation, so K layers x a 128k vocabulary never hold all their logits at once.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lsjax import model
from lsjax.config import LlamaConfig

CURRICULA = ("none", "rotational", "gradual", "fixed")


# f(l), the growth of e(l) over depth. "sum_l" is the paper's (docs/algorithms.md, per-layer scales); the
# others shift weight towards shallow exits, which raises their agreement with the last layer (torchtune offers
# the same family).
EXIT_SCALE_SHAPES = {
    "sum_l": lambda layers: layers * (layers + 1) / 2,
    "l": lambda layers: layers,
    "sqrt_l": np.sqrt,
    "one": np.ones_like,
}


def exit_scales(num_layers: int, e_scale: float, shape: str = "sum_l") -> np.ndarray:
    """e(l) for l = 0..L-1: e_scale * f(l), and (L-1) + e_scale * f(L-2) for the last layer."""
    if shape not in EXIT_SCALE_SHAPES:
        raise ValueError(f"early-exit scale shape {shape!r}: expected one of {list(EXIT_SCALE_SHAPES)}")
    if num_layers == 1:
        return np.ones((1,), np.float32)
    growth = EXIT_SCALE_SHAPES[shape](np.arange(num_layers, dtype=np.float64))
    scales = e_scale * growth
    scales[-1] = (num_layers - 1) + e_scale * growth[-2]
    return scales.astype(np.float32)


def curriculum_mask(kind: str, num_layers: int, step, total_steps: int, rotation: int = 1,
                    exits: tuple[int, ...] = ()) -> jax.Array:
    """C(t, l) as bool [L] (traceable in step); the last layer is always enabled.

    "fixed" enables, at every step, the exits after the first E layers for each E in `exits` (layer E - 1,
    the exit `decode.py --exit-layer E` drafts from): training for one drafting depth rather than all."""
    layers = jnp.arange(num_layers)
    last = layers == num_layers - 1
    if kind == "none":
        return jnp.ones((num_layers,), bool)
    if kind == "fixed":
        return jnp.asarray(fixed_mask(num_layers, exits))
    if kind == "rotational":
        return ((layers - step) % rotation == 0) | last
    if kind == "gradual":  # layer l joins once 2t/T >= (L - l)/L: one every T/(2L) steps, all on at T/2
        step = jnp.asarray(step, jnp.int32)
        return (2 * step * num_layers >= (num_layers - layers) * total_steps) | last
    raise ValueError(f"early-exit curriculum {kind!r}: expected one of {list(CURRICULA)}")


def fixed_mask(num_layers: int, exits: tuple[int, ...]) -> np.ndarray:
    """The fixed curriculum's layers, on the host (its slot count is static even inside a traced step): the
    exits after layers [0, E) for each E in `exits`, and the last layer."""
    return np.isin(np.arange(1, num_layers + 1), exits) | (np.arange(num_layers) == num_layers - 1)


def num_selected(kind: str, num_layers: int, rotation: int = 1, e_scale: float = 1.0, shape: str = "sum_l",
                 exits: tuple[int, ...] = ()) -> int:
    """K, the static number of weighted layers a curriculum can have at any step.

    Layers with e(l) = 0 (layer 0 under "sum_l", every exit when e_scale = 0) never need a slot; with
    e_scale = 0 the loss is plain language modelling at the cost of a single unembedding.
    """
    scales = exit_scales(num_layers, e_scale, shape)
    weighted = int(np.count_nonzero(scales))
    if kind == "fixed":  # the same layers at every step
        return int(np.count_nonzero(scales[fixed_mask(num_layers, exits)]))
    if kind == "rotational":
        return min(weighted, math.ceil(num_layers / rotation) + 1)
    return weighted


class Selection(NamedTuple):
    layers: jax.Array  # int32 [K]: weighted layers l (the loss reads x_{l+1}, the output of layer l)
    weights: jax.Array  # float32 [K]: ẽ(t, l), summing to 1; 0 for unused slots (which repeat the last layer)


def select_layers(kind: str, num_layers: int, step, total_steps: int, e_scale: float, rotation: int = 1,
                  shape: str = "sum_l", exits: tuple[int, ...] = ()) -> Selection:
    enabled = curriculum_mask(kind, num_layers, step, total_steps, rotation, exits)
    scales = jnp.where(enabled, jnp.asarray(exit_scales(num_layers, e_scale, shape)), 0.0)
    normalised = scales / jnp.sum(scales)
    k = num_selected(kind, num_layers, rotation, e_scale, shape, exits)
    (layers,) = jnp.nonzero(scales > 0, size=k, fill_value=num_layers - 1)
    used = jnp.arange(k) < jnp.sum(scales > 0)
    return Selection(layers.astype(jnp.int32), jnp.where(used, normalised[layers], 0.0))


class ExitLoss(NamedTuple):
    loss: jax.Array  # scalar: sum_k weights[k] * (CE_k + beta * KL_k)
    layer_loss: jax.Array  # [K] mean cross-entropy of each selected exit
    layer_accuracy: jax.Array  # [K] top-1 accuracy of each selected exit
    layer_kl: jax.Array  # [K] mean KL(last layer || exit); zeros when beta == 0
    layer_agreement: jax.Array  # [K] how often the exit's top-1 equals the last layer's (if measured, else 0)


def _chunk_stats(config, params, beta, agreement, x, teacher_x, targets, mask):
    """Sums over one chunk of positions: x [K, B, c, D], teacher_x [B, c, D], targets/mask [B, c] -> [4, K]
    sums of cross-entropy, correct top-1, KL(last || exit) and top-1 agreement with the last layer."""
    logits = jax.vmap(functools.partial(model.unembed, config, params))(x)  # [K, B, c, V] float32
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[None, ..., None], axis=-1)[..., 0]
    top1 = jnp.argmax(logits, axis=-1)
    correct = (top1 == targets[None]).astype(jnp.float32)
    kl = agree = jnp.zeros_like(nll)
    if beta or agreement:
        teacher = lax.stop_gradient(jax.nn.log_softmax(model.unembed(config, params, teacher_x), axis=-1))
        if beta:
            kl = jnp.sum(jnp.exp(teacher)[None] * (teacher[None] - log_probs), axis=-1)
        if agreement:
            agree = (top1 == jnp.argmax(teacher, axis=-1)[None]).astype(jnp.float32)
    return jnp.stack([jnp.sum(v * mask, axis=(-2, -1)) for v in (nll, correct, kl, agree)])


def early_exit_loss(config: LlamaConfig, params, layer_outputs, targets, selection: Selection, *, loss_mask=None,
                    beta: float = 0.0, chunk_size: int = 1024, measure_agreement: bool = False) -> ExitLoss:
    """The weighted early-exit loss over the selected layers.

    layer_outputs: [L, B, T, D], the residual stream after each layer (`run_layers(collect_hidden=True)`).
    targets, loss_mask: [B, T] next-token ids and 1/0 weights. chunk_size: tokens per cross-entropy chunk,
    taken as chunk_size // B consecutive positions of every row, so that rows stay on the devices that hold
    them; each chunk's logits are recomputed in the backward pass instead of stored.
    beta: weight of the self-distillation term KL(stop_gradient(p_last) || p_exit)
        (docs/algorithms.md, self-distillation); 0 = the paper.
    measure_agreement: also report top-1 agreement with the last layer (the self-speculative acceptance rate).
    """
    num_layers, b, t, _ = layer_outputs.shape
    mask = jnp.ones((b, t), jnp.float32) if loss_mask is None else loss_mask.astype(jnp.float32)
    chunk = max(1, min(t, chunk_size // b))
    num_chunks = -(-t // chunk)

    def chunked(a, seq_axis):  # [..., T, ...] -> [num_chunks, ..., chunk, ...], zero-padded along the sequence
        widths = [(0, 0)] * a.ndim
        widths[seq_axis] = (0, num_chunks * chunk - t)
        a = jnp.pad(a, widths)
        a = a.reshape(a.shape[:seq_axis] + (num_chunks, chunk) + a.shape[seq_axis + 1:])
        return jnp.moveaxis(a, seq_axis, 0)

    xs = (chunked(layer_outputs[selection.layers], 2), chunked(layer_outputs[num_layers - 1], 1),
          chunked(targets, 1), chunked(mask, 1))
    body = jax.checkpoint(functools.partial(_chunk_stats, config, params, beta, measure_agreement))
    sums = jnp.sum(lax.map(lambda args: body(*args), xs), axis=0)  # [4, K]
    layer_loss, layer_accuracy, layer_kl, layer_agreement = sums / jnp.maximum(jnp.sum(mask), 1.0)
    loss = jnp.sum(selection.weights * (layer_loss + beta * layer_kl))
    return ExitLoss(loss, layer_loss, layer_accuracy, layer_kl, layer_agreement)
