"""FREE's shallow-deep training objective (docs/algorithms.md, FREE: shallow-deep training): two exits, the
shallow model (layers [0, S)) and the deep model (all L layers), on the shared head, plus layer-wise
distillation of the shallow layers toward deep ones.

    loss = (S CE_shallow + L CE_deep) / (S + L) + alpha KD

KD is the mean squared error between the final-normed hidden states of shallow layers and their aligned deep
layers, the deep (teacher) states detached, as the reference code does. Alignments, as pairs (student layer
i < S, teacher layer j), layer i meaning its output x_{i+1}:
  uniform  i -> u(i) = ceil((i + 1) L / S) - 1, so the last shallow layer learns from the last layer;
  last     only S - 1 -> L - 1;
  dynamic  the teachers u(S-1), ..., u(0) from last to first, each taking the student layer of lowest MSE
           among those at or below the previous teacher's choice (a monotone min-MSE mapping, chosen per
           batch without gradient).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from lsjax import early_exit_loss, model
from lsjax.config import ConfigError, LlamaConfig

MAPPINGS = ("uniform", "last", "dynamic")
ALPHA = 0.5


def default_exit(num_layers: int) -> int:
    """S when the config leaves it 0: a quarter of the layers, at least 1."""
    return max(1, num_layers // 4)


def teachers(shallow: int, num_layers: int) -> list[int]:
    """u(i) for i < S: evenly spaced deep layers ending at the last one."""
    return [-(-(i + 1) * num_layers // shallow) - 1 for i in range(shallow)]


def _normed(config: LlamaConfig, params, x):
    return model.RMSNorm(config).apply({"params": params["final_norm"]}, x).astype(jnp.float32)


def distillation(config: LlamaConfig, params, hidden, shallow: int, mapping: str, mask) -> jax.Array:
    """KD: mean over aligned (student, teacher) pairs of the masked MSE of normed hidden states [L, B, T, D]."""
    weight = mask.astype(jnp.float32)[..., None]
    count = jnp.maximum(jnp.sum(mask), 1.0) * hidden.shape[-1]
    mse = lambda i, j: jnp.sum(weight * (_normed(config, params, hidden[i])
                                         - jax.lax.stop_gradient(_normed(config, params, hidden[j]))) ** 2) / count
    deep = teachers(shallow, config.num_layers)
    if mapping == "last":
        return mse(shallow - 1, config.num_layers - 1)
    if mapping == "uniform":
        return sum(mse(i, j) for i, j in enumerate(deep)) / shallow
    table = jnp.stack([jnp.stack([mse(i, j) for i in range(shallow)]) for j in deep])  # [teacher, student]
    choice, losses = jnp.int32(shallow - 1), []
    for row in reversed(range(shallow)):
        allowed = jnp.arange(shallow) <= choice
        choice = jnp.argmin(jnp.where(allowed, jax.lax.stop_gradient(table[row]), jnp.inf)).astype(jnp.int32)
        losses.append(table[row, choice])
    return sum(losses) / shallow


def loss(config: LlamaConfig, params, hidden, targets, loss_mask, shallow: int, alpha: float, mapping: str,
         chunk_size: int) -> tuple[jax.Array, early_exit_loss.ExitLoss, jax.Array]:
    """(loss, the two exits' ExitLoss, their layer indices [2]) from hidden states [L, B, T, D]."""
    num_layers = config.num_layers
    if not 1 <= shallow < num_layers:
        raise ConfigError(f"train.free_exit_layer={shallow}: expected 1 <= S < model.num_layers={num_layers}")
    layers = jnp.asarray([shallow - 1, num_layers - 1], jnp.int32)
    weights = jnp.asarray([shallow, num_layers], jnp.float32) / (shallow + num_layers)
    mask = jnp.ones(targets.shape, jnp.float32) if loss_mask is None else loss_mask
    out = early_exit_loss.early_exit_loss(config, params, hidden, targets,
                                          early_exit_loss.Selection(layers, weights), loss_mask=mask,
                                          chunk_size=chunk_size)
    kd = distillation(config, params, hidden, shallow, mapping, mask) if alpha else jnp.float32(0.0)
    return out.loss + alpha * kd, out, layers
