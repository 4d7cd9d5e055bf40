"""LayerSkip layer dropout: per-sample Bernoulli skips with rates rising over depth (and over time).

p_{l,t} = S(t) * D(l) * p_max (docs/algorithms.md, layer dropout). The masks are derived from (seed, step,
global sample index) alone, so every device, every data layout and every resumed run draws the same skips
for the same sample.
They are applied by `model.run_layers(residual_mask=...)` as a select, never a branch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# D(l) for layer l of n (n > 1): 0 at the first layer and 1 at the last, except uniform (1 everywhere) and
# sigmoid (close to 0 and 1 at the ends). "exp" is the paper's; the others are torchtune's layer scales.
LAYER_SCALES = {
    "exp": lambda l, n: np.exp(l * math.log(2.0) / (n - 1)) - 1.0,
    "linear": lambda l, n: l / (n - 1),
    "uniform": lambda l, n: np.ones_like(l),
    "log": lambda l, n: np.log(l + 1.0) / math.log(n),
    "sine": lambda l, n: np.sin(0.5 * math.pi * l / (n - 1)),
    "sigmoid": lambda l, n: 1.0 / (1.0 + np.exp(-10.0 * (l / (n - 1) - 0.5))),
}
TIME_SCALES = ("constant", "exp")


def layer_scale(kind: str, num_layers: int) -> np.ndarray:
    """D(l) for every layer, float32 [L]. With a single layer every shape is 1."""
    if kind not in LAYER_SCALES:
        raise ValueError(f"layer dropout scale {kind!r}: expected one of {sorted(LAYER_SCALES)}")
    if num_layers == 1:
        return np.ones((1,), np.float32)
    return LAYER_SCALES[kind](np.arange(num_layers, dtype=np.float64), num_layers).astype(np.float32)


def time_scale(kind: str, step, total_steps: int):
    """S(t): 1 for continual pretraining and fine-tuning; exp(t ln2 / (T-1)) - 1 from scratch. Traceable in t."""
    if kind not in TIME_SCALES:
        raise ValueError(f"layer dropout time scale {kind!r}: expected one of {list(TIME_SCALES)}")
    if kind == "constant" or total_steps <= 1:
        return jnp.float32(1.0)
    t = jnp.clip(jnp.asarray(step, jnp.float32), 0, total_steps - 1)
    return jnp.exp(t * math.log(2.0) / (total_steps - 1)) - 1.0


def drop_rates(p_max: float, num_layers: int, step, total_steps: int, layer_kind: str = "exp",
               time_kind: str = "constant") -> jax.Array:
    """p_{l,t} for every layer at step t, float32 [L]."""
    return time_scale(time_kind, step, total_steps) * jnp.asarray(layer_scale(layer_kind, num_layers)) * p_max


def keep_mask(seed: int, step, sample_index, rates) -> jax.Array:
    """bool [B, L]: True where sample b runs layer l (drawn with probability 1 - rates[l]).

    sample_index [B] are global sample indices (position in the global batch or dataset), so the draw for a
    sample does not depend on which device or micro-batch holds it.
    """
    step_key = jax.random.fold_in(jax.random.key(seed), step)

    def one(index):
        return jax.random.uniform(jax.random.fold_in(step_key, index), rates.shape) >= rates

    return jax.vmap(one)(jnp.asarray(sample_index, jnp.uint32))
