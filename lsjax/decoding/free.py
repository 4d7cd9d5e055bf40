"""FREE's synchronized parallel decoding (docs/algorithms.md, FREE: synchronized parallel decoding; Bae et al. 2023):
a shallow model (layers [0, S)) decides each token when it is confident; the deep layers [S, L) catch up over the
skipped tokens in one pass.

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

Rollback (`Knobs.rollback`, off at +inf): a deep pass also scores each token the row emitted from the
shallow exit since its last pass, by the deep model's loss -log p_deep(token). From the first whose loss
reaches the rollback threshold, the output is rewritten: that position gets the deep model's token, the
tokens after it are dropped and both the output and the cache rewind to it (a change of `count` and
`length`). A row never ends on a token no deep pass judged: with rollback on, a shallow token that would end
the row (end of sequence, or the budget) forces the pass. So rollback 0 is autoregressive decoding.

Every parallel pass, a deep pass over skipped tokens, yields per stacked token and for the current one the
pair (shallow confidence, whether the shallow argmax equals the deep argmax): the data of the adaptive
threshold (`lsjax.decoding.threshold`). A deep step with no skipped token adds no pair, as in the reference
code: its one pair would be a token the shallow exit was unsure of, and at the initial 0.9 those are most
tokens, so the fit would describe them rather than the tokens the threshold lets skip.
Lossy by design; `benchmarks/methods.py` measures how far from the full model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from lsjax import kvcache, model
from lsjax.config import LlamaConfig
from lsjax.decoding import confidence, sampling
from lsjax.decoding.loop import ACCEPTED_DRAFT, FROM_MODEL, DecodeState, Settings, append, is_eos

NO_PAIR = -1  # agreement of an output position no deep pass has judged


def prepare(config: LlamaConfig, params, settings: Settings, knobs: sampling.Knobs, state: DecodeState,
            prompt_tokens, prompt_lengths) -> DecodeState:
    """After the full prefill: an empty stack, and the first token decided like every later one (the shallow
    exit's when it is confident, else the full model's, which the prefill picked); its pair is recorded when
    it skipped the deep layers (the prefill's deep logits judge it)."""
    batch, width = state.tokens.shape
    room = settings.stack + 1
    last_slot = state.cache.length - 1
    last_prompt = jnp.take_along_axis(prompt_tokens, last_slot[:, None], axis=1)
    # the last prompt token through layers [0, S) once more: it rewrites the same shallow K/V
    out, _ = kvcache.run_cached_layers(config, params, state.cache, model.embed(config, params, last_prompt), 0,
                                       settings.exit_layer, write_index=last_slot)
    logits = model.unembed(config, params, out.x[:, 0])
    # and through [S, L) (the same deep K/V again): the prefill's full logits, which the rollback rule scores
    deep, _ = kvcache.run_cached_layers(config, params, state.cache, out.x, settings.exit_layer, config.num_layers,
                                        write_index=last_slot)
    deep_logits = model.unembed(config, params, deep.x[:, 0])
    key, draw = jax.random.split(state.key)
    shallow = sampling.pick(settings.sampling, draw, sampling.distribution(settings.sampling, knobs, logits))
    score = confidence.measure(settings.confidence, logits)
    sure = (score > knobs.threshold) & (_loss(deep_logits, shallow) < knobs.rollback)
    first = jnp.where(sure, shallow, state.last)
    agreed = (jnp.argmax(logits, axis=-1) == jnp.argmax(deep_logits, axis=-1)).astype(jnp.int8)
    state = state.replace(
        key=key, last=first, tokens=state.tokens.at[:, 0].set(first),
        kinds=state.kinds.at[:, 0].set(jnp.where(sure, ACCEPTED_DRAFT, FROM_MODEL).astype(jnp.int8)),
        done=is_eos(settings, first) | (state.count >= state.budget),
        drafted=state.drafted + 1, accepted=state.accepted + sure,
        extra=dict(stack=jnp.zeros((batch, room, config.hidden_size), config.jnp_dtype),
                   stack_confidence=jnp.zeros((batch, room), jnp.float32), kept=jnp.zeros((batch,), jnp.int32),
                   pair_confidence=jnp.zeros((batch, width), jnp.float32).at[:, 0].set(score),
                   pair_agreed=jnp.full((batch, width), NO_PAIR, jnp.int8).at[:, 0].set(
                       jnp.where(sure, agreed, NO_PAIR))))
    return state


def pass_widths(room: int):
    """Static widths of the deep pass: powers of two below `room`, then room itself."""
    return [w for w in (1, 2, 4, 8, 16, 32, 64) if w < room] + [room]


def _loss(logits, tokens):
    """-log softmax(logits)[..., token]: the deep model's loss on tokens [...] under logits [..., V]."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]


def pairs(state: DecodeState):
    """(confidence [B, W], agreed [B, W] in {NO_PAIR, 0, 1}): position i's shallow confidence and whether its
    shallow prediction matched the deep one, where a parallel pass judged it."""
    return state.extra["pair_confidence"], state.extra["pair_agreed"]


def run_round(config: LlamaConfig, params, settings: Settings, knobs: sampling.Knobs,
              state: DecodeState) -> DecodeState:
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
    score = confidence.measure(settings.confidence, shallow_logits)
    sure = score > knobs.threshold
    shallow_token = sampling.pick(settings.sampling, shallow_key,
                                  sampling.distribution(settings.sampling, knobs, shallow_logits))
    stack = extra["stack"].at[rows, kept].set(x_s)
    stack_confidence = extra["stack_confidence"].at[rows, kept].set(score)
    ending = is_eos(settings, shallow_token) | (state.count + 1 >= state.budget)
    deep = active & (~sure | (kept >= settings.stack) | (ending & (knobs.rollback < jnp.inf)))

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

    # stacked position j < kept predicted the token emitted at output index count - kept + j; j = kept predicts
    # this step's token
    column = jnp.arange(room)[None, :]
    index = state.count[:, None] - kept[:, None] + column
    emitted = jnp.take_along_axis(state.tokens, jnp.clip(index, 0, width - 1), axis=1)
    current = column == kept[:, None]
    # the first position the deep model rewrites: a skipped token at or past the rollback loss, or this step's
    # token when it is not sure; kept (this step's token) when the pass leaves everything as it is
    loss = _loss(deep_logits, jnp.where(current, shallow_token[:, None], emitted))
    bad = (loss >= knobs.rollback) | (current & ~sure[:, None])
    bad = deep[:, None] & bad & (column <= kept[:, None])
    rewrite = jnp.any(bad, axis=1)
    at = jnp.where(rewrite, jnp.argmax(bad, axis=1), kept)
    deep_token = sampling.pick(settings.sampling, deep_key,
                               sampling.distribution(settings.sampling, knobs, deep_logits[rows, at]))
    token = jnp.where(rewrite, deep_token, shallow_token)
    rewind = kept - at  # emitted shallow tokens the rewrite drops (0 without a rewrite)

    # (confidence, agreed) for the stacked positions and the current one (its shallow argmax), in parallel passes
    emitted = jnp.where(current, jnp.argmax(shallow_logits, axis=-1)[:, None], emitted)
    agreed = (jnp.argmax(deep_logits, axis=-1) == emitted).astype(jnp.int8)
    judged = (deep & ((kept > 0) | sure))[:, None] & (column <= kept[:, None])
    slot = jnp.where(judged, index, width)  # out of range: dropped
    pair_confidence = extra["pair_confidence"].at[rows[:, None], slot].set(stack_confidence, mode="drop")
    pair_agreed = extra["pair_agreed"].at[rows[:, None], slot].set(agreed, mode="drop")

    kept = jnp.where(active, jnp.where(deep, 0, kept + 1), kept)
    layers = s + jnp.where(deep, config.num_layers - s, 0)  # layer passes in sequence for this token
    state = state.replace(
        cache=cache.replace(length=jnp.where(active, base + 1 - rewind, base)), key=key, count=state.count - rewind,
        last=jnp.where(active, token, state.last), rounds=state.rounds + active,
        layers=state.layers + jnp.where(active, layers, 0), drafted=state.drafted + active,
        accepted=state.accepted + (active & ~rewrite) - rewind,
        extra=dict(stack=stack, stack_confidence=stack_confidence, kept=kept, pair_confidence=pair_confidence,
                   pair_agreed=pair_agreed))
    kinds = jnp.where(rewrite, FROM_MODEL, ACCEPTED_DRAFT).astype(jnp.int8)[:, None]
    return append(settings, state, token[:, None], jnp.ones((batch,), jnp.int32), kinds)
