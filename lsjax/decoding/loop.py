"""The jitted side's shared parts: the state every decode carries, prefill (`start`), appending tokens, the
rounds loop (`run_rounds`) and the output.

A decode is a strategy's `run_round` (one or more new tokens per row) repeated inside one `lax.while_loop` on the
device until every row is done. A host streams by passing `on_round`: the rounds then run in inner loops of
`STREAM_EVERY`, and between them an `io_callback` hands the host the generated tokens.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax
from jax.experimental import io_callback

from lsjax import kvcache, model
from lsjax.config import LlamaConfig
from lsjax.decoding import sampling as sampling_lib

# Values of `DecodeState.kinds`: who chose a generated token (decode.py --show-drafts colours them).
FROM_MODEL, ACCEPTED_DRAFT = 2, 1


class Settings(NamedTuple):
    """Everything static about a decode: hashable, a static argument of the jitted functions."""

    strategy: str = "autoregressive"  # autoregressive | early_exit | self_speculative | speculative | calm | free
    exit_layer: int = 0  # E: layers [0, E) draft (self_speculative), decide (early_exit, free) or come
    # before the first exit (calm: a row may exit after layer E - 1 or later)
    num_speculations: int = 1  # d: drafts per round (the most, with an adaptive schedule)
    schedule: str = "fixed"  # fixed | heuristic (+2 when all drafts were accepted, -1 otherwise, floor 1)
    sampling: sampling_lib.Sampling = sampling_lib.Sampling()
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    output_size: int = 64  # static room for generated tokens; the traced budget is at most this
    draft_vocab: int = 0  # K > 0: drafts come from the K tokens of knobs.draft_ids only (0: the whole vocabulary)
    confidence: str = "top2"  # calm and free: softmax (top probability) | top2 (top-1 minus top-2) | state (cosine)
    decay: bool = False  # calm: the threshold decays with the position (docs/algorithms.md, CALM confidence exits)
    stack: int = 8  # free: the most exited tokens whose deep K/V wait for the next deep pass

    @property
    def slack(self) -> int:
        """Extra output and cache slots, so that a round's fixed-width writes never clamp."""
        if self.strategy in ("self_speculative", "speculative"):
            return self.num_speculations + 1
        return self.stack + 1 if self.strategy == "free" else 1


@struct.dataclass
class DecodeState:
    cache: kvcache.KVCache
    last: jax.Array  # [B] int32: the newest token, emitted but not yet run through the model
    tokens: jax.Array  # [B, output_size + slack] int32: generated ids; past count[b] they mean nothing
    kinds: jax.Array  # [B, output_size + slack] int8: FROM_MODEL or ACCEPTED_DRAFT
    count: jax.Array  # [B] int32: tokens generated so far, end-of-sequence included
    done: jax.Array  # [B] bool
    budget: jax.Array  # [] int32: max_new_tokens
    key: jax.Array  # PRNG key, split every round
    rounds: jax.Array  # [B] int32: rounds a row took part in
    drafted: jax.Array  # [B] int32: draft tokens proposed
    accepted: jax.Array  # [B] int32: draft tokens accepted
    draft_length: jax.Array  # [B] int32: this round's d under the heuristic schedule
    layers: jax.Array  # [B] int32: layers run over the tokens fed so far (calm and free count them)
    extra: Any = None  # what one strategy alone carries (a draft model's cache, FREE's stack of exit states)


def is_eos(settings: Settings, tokens) -> jax.Array:
    if not settings.eos_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.isin(tokens, jnp.asarray(settings.eos_ids, jnp.int32))


def append(settings: Settings, state: DecodeState, emitted, num, kinds) -> DecodeState:
    """Appends the first num[b] of emitted [B, W] to each active row, cut after an end-of-sequence token
    and at the budget; marks rows done. W <= settings.slack."""
    width = emitted.shape[1]
    column = jnp.arange(width)[None, :]
    eos = is_eos(settings, emitted) & (column < num[:, None])
    through_eos = jnp.where(jnp.any(eos, axis=1), jnp.argmax(eos, axis=1) + 1, width)
    num = jnp.minimum(jnp.minimum(num, through_eos), state.budget - state.count)
    num = jnp.where(state.done, 0, num)
    write = jax.vmap(lambda row, new, at: lax.dynamic_update_slice_in_dim(row, new, at, axis=0))
    tokens = write(state.tokens, emitted.astype(jnp.int32), state.count)
    kinds = write(state.kinds, kinds.astype(jnp.int8), state.count)
    count = state.count + num
    done = state.done | (jnp.any(eos & (column < num[:, None]), axis=1)) | (count >= state.budget)
    return state.replace(tokens=tokens, kinds=kinds, count=count, done=done)


