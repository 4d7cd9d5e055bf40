"""Two-model speculative decoding (docs/algorithms.md, two-model speculative decoding): a separate small Llama with
the same tokenizer drafts d tokens with its own KV cache, the target verifies them in one pass, and self-speculative
decoding's accept rules decide (greedy: exactly the target's greedy output; sampling: exactly the target's
distribution).

The draft cache follows the target cache: at the start of a round both hold every accepted token but the
newest, `last`. The draft feeds `last` and its own d drafts (the last of them only to keep its cache
whole when all are accepted); both caches then roll back to the accepted length, which is only a change of
`length`. The cost the draft adds over self-speculation is its own weights and cache, not shared ones.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from lsjax import kvcache, model
from lsjax.config import LlamaConfig
from lsjax.decoding import sampling
from lsjax.decoding.self_speculative import settle
from lsjax.decoding.loop import DecodeState, Settings


def truncated(config: LlamaConfig, params, depth: int):
    """(config, params) of the model's first `depth` layers and its head, as a model of its own: a draft
    whose cost and proposals are exactly those of the exit at `depth`, with weights and cache of its own (the
    fair two-model counterpart of self-speculation at E = depth). Either params layout."""
    layers = params["layers"]
    layers = layers[:depth] if model.is_per_layer(params) else jax.tree.map(lambda a: a[:depth], layers)
    return dataclasses.replace(config, num_layers=depth), {**params, "layers": layers}


def prefill(draft_config: LlamaConfig, draft_params, prompt_tokens, prompt_lengths, max_length: int):
    """The draft model's cache after the right-padded prompts [B, T] (its own next-token logits are unused:
    the target picks the first token)."""
    cache = kvcache.init_cache(draft_config, prompt_tokens.shape[0], max_length,
                               per_layer=model.is_per_layer(draft_params))
    return kvcache.prefill(draft_config, draft_params, cache, prompt_tokens, prompt_lengths)[1]


def _draft(draft_config, draft_params, settings: Settings, knobs, cache, last, key):
    """d autoregressive draft steps from `last` [B]: (cache holding last and all d drafts, drafts [B, d],
    draft probabilities [B, d, V] when sampling, else None)."""
    keep_probs = not settings.sampling.greedy

    def step(carry, i):
        cache, token = carry
        logits, cache = kvcache.extend(draft_config, draft_params, cache, token[:, None])
        q = sampling.distribution(settings.sampling, knobs, logits[:, 0])
        token = sampling.pick(settings.sampling, jax.random.fold_in(key, i), q)
        return (cache, token), (token, q if keep_probs else None)

    (cache, newest), (drafts, probs) = lax.scan(step, (cache, last), jnp.arange(settings.num_speculations))
    # the newest draft has not been fed; when every draft is accepted the next round needs its K/V
    _, cache = kvcache.extend(draft_config, draft_params, cache, newest[:, None])
    return cache, drafts.T, (jnp.swapaxes(probs, 0, 1) if keep_probs else None)


def run_round(config: LlamaConfig, params, settings: Settings, knobs: sampling.Knobs, state: DecodeState,
              draft_config: LlamaConfig = None, draft_params=None) -> DecodeState:
    """Draft d tokens with the draft model, verify them with the target in one pass, accept and roll back
    both caches, for every row at once. `state.extra` is the draft model's cache."""
    batch, d = state.last.shape[0], settings.num_speculations
    key, draft_key, accept_key = jax.random.split(state.key, 3)
    base = state.cache.length
    draft_cache, drafts, q = _draft(draft_config, draft_params, settings, knobs, state.extra, state.last, draft_key)
    tokens = jnp.concatenate([state.last[:, None], drafts], axis=1)  # [B, d + 1]
    out, cache = kvcache.run_cached_layers(config, params, state.cache, model.embed(config, params, tokens), 0,
                                           config.num_layers, write_index=base)
    logits = model.unembed(config, params, out.x)  # [B, d + 1, V]
    n = jnp.full((batch,), d, jnp.int32)
    state = settle(settings, knobs, state.replace(key=key), cache, base, logits, drafts, q, n, accept_key)
    return state.replace(extra=draft_cache.rollback(state.cache.length))
