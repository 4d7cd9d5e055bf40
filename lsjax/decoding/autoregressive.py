"""Autoregressive decoding: one token per row per round through every layer, the reference every faster
strategy must equal. `one_token` is that round through any prefix of the layers (early exit runs [0, E))."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lsjax import kvcache
from lsjax.config import LlamaConfig
from lsjax.decoding import sampling
from lsjax.decoding.loop import FROM_MODEL, DecodeState, Settings, append


def one_token(config: LlamaConfig, params, settings: Settings, knobs: sampling.Knobs, state: DecodeState, *,
              depth: int) -> DecodeState:
    """Feeds each row's newest token through layers [0, depth) and appends the next one."""
    key, draw = jax.random.split(state.key)
    logits, cache = kvcache.extend(config, params, state.cache, state.last[:, None], depth=depth)
    token = sampling.pick(settings.sampling, draw, sampling.distribution(settings.sampling, knobs, logits[:, 0]))
    active = ~state.done
    # finished rows keep their cache length, so they never run past the buffer
    cache = cache.replace(length=jnp.where(active, cache.length, state.cache.length))
    state = state.replace(cache=cache, key=key, last=jnp.where(active, token, state.last),
                          rounds=state.rounds + active)
    batch = token.shape[0]
    return append(settings, state, token[:, None], jnp.ones((batch,), jnp.int32),
                  jnp.full((batch, 1), FROM_MODEL, jnp.int8))


def run_round(config: LlamaConfig, params, settings: Settings, knobs: sampling.Knobs,
              state: DecodeState) -> DecodeState:
    """One token per row through the whole model."""
    return one_token(config, params, settings, knobs, state, depth=config.num_layers)
