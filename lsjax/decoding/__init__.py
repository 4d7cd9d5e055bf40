"""Generation loops that run entirely on the device over a static-shape KV cache.

    settings = Settings(strategy="self_speculative", exit_layer=2, num_speculations=4, output_size=128)
    out = decoding.generate(config, params, settings, prompts, lengths, max_new_tokens, key, knobs,
                            max_length=decoding.cache_length(settings, prompts.shape[1]))

`generate` is prefill plus one `lax.while_loop`, jitted as a whole; `start` and `run` split it so that a
host can stream: `run` continues a donated state for at most `max_rounds` rounds and returns it.
"""

from __future__ import annotations

import functools

import jax

from lsjax.config import LlamaConfig
from lsjax.decoding import autoregressive, self_speculative, state as state_lib
from lsjax.decoding.sampling import Knobs, Sampling
from lsjax.decoding.state import ACCEPTED_DRAFT, FROM_MODEL, DecodeState, Output, Settings

STRATEGIES = ("autoregressive", "early_exit", "self_speculative")
_ROUNDS = {"autoregressive": autoregressive.advance, "early_exit": autoregressive.advance,
           "self_speculative": self_speculative.advance}

__all__ = ["ACCEPTED_DRAFT", "FROM_MODEL", "STRATEGIES", "DecodeState", "Knobs", "Output", "Sampling", "Settings",
           "cache_length", "generate", "run", "start"]


def cache_length(settings: Settings, prompt_width: int) -> int:
    """Cache slots per row for right-padded prompts of `prompt_width` and `settings.output_size` new tokens."""
    return prompt_width + settings.output_size + settings.slack


def _start(config, params, settings, prompt_tokens, prompt_lengths, max_new_tokens, key, knobs, max_length):
    depth = autoregressive.depth(config, settings)
    return state_lib.start(config, params, settings, prompt_tokens, prompt_lengths, max_new_tokens, key, knobs,
                           max_length=max_length, depth=depth, cache_layers=depth)


def _run(config, params, settings, decode_state, knobs, max_rounds):
    round_fn = functools.partial(_ROUNDS[settings.strategy], config, params, settings, knobs)
    return state_lib.loop(round_fn, decode_state, max_rounds)


@functools.partial(jax.jit, static_argnames=("config", "settings", "max_length"))
def start(config: LlamaConfig, params, settings: Settings, prompt_tokens, prompt_lengths, max_new_tokens, key,
          knobs: Knobs, *, max_length: int) -> DecodeState:
    """Prefill of right-padded prompts [B, T] (lengths [B]) and each row's first token."""
    return _start(config, params, settings, prompt_tokens, prompt_lengths, max_new_tokens, key, knobs, max_length)


@functools.partial(jax.jit, static_argnames=("config", "settings"), donate_argnames=("decode_state",))
def run(config: LlamaConfig, params, settings: Settings, decode_state: DecodeState, knobs: Knobs,
        max_rounds) -> DecodeState:
    """At most max_rounds (traced) more rounds of the strategy; the state is donated."""
    return _run(config, params, settings, decode_state, knobs, max_rounds)


@functools.partial(jax.jit, static_argnames=("config", "settings", "max_length"))
def generate(config: LlamaConfig, params, settings: Settings, prompt_tokens, prompt_lengths, max_new_tokens, key,
             knobs: Knobs, *, max_length: int) -> Output:
    """The whole decode in one compiled call: prefill, then rounds until every row is done."""
    decode_state = _start(config, params, settings, prompt_tokens, prompt_lengths, max_new_tokens, key, knobs,
                          max_length)
    return state_lib.output(settings, _run(config, params, settings, decode_state, knobs, settings.output_size))
