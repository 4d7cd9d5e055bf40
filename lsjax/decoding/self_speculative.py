"""Self-speculative decoding (docs/algorithms.md, self-speculative decoding): draft with layers [0, E), verify with
layers [E, L) in one pass.

One round, for every row at once:
  draft   up to d steps through layers [0, E) and the shared head, each writing the shallow layers' K/V for
          its input token into the one shared cache and keeping its exit state x_E;
  verify  one more shallow pass for the last draft, then layers [E, L) over the d + 1 kept exit states (the
          newest accepted token and the drafts) in one causal pass that writes the deep layers' K/V;
  accept  the longest agreeing prefix (greedy) or the exact rejection rule (sampling), plus one token from
          the full model: the correction at the first rejection or the bonus after the last draft;
  roll back  by setting each row's cache length past its accepted tokens; nothing is copied.
No layer runs twice for a token: the drafts' shallow K/V and exit states are exactly what the full model
computes for the accepted tokens, so they are reused as they are. Rows accept different numbers of tokens;
a row that stops drafting early (confidence threshold, heuristic schedule) keeps computing with the others
but only its own drafts count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lsjax import kvcache, model
from lsjax.config import LlamaConfig
from lsjax.decoding import sampling
from lsjax.decoding.loop import ACCEPTED_DRAFT, FROM_MODEL, DecodeState, Settings, append


def _shallow(config, params, settings, cache, tokens, at):
    """Layers [0, E) for one token per row, tokens [B] at slots at [B]: (x_E [B, D], cache)."""
    out, cache = kvcache.run_cached_layers(config, params, cache, model.embed(config, params, tokens[:, None]),
                                           0, settings.exit_layer, write_index=at)
    return out.x[:, 0], cache


def draft_rows(config, params, settings: Settings, knobs):
    """The head rows [K, D] of a reduced draft vocabulary (settings.draft_vocab = K, ids knobs.draft_ids),
    gathered once per decode; None for the whole head."""
    return model.head_rows(config, params, knobs.draft_ids) if settings.draft_vocab else None


def _draft_logits(config, params, knobs, rows, x):
    """Exit states [B, D] -> draft logits [B, V]. With draft rows only those K tokens are scored; every
    other token gets -inf, so q is 0 outside the subset: greedy drafts come from the subset and the sampling
    rule stays exact (the verification is over the whole vocabulary)."""
    if rows is None:
        return model.unembed(config, params, x)
    subset = model.unembed_rows(config, params, x, rows)
    return jnp.full((x.shape[0], config.vocab_size), -jnp.inf, jnp.float32).at[:, knobs.draft_ids].set(subset)


def _draft(config, params, settings: Settings, knobs, rows, state: DecodeState, key):
    """Up to d draft steps: (cache, exit states [B, d + 1, D], drafts [B, d], draft probs [B, d, V] or None,
    drafts per row n [B])."""
    d, batch = settings.num_speculations, state.last.shape[0]
    base = state.cache.length
    want = state.draft_length if settings.schedule == "heuristic" else jnp.full((batch,), d, jnp.int32)
    keep_probs = not settings.sampling.greedy

    def cond(carry):
        i, *_, drafting = carry
        return (i < d) & jnp.any(drafting)

    def body(carry):
        i, cache, token, exits, drafts, probs, n, drafting = carry
        x, cache = _shallow(config, params, settings, cache, token, base + i)
        exits = lax.dynamic_update_slice_in_dim(exits, x[:, None], i, axis=1)
        logits = _draft_logits(config, params, knobs, rows, x)
        q = sampling.distribution(settings.sampling, knobs, logits)
        token = sampling.pick(settings.sampling, jax.random.fold_in(key, i), q)
        drafts = lax.dynamic_update_slice_in_dim(drafts, token[:, None], i, axis=1)
        if keep_probs:
            probs = lax.dynamic_update_slice_in_dim(probs, q[:, None], i, axis=1)
        n = n + drafting
        confident = jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1) >= knobs.confidence
        return i + 1, cache, token, exits, drafts, probs, n, drafting & (n < want) & confident

    exits = jnp.zeros((batch, d + 1, config.hidden_size), config.jnp_dtype)
    drafts = jnp.zeros((batch, d), jnp.int32)
    probs = jnp.zeros((batch, d, config.vocab_size), jnp.float32) if keep_probs else jnp.zeros((batch, 0, 0))
    zeros = jnp.zeros((batch,), jnp.int32)
    carry = (jnp.int32(0), state.cache, state.last, exits, drafts, probs, zeros, ~state.done)
    _, cache, _, exits, drafts, probs, n, _ = lax.while_loop(cond, body, carry)
    # The last draft has not been through the shallow layers yet; the verification needs its exit state.
    last_draft = jnp.take_along_axis(drafts, jnp.maximum(n - 1, 0)[:, None], axis=1)[:, 0]
    x, cache = _shallow(config, params, settings, cache, last_draft, base + n)
    exits = exits.at[jnp.arange(batch), n].set(x)
    return cache, exits, drafts, (probs if keep_probs else None), n


def _accept_greedy(logits, drafts, n):
    """(accepted count a [B], the full model's token after them [B]) by exact match with its argmax."""
    target = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [B, d + 1]
    d = drafts.shape[1]
    match = (drafts == target[:, :d]) & (jnp.arange(d)[None, :] < n[:, None])
    accepted = jnp.sum(jnp.cumprod(match, axis=1), axis=1).astype(jnp.int32)
    return accepted, jnp.take_along_axis(target, accepted[:, None], axis=1)[:, 0]


def _accept_sampled(p, q, drafts, n, key):
    """The speculative sampling rule: draft i survives with probability min(1, p_i(x_i) / q_i(x_i)); at the
    first rejection draw from normalise(max(0, p - q)), after n accepted drafts draw the bonus from p_n.
    The emitted tokens are then distributed exactly as the full model's samples."""
    batch, d = drafts.shape
    rows = jnp.arange(batch)
    uniform_key, residual_key = jax.random.split(key)
    p_draft = jnp.take_along_axis(p[:, :d], drafts[..., None], axis=-1)[..., 0]
    q_draft = jnp.take_along_axis(q, drafts[..., None], axis=-1)[..., 0]
    keep = (jax.random.uniform(uniform_key, (batch, d)) * q_draft < p_draft) & (jnp.arange(d)[None, :] < n[:, None])
    accepted = jnp.sum(jnp.cumprod(keep, axis=1), axis=1).astype(jnp.int32)
    p_next = p[rows, accepted]
    residual = jnp.maximum(p_next - q[rows, jnp.minimum(accepted, d - 1)], 0.0)
    residual_mass = jnp.sum(residual, axis=-1, keepdims=True)
    rejected = (accepted < n)[:, None] & (residual_mass > 0)
    final = jnp.where(rejected, residual / jnp.where(residual_mass > 0, residual_mass, 1.0), p_next)
    return accepted, jax.random.categorical(residual_key, jnp.log(final), axis=-1).astype(jnp.int32)


def run_round(config: LlamaConfig, params, settings: Settings, knobs: sampling.Knobs, state: DecodeState,
              rows=None) -> DecodeState:
    """Draft, verify, accept and roll back once for every row (module docstring); rows: `draft_rows`."""
    key, draft_key, accept_key = jax.random.split(state.key, 3)
    base = state.cache.length
    cache, exits, drafts, q, n = _draft(config, params, settings, knobs, rows, state, draft_key)
    deep, cache = kvcache.run_cached_layers(config, params, cache, exits, settings.exit_layer, config.num_layers,
                                            write_index=base)
    logits = model.unembed(config, params, deep.x)  # [B, d + 1, V]
    return settle(settings, knobs, state.replace(key=key), cache, base, logits, drafts, q, n, accept_key)


def settle(settings: Settings, knobs: sampling.Knobs, state: DecodeState, cache, base, logits, drafts, q, n,
           accept_key) -> DecodeState:
    """The end of a speculative round, whoever drafted: accept against the verifier's logits [B, d + 1, V]
    (q: the draft probabilities [B, d, V] when sampling), roll the cache back to base + accepted + 1,
    append the tokens and count the statistics."""
    d = settings.num_speculations
    if settings.sampling.greedy:
        accepted, token = _accept_greedy(logits, drafts, n)
    else:
        p = sampling.distribution(settings.sampling, knobs, logits)
        accepted, token = _accept_sampled(p, q, drafts, n, accept_key)

    column = jnp.arange(d + 1)[None, :]
    padded = jnp.concatenate([drafts, jnp.zeros_like(drafts[:, :1])], axis=1)
    emitted = jnp.where(column < accepted[:, None], padded, token[:, None])
    kinds = jnp.where(column < accepted[:, None], ACCEPTED_DRAFT, FROM_MODEL).astype(jnp.int8)
    active = ~state.done
    want = state.draft_length
    schedule = jnp.clip(jnp.where(accepted >= n, want + 2, want - 1), 1, d)
    state = state.replace(cache=cache.replace(length=jnp.where(active, base + accepted + 1, base)),
                          last=jnp.where(active, token, state.last),
                          draft_length=jnp.where(active, schedule, want))
    appended = append(settings, state, emitted, accepted + 1, kinds)
    # statistics of this round's drafts, not counting accepted drafts cut off by an end of sequence or the budget
    used = jnp.minimum(accepted, appended.count - state.count)
    return appended.replace(rounds=state.rounds + active, drafted=state.drafted + jnp.where(active, n, 0),
                            accepted=state.accepted + jnp.where(active, used, 0))
