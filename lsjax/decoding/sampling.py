"""Turning logits into tokens: greedy argmax, or sampling after temperature, top-k and top-p.

Self-speculative sampling compares the draft's and the full model's distributions token by token, so both
must come from the same processing: `distribution` is that one function. Temperature and top-p are traced
values (changing them does not recompile); top-k is static (it sets a shape-free threshold, but k itself
indexes a sorted array).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Sampling(NamedTuple):
    """Static choice of how tokens are picked; hashable, so it is a static argument of the decode loops."""

    greedy: bool = True
    top_k: int = 0  # 0: no top-k filter


class Knobs(NamedTuple):
    """Traced decoding values: changing them does not recompile."""

    temperature: jax.Array  # float32 []: > 0 when sampling; unused when greedy
    top_p: jax.Array  # float32 []: in (0, 1]
    confidence: jax.Array  # float32 []: stop drafting a round when the draft's top probability falls below
    draft_ids: jax.Array  # int32 [K]: the token ids the draft head may propose (Settings.draft_vocab = K)
    threshold: jax.Array  # float32 []: calm and free exit a token when its confidence passes this
    rollback: jax.Array  # float32 []: free rewrites from a skipped token whose deep loss reaches this (inf: off)

    @classmethod
    def make(cls, temperature: float = 1.0, top_p: float = 1.0, confidence: float = 0.0, draft_ids=(),
             threshold: float = 1.0, rollback: float = float("inf")) -> Knobs:
        return cls(jnp.float32(temperature), jnp.float32(top_p), jnp.float32(confidence),
                   jnp.asarray(draft_ids, jnp.int32).reshape(-1), jnp.float32(threshold), jnp.float32(rollback))


def distribution(sampling: Sampling, knobs: Knobs, logits) -> jax.Array:
    """Float32 probabilities [..., V] after temperature, top-k and top-p (one-hot argmax when greedy).

    Top-p keeps the smallest set of most likely tokens whose mass reaches top_p (after top-k); tokens tied
    with the last kept one are kept too.
    """
    logits = logits.astype(jnp.float32)
    if sampling.greedy:
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.float32)
    logits = logits / knobs.temperature
    ranked = -jnp.sort(-logits, axis=-1)  # descending
    if sampling.top_k:
        k = min(sampling.top_k, logits.shape[-1])
        ranked = jnp.where(jnp.arange(logits.shape[-1]) < k, ranked, -jnp.inf)
    ranked_probs = jax.nn.softmax(ranked, axis=-1)
    mass_before = jnp.cumsum(ranked_probs, axis=-1) - ranked_probs
    kept = (mass_before < knobs.top_p) & (ranked > -jnp.inf)
    threshold = jnp.min(jnp.where(kept, ranked, jnp.inf), axis=-1, keepdims=True)
    return jax.nn.softmax(jnp.where(logits >= threshold, logits, -jnp.inf), axis=-1)


def pick(sampling: Sampling, key, probs) -> jax.Array:
    """One token id per row of probs [B, V]: the argmax when greedy, else a draw (int32 [B])."""
    if sampling.greedy:
        return jnp.argmax(probs, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, jnp.log(probs), axis=-1).astype(jnp.int32)
