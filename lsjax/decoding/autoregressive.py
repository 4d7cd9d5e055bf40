"""Greedy autoregressive decoding with the full model: the reference every faster strategy must equal.

Prefill of a right-padded prompt batch, then one `lax.while_loop` on the device that appends one token per
row per iteration to a static-shape cache; rows stop independently at an end-of-sequence token and the loop
ends when all rows are done or the token budget is spent. The budget is a traced value under the static
output size, so a different `max_new_tokens` does not recompile.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from lsjax import kvcache
from lsjax.config import LlamaConfig


class Generation(NamedTuple):
    tokens: jax.Array  # [B, max_new_tokens] int32; entries past num_tokens[b] are the pad id
    num_tokens: jax.Array  # [B] tokens generated per row, the end-of-sequence token included


def _is_eos(tokens, eos_ids: Sequence[int]):
    return jnp.isin(tokens, jnp.asarray(eos_ids, jnp.int32)) if eos_ids else jnp.zeros(tokens.shape, bool)


@functools.partial(jax.jit, static_argnames=("config", "max_length", "output_size", "eos_ids", "pad_id"))
def greedy(config: LlamaConfig, params, prompt_tokens, prompt_lengths, max_new_tokens, *, max_length: int,
           output_size: int, eos_ids: Sequence[int] = (), pad_id: int = 0) -> Generation:
    """Greedy decoding of right-padded prompts [B, T] with lengths [B].

    max_length: cache slots per row (prompt + generated must fit; checked by the caller at the edge).
    output_size: static size of the output buffer; max_new_tokens (traced) <= output_size.
    """
    batch = prompt_tokens.shape[0]
    cache = kvcache.init_cache(config, batch, max_length)
    logits, cache = kvcache.prefill(config, params, cache, prompt_tokens, prompt_lengths)
    first = jnp.argmax(kvcache.last_token_logits(logits, prompt_lengths), axis=-1).astype(jnp.int32)
    out = jnp.full((batch, output_size), pad_id, jnp.int32).at[:, 0].set(first)
    budget = jnp.minimum(max_new_tokens, output_size)
    state = (cache, out, first, _is_eos(first, eos_ids) | (budget <= 1), jnp.ones((batch,), jnp.int32))

    def cond(state):
        _, _, _, done, _ = state
        return ~jnp.all(done)

    def body(state):
        cache, out, last, done, count = state
        step_logits, new_cache = kvcache.extend(config, params, cache, last[:, None])
        token = jnp.where(done, pad_id, jnp.argmax(step_logits[:, 0], axis=-1).astype(jnp.int32))
        # finished rows keep their cache length so they never run past the buffer
        cache = new_cache.replace(length=jnp.where(done, cache.length, new_cache.length))
        out = jax.vmap(lambda row, i, t, d: jnp.where(d, row, row.at[i].set(t)))(out, count, token, done)
        count = count + (~done).astype(jnp.int32)
        done = done | _is_eos(token, eos_ids) | (count >= budget)
        return cache, out, token, done, count

    _, out, _, _, count = lax.while_loop(cond, body, state)
    return Generation(out, count)
