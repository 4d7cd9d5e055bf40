"""One token per row per round through layers [0, depth): the full model (the reference every faster strategy
must equal) when depth = L, early-exit inference (lossy, SPEC 2.1) when depth = E < L."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lsjax import kvcache
from lsjax.config import LlamaConfig
from lsjax.decoding import sampling
from lsjax.decoding.state import FROM_MODEL, DecodeState, Settings, append


def depth(config: LlamaConfig, settings: Settings) -> int:
    """Layers this strategy runs: E for early exit, else all of them."""
    return settings.exit_layer if settings.strategy == "early_exit" else config.num_layers


def advance(config: LlamaConfig, params, settings: Settings, knobs: sampling.Knobs, state: DecodeState) -> DecodeState:
    """Feeds each row's newest token through layers [0, depth) and appends the next one."""
    key, draw = jax.random.split(state.key)
    logits, cache = kvcache.extend(config, params, state.cache, state.last[:, None], depth=depth(config, settings))
    token = sampling.pick(settings.sampling, draw, sampling.distribution(settings.sampling, knobs, logits[:, 0]))
    active = ~state.done
    # finished rows keep their cache length, so they never run past the buffer
    cache = cache.replace(length=jnp.where(active, cache.length, state.cache.length))
    state = state.replace(cache=cache, key=key, last=jnp.where(active, token, state.last),
                          rounds=state.rounds + active)
    batch = token.shape[0]
    return append(settings, state, token[:, None], jnp.ones((batch,), jnp.int32),
                  jnp.full((batch, 1), FROM_MODEL, jnp.int8))
