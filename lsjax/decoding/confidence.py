"""How sure an exit is of its token (docs/algorithms.md, CALM confidence exits): the measures CALM and FREE compare
with a threshold."""

from __future__ import annotations

import jax
import jax.numpy as jnp

MEASURES = ("softmax", "top2", "state")


def measure(kind: str, logits, x=None, previous=None) -> jax.Array:
    """[B] confidence of logits [B, V]: softmax = top probability; top2 = top-1 minus top-2 probability;
    state = cosine of the hidden states x and previous [B, D] after and before a layer (saturation)."""
    if kind == "state":
        x, previous = x.astype(jnp.float32), previous.astype(jnp.float32)
        norms = jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(previous, axis=-1)
        return jnp.sum(x * previous, axis=-1) / jnp.maximum(norms, 1e-12)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    if kind == "softmax":
        return jnp.max(probs, axis=-1)
    # two maxima rather than lax.top_k, which sorts on CPU (a third of a CALM step at 2048 tokens)
    first = jnp.argmax(probs, axis=-1)
    top = jnp.take_along_axis(probs, first[..., None], axis=-1)[..., 0]
    runner_up = jnp.max(jnp.where(jnp.arange(probs.shape[-1]) == first[..., None], -1.0, probs), axis=-1)
    return top - runner_up
