"""The jitted side of decoding: loops that run entirely on the device over a static-shape KV cache.

    settings, knobs = lsjax.decoder.Options(strategy="self_speculative", exit_layer=2).check(config).split(
        config, pad_id)  # static settings, traced knobs
    out = decoding.generate(config, params, settings, prompts, lengths, max_new_tokens, key, knobs,
                            max_length=decoding.cache_length(settings, prompts.shape[1]))

`generate` is prefill plus one `lax.while_loop`, jitted as a whole; with `on_round` it also streams the
tokens to the host every few rounds, without leaving the loop.
"""

from __future__ import annotations

import functools

import jax

from lsjax.config import LlamaConfig
from lsjax.decoding import autoregressive, calm, early_exit, free, loop, self_speculative, speculative
from lsjax.decoding.sampling import Knobs, Sampling
from lsjax.decoding.loop import ACCEPTED_DRAFT, FROM_MODEL, DecodeState, OnRound, Output, Settings

STRATEGIES = ("autoregressive", "early_exit", "self_speculative", "speculative", "calm", "free")
_ROUNDS = {"autoregressive": autoregressive.run_round, "early_exit": early_exit.run_round,
           "self_speculative": self_speculative.run_round, "speculative": speculative.run_round,
           "calm": calm.run_round, "free": free.run_round}

__all__ = ["ACCEPTED_DRAFT", "FROM_MODEL", "STRATEGIES", "DecodeState", "Knobs", "Output", "Sampling", "Settings",
           "OnRound", "cache_length", "generate"]


def cache_length(settings: Settings, prompt_width: int) -> int:
    """Cache slots per row for right-padded prompts of `prompt_width` and `settings.output_size` new tokens."""
    return prompt_width + settings.output_size + settings.slack


@functools.partial(jax.jit, static_argnames=("config", "settings", "max_length", "on_round", "draft_config"))
def generate(config: LlamaConfig, params, settings: Settings, prompt_tokens, prompt_lengths, max_new_tokens, key,
             knobs: Knobs, *, max_length: int, on_round: OnRound | None = None,
             draft_config: LlamaConfig | None = None, draft_params=None) -> Output:
    """The whole decode in one compiled call: prefill, then rounds until every row is done.

    on_round: called on the host with (count, tokens, kinds) every `loop.STREAM_EVERY` rounds and after the
    last, for streaming. draft_config, draft_params: the draft model of the two-model `speculative` strategy."""
    depth = settings.exit_layer if settings.strategy == "early_exit" else config.num_layers  # layers it runs
    decode_state = loop.start(config, params, settings, prompt_tokens, prompt_lengths, max_new_tokens, key, knobs,
                              max_length=max_length, depth=depth, cache_layers=depth)
    round_fn = functools.partial(_ROUNDS[settings.strategy], config, params, settings, knobs)
    if settings.strategy == "self_speculative":
        round_fn = functools.partial(round_fn, rows=self_speculative.draft_rows(config, params, settings, knobs))
    elif settings.strategy == "speculative":
        round_fn = functools.partial(round_fn, draft_config=draft_config, draft_params=draft_params)
        decode_state = decode_state.replace(extra=speculative.prefill(draft_config, draft_params, prompt_tokens,
                                                                      prompt_lengths, max_length))
    elif settings.strategy == "free":
        decode_state = free.prepare(config, params, settings, knobs, decode_state, prompt_tokens, prompt_lengths)
    final = loop.run_rounds(round_fn, decode_state, on_round)
    out = loop.output(settings, final)
    return out._replace(extra=free.pairs(final)) if settings.strategy == "free" else out
