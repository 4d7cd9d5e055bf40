"""FREE's synchronized parallel decoding (SPEC 3, Bae et al. 2023): a shallow model (layers [0, S)) decides
each token when it is confident; the deep layers [S, L) catch up over the skipped tokens in one pass.

A step, for every row at once: layers [0, S) over the newest token, confidence (default top-1 minus top-2)
of g(x_S). A confident row emits the shallow token and keeps x_S on its stack (its deep K/V are not computed
yet). A row that is not confident, or whose stack is full (`Settings.stack` states), runs layers [S, L) once
over its stacked states plus the current one, with a causal mask at their own slots: the deep K/V of the
skipped tokens come from real attention (no state copying), and the current token gets the deep model's
prediction (or, when only the full stack forced the pass, still the shallow one, so threshold 0 is early exit
at S exactly). The pass runs when any row needs it; rows that did not need it write correct deep K/V for
their stacked tokens and keep their stack, so a row decodes as it would alone.
The pass is only as wide as the longest stack that needs it (one of a few static widths), so a step
without skipped tokens costs about what an autoregressive step does.

Every deep pass also yields, per stacked token and for the current one, the pair (shallow confidence,
whether the shallow token equals the deep argmax): the data of the adaptive threshold
(`lsjax.decoding.threshold`). Lossy by design; `benchmarks/methods.py` measures how far from the full model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from lsjax import kvcache, model
from lsjax.config import LlamaConfig
from lsjax.decoding import confidence, sampling
from lsjax.decoding.state import ACCEPTED_DRAFT, FROM_MODEL, DecodeState, Settings, append, is_eos

NO_PAIR = -1  # agreement of an output position no deep pass has judged


def prepare(config: LlamaConfig, params, settings: Settings, knobs: sampling.Knobs, state: DecodeState,
            prompt_tokens, prompt_lengths) -> DecodeState:
    """After the full prefill: an empty stack, and the first token decided like every later one (the shallow
    exit's when it is confident, else the full model's, which the prefill picked), with its pair recorded."""
    batch, width = state.tokens.shape
    room = settings.stack + 1
    last_slot = state.cache.length - 1
    last_prompt = jnp.take_along_axis(prompt_tokens, last_slot[:, None], axis=1)
    # the last prompt token through layers [0, S) once more: it rewrites the same shallow K/V
    out, _ = kvcache.run_cached_layers(config, params, state.cache, model.embed(config, params, last_prompt), 0,
                                       settings.exit_layer, write_index=last_slot)
    logits = model.unembed(config, params, out.x[:, 0])
    key, draw = jax.random.split(state.key)
    shallow = sampling.pick(settings.sampling, draw, sampling.distribution(settings.sampling, knobs, logits))
    score = confidence.measure(settings.confidence, logits)
    sure = score > knobs.threshold
    first = jnp.where(sure, shallow, state.last)
    agreed = (jnp.argmax(logits, axis=-1) == state.last).astype(jnp.int8)
    state = state.replace(
        key=key, last=first, tokens=state.tokens.at[:, 0].set(first),
        kinds=state.kinds.at[:, 0].set(jnp.where(sure, ACCEPTED_DRAFT, FROM_MODEL).astype(jnp.int8)),
        done=is_eos(settings, first) | (state.count >= state.budget),
        drafted=state.drafted + 1, accepted=state.accepted + sure,
        extra=dict(stack=jnp.zeros((batch, room, config.hidden_size), config.jnp_dtype),
                   stack_confidence=jnp.zeros((batch, room), jnp.float32), kept=jnp.zeros((batch,), jnp.int32),
                   pair_confidence=jnp.zeros((batch, width), jnp.float32).at[:, 0].set(score),
                   pair_agreed=jnp.full((batch, width), NO_PAIR, jnp.int8).at[:, 0].set(agreed)))
    return state


def pass_widths(room: int):
    """Static widths of the deep pass: powers of two below `room`, then room itself."""
    return [w for w in (1, 2, 4, 8, 16, 32, 64) if w < room] + [room]


def pairs(state: DecodeState):
    """(confidence [B, W], agreed [B, W] in {NO_PAIR, 0, 1}): position i's shallow confidence and whether its
    shallow prediction matched the deep one, where a deep pass judged it."""
    return state.extra["pair_confidence"], state.extra["pair_agreed"]


def advance(config: LlamaConfig, params, settings: Settings, knobs: sampling.Knobs, state: DecodeState) -> DecodeState:
    """One synchronized parallel decoding step for every row (module docstring)."""
    s, room = settings.exit_layer, settings.stack + 1
    batch, width = state.tokens.shape
    rows = jnp.arange(batch)
    key, shallow_key, deep_key = jax.random.split(state.key, 3)
    extra, base, active = state.extra, state.cache.length, ~state.done
    kept = extra["kept"]

    x = model.embed(config, params, state.last[:, None])
    out, cache = kvcache.run_cached_layers(config, params, state.cache, x, 0, s, write_index=base)
    x_s = out.x[:, 0]
    shallow_logits = model.unembed(config, params, x_s)
    sure = confidence.measure(settings.confidence, shallow_logits) > knobs.threshold
    stack = extra["stack"].at[rows, kept].set(x_s)
    stack_confidence = extra["stack_confidence"].at[rows, kept].set(
        confidence.measure(settings.confidence, shallow_logits))
    deep = active & (~sure | (kept >= settings.stack))

    def deep_pass(width, cache):  # the first `width` stacked states (a prefix: its K/V are right as they are)
        out, cache = kvcache.run_cached_layers(config, params, cache, stack[:, :width], s, config.num_layers,
                                               write_index=base - kept)
        logits = model.unembed(config, params, out.x)
        return jnp.pad(logits, ((0, 0), (0, room - width), (0, 0))), cache

    def no_pass(cache):
        return jnp.zeros((batch, room, config.vocab_size), jnp.float32), cache

    # the narrowest width that covers every row that needs the pass (a short stack need not pay for a long one)
    widths = pass_widths(room)
    need = jnp.max(jnp.where(deep, kept + 1, 0))
    branch = jnp.where(need == 0, 0, 1 + jnp.searchsorted(jnp.asarray(widths), need))
    branches = [no_pass] + [functools.partial(deep_pass, w) for w in widths]
    deep_logits, cache = lax.switch(branch, branches, cache)
    shallow_token = sampling.pick(settings.sampling, shallow_key,
                                  sampling.distribution(settings.sampling, knobs, shallow_logits))
    deep_token = sampling.pick(settings.sampling, deep_key,
                               sampling.distribution(settings.sampling, knobs, deep_logits[rows, kept]))
    token = jnp.where(sure, shallow_token, deep_token)

    # (confidence, agreed) for stacked position j < kept (emitted at output index count - kept + j) and the
    # current one (j = kept, its shallow argmax)
    column = jnp.arange(room)[None, :]
    index = state.count[:, None] - kept[:, None] + column
    emitted = jnp.take_along_axis(state.tokens, jnp.clip(index, 0, width - 1), axis=1)
    emitted = jnp.where(column == kept[:, None], jnp.argmax(shallow_logits, axis=-1)[:, None], emitted)
    agreed = (jnp.argmax(deep_logits, axis=-1) == emitted).astype(jnp.int8)
    judged = deep[:, None] & (column <= kept[:, None])
    at = jnp.where(judged, index, width)  # out of range: dropped
    pair_confidence = extra["pair_confidence"].at[rows[:, None], at].set(stack_confidence, mode="drop")
    pair_agreed = extra["pair_agreed"].at[rows[:, None], at].set(agreed, mode="drop")

    kept = jnp.where(active, jnp.where(deep, 0, kept + 1), kept)
    layers = s + jnp.where(deep, config.num_layers - s, 0)  # layer passes in sequence for this token
    state = state.replace(
        cache=cache.replace(length=jnp.where(active, base + 1, base)), key=key,
        last=jnp.where(active, token, state.last), rounds=state.rounds + active,
        layers=state.layers + jnp.where(active, layers, 0), drafted=state.drafted + active,
        accepted=state.accepted + (active & sure),
        extra=dict(stack=stack, stack_confidence=stack_confidence, kept=kept, pair_confidence=pair_confidence,
                   pair_agreed=pair_agreed))
    kinds = jnp.where(sure, ACCEPTED_DRAFT, FROM_MODEL).astype(jnp.int8)[:, None]
    return append(settings, state, token[:, None], jnp.ones((batch,), jnp.int32), kinds)