def start(config: LlamaConfig, params, settings: Settings, prompt_tokens, prompt_lengths, max_new_tokens, key,
          knobs: sampling_lib.Knobs, *, max_length: int, depth: int, cache_layers: int) -> DecodeState:
    """Prefills right-padded prompts [B, T] through layers [0, depth) and picks each row's first token."""
    batch = prompt_tokens.shape[0]
    cache = kvcache.init_cache(config, batch, max_length, num_layers=cache_layers,
                               per_layer=model.is_per_layer(params))
    logits, cache = kvcache.prefill(config, params, cache, prompt_tokens, prompt_lengths, depth=depth)
    key, draw = jax.random.split(key)
    probs = sampling_lib.distribution(settings.sampling, knobs, logits)
    first = sampling_lib.pick(settings.sampling, draw, probs)
    width = settings.output_size + settings.slack
    zeros = jnp.zeros((batch,), jnp.int32)
    state = DecodeState(
        cache=cache, last=first, tokens=jnp.full((batch, width), settings.pad_id, jnp.int32),
        kinds=jnp.zeros((batch, width), jnp.int8), count=zeros, done=jnp.zeros((batch,), bool),
        budget=jnp.minimum(jnp.asarray(max_new_tokens, jnp.int32), settings.output_size), key=key,
        rounds=zeros, drafted=zeros, accepted=zeros,
        draft_length=jnp.full((batch,), settings.num_speculations, jnp.int32), layers=zeros)
    return append(settings, state, first[:, None], jnp.ones((batch,), jnp.int32),
                  jnp.full((batch, 1), FROM_MODEL, jnp.int8))


Round = Callable[[DecodeState], DecodeState]
# on_round(count [B], tokens [B, W], kinds [B, W]) receives host copies every STREAM_EVERY rounds and after the last.
OnRound = Callable[[np.ndarray, np.ndarray, np.ndarray], None]
# A host callback is a stop of the device loop (a transfer and the Python interpreter's lock). Measured on the
# embedded model, 2 cores: a callback every round cost ~15%; a conditional callback inside the round loop
# ~5% even when it fired only twice per decode; callbacks between inner loops of rounds 1-3% (paired
# medians). 16 rounds are ~40 ms of text: smooth to read, a few callbacks per decode.
# Snapshots carry counts, so their order does not matter (the callback is unordered).
STREAM_EVERY = 16


def run_rounds(round_fn: Round, state: DecodeState, on_round: OnRound | None = None) -> DecodeState:
    """Runs rounds until every row is done (each round adds at least one token to every active row, and a
    row is done at its budget, so this ends). With on_round, the host gets the tokens every STREAM_EVERY
    rounds and when the loop ends."""

    def running(state):
        return ~jnp.all(state.done)

    if on_round is None:
        return lax.while_loop(running, round_fn, state)

    def chunk(state):  # up to STREAM_EVERY rounds, then the host gets the tokens
        state, _ = lax.while_loop(lambda c: running(c[0]) & (c[1] < STREAM_EVERY),
                                  lambda c: (round_fn(c[0]), c[1] + 1), (state, jnp.int32(0)))
        io_callback(on_round, None, state.count, state.tokens, state.kinds, ordered=False)
        return state

    return lax.while_loop(running, chunk, state)


class Output(NamedTuple):
    """A finished decode, as host arrays' device twins."""

    tokens: jax.Array  # [B, output_size] int32, pad past num_tokens
    kinds: jax.Array  # [B, output_size] int8, 0 past num_tokens
    num_tokens: jax.Array  # [B]
    rounds: jax.Array  # [B]
    drafted: jax.Array  # [B]
    accepted: jax.Array  # [B]
    layers: jax.Array  # [B]: layers run over the fed tokens (calm and free; 0 for the others)
    extra: Any = None  # a strategy's own output (FREE: the (confidence, agreed) pairs of its deep passes)


def output(settings: Settings, state: DecodeState) -> Output:
    valid = jnp.arange(settings.output_size)[None, :] < state.count[:, None]
    tokens = jnp.where(valid, state.tokens[:, :settings.output_size], settings.pad_id)
    kinds = jnp.where(valid, state.kinds[:, :settings.output_size], 0)
    return Output(tokens, kinds, state.count, state.rounds, state.drafted, state.accepted, state.layers)
