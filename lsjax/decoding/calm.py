"""CALM-style confidence exits (docs/algorithms.md, CALM confidence exits; after Schuster et al. 2022): each token
leaves the stack after the first layer whose exit is confident enough, and the layers it skips get K/V by state
copying.

A round feeds every row's newest token through the layers one at a time. After layer l a row that has not
exited yet scores g(x_{l+1}) with the chosen measure; past the threshold it exits with that prediction, and
its hidden state stays frozen. A frozen row still gets K/V in each later layer: that layer's own key and value
projections of the exited state (its attention and MLP results are dropped), so later tokens attend to
something at every layer, which is what state copying means. Rows exit independently; once every row has
exited, the remaining layers compute only those projections. Lossy: the output drifts from the full model's.
No row exits before layer E (`Settings.exit_layer`, default 1): with tied embeddings the first layers' states
are still close to the input token's embedding, which the shared head predicts back with a wide margin, so
an untrained model's shallowest exits look confident and repeat their input. Layers below E skip the head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lsjax import kvcache, model
from lsjax.config import LlamaConfig
from lsjax.decoding import confidence, sampling
from lsjax.decoding.loop import FROM_MODEL, DecodeState, Settings, append

DECAY_TAU = 4.0


def threshold(settings: Settings, knobs: sampling.Knobs, state: DecodeState) -> jax.Array:
    """[B]: the threshold, or with decay lambda e^(-tau t / N) / 10 + 9 lambda / 10 at generated position t
    of a budget N (CALM's schedule: stricter early in the output)."""
    base = jnp.broadcast_to(knobs.threshold, state.count.shape)
    if not settings.decay:
        return base
    fraction = state.count.astype(jnp.float32) / jnp.maximum(state.budget, 1).astype(jnp.float32)
    return base * jnp.exp(-DECAY_TAU * fraction) / 10 + 9 * base / 10


def _layer_params(params, index: int):
    layers = params["layers"]
    return layers[index] if model.is_per_layer(params) else jax.tree.map(lambda a: a[index], layers)


def copy_state(config: LlamaConfig, params, cache: kvcache.KVCache, x, index: int, at) -> kvcache.KVCache:
    """Layer `index`'s K/V for hidden states x [B, 1, D] written at slots `at` [B]: its attention norm, key
    and value projections and rotary embedding only."""
    p = _layer_params(params, index)
    dtype = config.jnp_dtype
    normed = model.RMSNorm(config).apply({"params": p["attn_norm"]}, x)
    positions = cache.positions(1, at)
    k = model.apply_rope(jnp.einsum("btd,dhk->bthk", normed, p["attn"]["k"].astype(dtype)), positions,
                         model.rope_frequencies(config))
    v = jnp.einsum("btd,dhk->bthk", normed, p["attn"]["v"].astype(dtype))

    def write(buffers, new):  # per-layer tuple: that layer's buffer; stacked: in place at (index, row, slot)
        if isinstance(buffers, tuple):
            return buffers[:index] + (model._write_rows(buffers[index], new, at),) + buffers[index + 1:]
        return model._write_rows(buffers, new, at, layer=index)

    return cache.replace(k=write(cache.k, k), v=write(cache.v, v))


def run_round(config: LlamaConfig, params, settings: Settings, knobs: sampling.Knobs,
              state: DecodeState) -> DecodeState:
    """Feeds each row's newest token through the layers until it exits, then appends the exit's token."""
    key, draw = jax.random.split(state.key)
    at, last_layer = state.cache.length, config.num_layers - 1
    limit = threshold(settings, knobs, state)
    batch = state.last.shape[0]

    def run(index, carry):
        x, cache, exited, logits, layers = carry
        out, cache = kvcache.run_cached_layers(config, params, cache, x, index, index + 1, write_index=at)
        y = jnp.where(exited[:, None, None], x, out.x)
        layers = layers + ~exited
        if index + 1 < settings.exit_layer:  # too shallow to exit: no head, no confidence
            return y, cache, exited, logits, layers
        exit_logits = model.unembed(config, params, y[:, 0])
        if index == last_layer:
            return y, cache, jnp.ones_like(exited), jnp.where(exited[:, None], logits, exit_logits), layers
        sure = confidence.measure(settings.confidence, exit_logits, y[:, 0], x[:, 0]) > limit
        newly = ~exited & sure
        return y, cache, exited | newly, jnp.where(newly[:, None], exit_logits, logits), layers

    def copy(index, carry):
        x, cache, *rest = carry
        return (x, copy_state(config, params, cache, x, index, at), *rest)

    carry = (model.embed(config, params, state.last[:, None]), state.cache, state.done,
             jnp.zeros((batch, config.vocab_size), jnp.float32), jnp.zeros((batch,), jnp.int32))
    for index in range(config.num_layers):
        carry = lax.cond(jnp.all(carry[2]), lambda c, i=index: copy(i, c), lambda c, i=index: run(i, c), carry)
    _, cache, _, logits, layers = carry
    token = sampling.pick(settings.sampling, draw, sampling.distribution(settings.sampling, knobs, logits))
    active = ~state.done
    state = state.replace(cache=cache.replace(length=jnp.where(active, at + 1, at)), key=key,
                          last=jnp.where(active, token, state.last), rounds=state.rounds + active,
                          layers=state.layers + jnp.where(active, layers, 0))
    return append(settings, state, token[:, None], jnp.ones((batch,), jnp.int32),
                  jnp.full((batch, 1), FROM_MODEL, jnp.int8))
