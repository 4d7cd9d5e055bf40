"""Host side of decoding: options and their checks, prompt buckets, timing without compilation, streaming.

Prompts are right-padded to a multiple of `BUCKET` tokens and the output buffer to a multiple of
`OUTPUT_BUCKET`, so a new prompt or a different max_new_tokens in the same buckets reuses the compiled loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from typing import NamedTuple
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lsjax import decoding, model, sharding
from lsjax.config import LlamaConfig
from lsjax.decoding import confidence as confidence_lib, threshold as threshold_lib
from lsjax.errors import InputError

BUCKET = 64
OUTPUT_BUCKET = 64
SCHEDULES = ("fixed", "heuristic")


@dataclasses.dataclass(frozen=True)
class RowOutput:
    """One prompt's continuation and its decode statistics."""

    token_ids: list[int]
    text: str
    new_tokens: int
    drafted: int  # draft tokens proposed
    accepted: int  # draft tokens accepted
    rounds: int
    acceptance_rate: float | None  # accepted / drafted; None when nothing was drafted


@dataclasses.dataclass(frozen=True)
class DecodeResult:
    """A decoded batch: the statistics of the whole batch, then one `RowOutput` per prompt."""

    strategy: str
    exit_layer: int | None
    num_speculations: int | None  # self_speculative and speculative
    confidence: float | None  # self_speculative and speculative
    threshold: float | None  # calm and free
    layers_per_token: float | None  # calm and free: the share of the layers run over the fed tokens
    seconds: float  # without compilation
    new_tokens: int
    tokens_per_second: float
    outputs: tuple[RowOutput, ...]


# The strategies that take an exit layer E (calm: its earliest exit); the others run every layer.
EXIT_STRATEGIES = ("early_exit", "self_speculative", "free", "calm")


class PromptBatch(NamedTuple):
    tokens: np.ndarray  # [B, T] right-padded, T a multiple of BUCKET
    lengths: np.ndarray  # [B]


class LoopInputs(NamedTuple):
    """The traced arguments of `decoding.generate`, passed by name: new values reuse the compiled loop."""

    prompt_tokens: jax.Array  # [B, T]
    prompt_lengths: jax.Array  # [B]
    max_new_tokens: int
    key: jax.Array
    knobs: decoding.Knobs


@dataclasses.dataclass(frozen=True)
class Options:
    """What a user asks of a decode, the one public options type; `check` validates it against the model.

    The loop takes it in two parts (`split`, internal to `lsjax.decoding`): static `Settings`, whose change
    compiles a new loop, and traced `Knobs`, which the compiled loop takes as arguments.
    - static: strategy, exit_layer, num_speculations, schedule, greedy or not (temperature == 0), top_k,
      draft_vocab (K), measure, decay, stack, and max_new_tokens rounded up to `OUTPUT_BUCKET`;
    - traced: max_new_tokens itself, seed, temperature > 0, top_p, confidence, threshold (FREE's adaptive
      one is refitted between batches), rollback and the draft vocabulary's token ids.
    """

    strategy: str = "self_speculative"
    exit_layer: int | None = None  # default: a quarter of the layers (at least 1); calm: the earliest exit, 1
    num_speculations: int = 2
    schedule: str = "fixed"
    confidence: float = 0.0  # stop a round's drafting below this top probability; 0 = never
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    draft_vocab: int = 0  # K > 0: draft over the K most frequent tokens only (lsjax.draft_vocab); 0 = all
    threshold: float | None = None  # calm and free exit past this confidence; None: 0.9 (calm), adaptive (free)
    measure: str = "top2"  # calm and free: softmax | top2 | state (calm only)
    decay: bool = False  # calm: the threshold decays with the position
    stack: int = 8  # free: the most tokens that skip the deep layers before a deep pass
    rollback: float | None = None  # free: rewrite from a skipped token whose deep loss reaches this; None: off

    def check(self, config: LlamaConfig) -> Options:
        """The options with defaults filled in, or a one-line InputError naming the bad value."""
        layers = config.num_layers
        default = 1 if self.strategy == "calm" else max(1, layers // 4)
        exit_layer = default if self.exit_layer is None else self.exit_layer
        _require(self.strategy in decoding.STRATEGIES, f"strategy={self.strategy!r}: expected one of "
                 f"{list(decoding.STRATEGIES)}")
        if self.strategy in EXIT_STRATEGIES:
            _require(1 <= exit_layer <= layers - 1, f"exit layer E={exit_layer}: expected 1 <= E <= {layers - 1} "
                     f"(the model has {layers} layers)")
        _require(self.num_speculations >= 1, f"num_speculations d={self.num_speculations}: expected d >= 1")
        _require(self.schedule in SCHEDULES, f"schedule={self.schedule!r}: expected one of {list(SCHEDULES)}")
        _require(0.0 <= self.confidence < 1.0, f"confidence={self.confidence}: expected 0 <= confidence < 1")
        _require(self.max_new_tokens >= 1, f"max_new_tokens={self.max_new_tokens}: expected a positive integer")
        _require(self.temperature >= 0.0, f"temperature={self.temperature}: expected temperature >= 0 (0 = greedy)")
        _require(self.top_k >= 0, f"top_k={self.top_k}: expected top_k >= 0 (0 = off)")
        _require(0.0 < self.top_p <= 1.0, f"top_p={self.top_p}: expected 0 < top_p <= 1")
        _require(0 <= self.draft_vocab <= config.vocab_size, f"draft_vocab K={self.draft_vocab}: expected "
                 f"0 (the whole vocabulary) or 1 <= K <= {config.vocab_size}")
        _require(not self.draft_vocab or self.strategy == "self_speculative", f"draft_vocab={self.draft_vocab} "
                 f"applies to self-speculative drafting only, not strategy={self.strategy!r}")
        measures = confidence_lib.MEASURES if self.strategy == "calm" else ("softmax", "top2")
        _require(self.strategy not in ("calm", "free") or self.measure in measures, f"measure={self.measure!r}: "
                 f"expected one of {list(measures)} for strategy={self.strategy!r}")
        _require(self.threshold is None or self.strategy in ("calm", "free"), f"threshold={self.threshold} applies "
                 f"to the calm and free strategies only, not strategy={self.strategy!r}")
        _require(not self.decay or self.strategy == "calm", "decay applies to the calm strategy only")
        _require(self.stack >= 1, f"stack={self.stack}: expected a positive integer")
        _require(self.rollback is None or self.strategy == "free", f"rollback={self.rollback} applies to the free "
                 f"strategy only, not strategy={self.strategy!r}")
        _require(self.rollback is None or self.rollback >= 0, f"rollback={self.rollback}: expected a loss >= 0 "
                 f"(0 rolls back every skipped token)")
        threshold = 0.9 if self.threshold is None and self.strategy == "calm" else self.threshold
        return dataclasses.replace(self, exit_layer=exit_layer, threshold=threshold)

    @property
    def adaptive(self) -> bool:
        """FREE without a fixed threshold: the Beta-mixture estimator sets it between batches."""
        return self.strategy == "free" and self.threshold is None

    def split(self, config: LlamaConfig, pad_id: int, draft_ranking=None) -> tuple[decoding.Settings, decoding.Knobs]:
        """Checked options as the loop takes them: (static settings, traced knobs). draft_ranking: token ids
        by frequency (`lsjax.draft_vocab`), needed when draft_vocab > 0."""
        output_size = _round_up(self.max_new_tokens, OUTPUT_BUCKET)
        speculative = self.strategy in ("self_speculative", "speculative")
        settings = decoding.Settings(
            strategy=self.strategy,
            exit_layer=self.exit_layer if self.strategy in EXIT_STRATEGIES else 0,
            num_speculations=self.num_speculations if speculative else 1,
            schedule=self.schedule, sampling=decoding.Sampling(greedy=self.temperature == 0.0, top_k=self.top_k),
            eos_ids=tuple(config.eos_token_ids), pad_id=pad_id, output_size=output_size,
            draft_vocab=self.draft_vocab, confidence=self.measure, decay=self.decay,
            stack=self.stack if self.strategy == "free" else Options.stack)
        if self.draft_vocab and draft_ranking is None:
            raise InputError(f"draft_vocab={self.draft_vocab} needs a ranking of the tokens (lsjax.draft_vocab)")
        ids = () if not self.draft_vocab else np.sort(np.asarray(draft_ranking)[:self.draft_vocab])
        limit = threshold_lib.INITIAL if self.threshold is None else self.threshold
        knobs = decoding.Knobs.make(temperature=self.temperature or 1.0, top_p=self.top_p, confidence=self.confidence,
                                    draft_ids=ids, threshold=limit,
                                    rollback=float("inf") if self.rollback is None else self.rollback)
        return settings, knobs


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def _round_up(n: int, bucket: int) -> int:
    """The smallest multiple of `bucket` that holds n (prompt widths and output buffers are bucketed)."""
    return -(-n // bucket) * bucket


def encode_prompts(tok, texts: list[str]) -> PromptBatch:
    if not texts or not all(texts):
        raise InputError("empty prompt: give at least one character of text")
    encoded = [tok.encode(text) for text in texts]
    width = _round_up(max(len(ids) for ids in encoded), BUCKET)
    tokens = np.full((len(encoded), width), tok.pad_id or 0, np.int32)
    for i, ids in enumerate(encoded):
        tokens[i, :len(ids)] = ids
    return PromptBatch(tokens, np.asarray([len(ids) for ids in encoded], np.int32))


def check_fits(config: LlamaConfig, batch: PromptBatch, max_new_tokens: int) -> None:
    need = int(batch.lengths.max()) + max_new_tokens
    if need > config.max_position_embeddings:
        raise InputError(f"prompt ({int(batch.lengths.max())} tokens) + max_new_tokens ({max_new_tokens}) = {need} "
                         f"exceeds the model's max_position_embeddings={config.max_position_embeddings}")


def unrolls_layers(mesh: Mesh | None) -> bool:
    """Whether decoding runs the `model.per_layer` layout: yes, unless the mesh splits weights over fsdp. An
    unrolled loop lets XLA hoist every layer's FSDP all-gather out of the decode loop, holding the whole
    gathered model on every device (the 1B shape at 4096 on 1x8x1: 6.3 against 3.0 GiB, benchmarks/memory.py);
    the stacked scan gathers one layer at a time."""
    return mesh is None or mesh.shape.get("fsdp", 1) == 1


def decoding_params(config: LlamaConfig, params, mesh: Mesh | None = None):
    """params in the layout decoding runs (`unrolls_layers`), in their shardings on `mesh` if given."""
    shardings = None if mesh is None else model.param_shardings(config, mesh)
    if unrolls_layers(mesh):
        params = model.per_layer(params)
        shardings = None if mesh is None else model.per_layer_shardings(shardings, config.num_layers)
    return params if mesh is None else jax.device_put(params, shardings)


class Decoder:
    """One model, tokenizer and set of options; compiles each loop once and reuses it for every batch."""

    def __init__(self, config: LlamaConfig, params, tok, options: Options, mesh: Mesh | None = None,
                 draft_ranking=None, draft=None):
        """mesh: decode sharded over it (params by the rules table, prompt rows over data and fsdp, the KV
        cache over rows and KV heads); the tokens are the same as on one device. draft_ranking: token ids by
        frequency, for options.draft_vocab (`lsjax.draft_vocab.for_checkpoint`). draft: (config, params) of
        the draft model of the two-model `speculative` strategy (same tokenizer)."""
        self.config, self.tok, self.mesh = config, tok, mesh
        self.params = decoding_params(config, params, mesh)
        self.options = options.check(config)
        _require((draft is not None) == (self.options.strategy == "speculative"), "a draft model (--draft-checkpoint) "
                 "goes with strategy='speculative', and that strategy needs one")
        self.draft_config = None if draft is None else draft[0]
        self.draft_params = None if draft is None else decoding_params(draft[0], draft[1], mesh)
        if draft is not None:
            _require(draft[0].vocab_size == config.vocab_size, f"draft vocabulary {draft[0].vocab_size} != the "
                     f"model's {config.vocab_size}: the draft model must share the tokenizer")
        self.adaptive = threshold_lib.Adaptive() if self.options.adaptive else None
        self.settings, self.knobs = self.options.split(config, tok.pad_id or 0, draft_ranking)
        self._compiled = {}  # (prompt batch shape, streaming) -> the compiled decode for that bucket
        self._rounds: queue.Queue = queue.Queue()  # snapshots the streaming loop sends (one stream at a time)

    def encode(self, texts: list[str]) -> PromptBatch:
        """The prompts in their buckets, checked against the model's positions (so a command can report a bad
        prompt before it starts streaming): what `generate` and `stream` take."""
        batch = encode_prompts(self.tok, texts)
        check_fits(self.config, batch, self.options.max_new_tokens)
        return batch

    def cache_length(self, prompt_width: int) -> int:
        """KV-cache slots per row for prompts padded to `prompt_width`."""
        return decoding.cache_length(self.settings, prompt_width)

    def _inputs(self, batch: PromptBatch, max_new_tokens: int | None = None) -> LoopInputs:
        """The loop's traced arguments for one call of `generate` or `stream`, after checking that the prompts
        and max_new_tokens fit the model's positions (before anything compiles: a batch need not come from
        `encode`). max_new_tokens: this call's budget, at most the options' (default: theirs)."""
        budget = self.options.max_new_tokens if max_new_tokens is None else max_new_tokens
        _require(isinstance(budget, int) and 1 <= budget <= self.options.max_new_tokens,
                 f"max_new_tokens={budget!r}: expected an integer in [1, {self.options.max_new_tokens}] "
                 "(the decoder's Options.max_new_tokens)")
        check_fits(self.config, batch, budget)
        if self.adaptive is not None:  # refitted between batches; a traced value, so nothing recompiles
            self.knobs = self.knobs._replace(threshold=jnp.float32(self.adaptive.threshold()))
        tokens, lengths = jnp.asarray(batch.tokens), jnp.asarray(batch.lengths)
        if self.mesh is not None:
            tokens = jax.device_put(tokens, sharding.batch_sharding(self.mesh, tokens.shape))
            lengths = jax.device_put(lengths, sharding.batch_sharding(self.mesh, lengths.shape))
        return LoopInputs(prompt_tokens=tokens, prompt_lengths=lengths, max_new_tokens=budget,
                          key=jax.random.key(self.options.seed), knobs=self.knobs)

    def _run(self, compiled, inputs: LoopInputs) -> decoding.Output:
        """Calls a compiled decode (config and settings are baked in)."""
        return compiled(self.params, **inputs._asdict(), draft_params=self.draft_params)

    def compiled(self, batch: PromptBatch, streaming: bool = False, inputs: LoopInputs | None = None):
        """The whole decode for this batch's bucket, compiled ahead of time once per bucket (and per mode:
        the streaming program also hands the tokens to the host every few rounds)."""
        inputs = self._inputs(batch) if inputs is None else inputs
        key = (batch.tokens.shape, streaming)
        if key not in self._compiled:
            on_round = self._on_round if streaming else None
            with contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh):
                lowered = decoding.generate.lower(
                    self.config, self.params, self.settings, **inputs._asdict(),
                    max_length=self.cache_length(batch.tokens.shape[1]), on_round=on_round,
                    draft_config=self.draft_config, draft_params=self.draft_params)
                self._compiled[key] = lowered.compile()
        return self._compiled[key]

    def generate(self, batch: PromptBatch, max_new_tokens: int | None = None) -> DecodeResult:
        """Decodes a batch (`encode`); the time excludes compilation. Returns per-row outputs and statistics.
        max_new_tokens: fewer tokens than the options' for this call, in the same compiled loop (a traced
        budget: nothing recompiles)."""
        inputs = self._inputs(batch, max_new_tokens)
        compiled = self.compiled(batch, inputs=inputs)
        start = time.perf_counter()
        out = jax.block_until_ready(self._run(compiled, inputs))
        seconds = time.perf_counter() - start
        report = self.report(out, seconds)
        if self.adaptive is not None:
            self.adaptive.add(*jax.device_get(out.extra), num_tokens=jax.device_get(out.num_tokens))
        return report

    def report(self, out: decoding.Output, seconds: float) -> DecodeResult:
        out = jax.device_get(out)
        rows = []
        for b, n in enumerate(out.num_tokens):
            ids = out.tokens[b, :n].tolist()
            drafted, accepted = int(out.drafted[b]), int(out.accepted[b])
            rows.append(RowOutput(token_ids=ids, text=self.tok.decode(ids), new_tokens=int(n), drafted=drafted,
                                  accepted=accepted, rounds=int(out.rounds[b]),
                                  acceptance_rate=accepted / drafted if drafted else None))
        total = int(np.sum(out.num_tokens))
        speculative = self.options.strategy in ("self_speculative", "speculative")
        exits = self.options.strategy in ("calm", "free")
        fed = int(np.sum(np.maximum(out.num_tokens - 1, 0)))  # tokens the loop ran (the prefill picked the first)
        return DecodeResult(
            strategy=self.options.strategy, exit_layer=self.settings.exit_layer or None,
            num_speculations=self.settings.num_speculations if speculative else None,
            confidence=self.options.confidence if speculative else None,
            threshold=float(self.knobs.threshold) if exits else None,
            layers_per_token=int(np.sum(out.layers)) / (self.config.num_layers * fed) if exits and fed else None,
            seconds=seconds, new_tokens=total, tokens_per_second=total / seconds, outputs=tuple(rows))

    def _on_round(self, count, tokens, kinds) -> None:
        self._rounds.put((count, tokens, kinds))

    def stream(self, batch: PromptBatch) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (new token ids, their kinds) of row 0 of a batch (`encode`) every few rounds while the loop
        runs on the device.

        The compiled loop sends its tokens through a host callback every `decoding.loop.STREAM_EVERY`
        rounds and carries on; its output closes the stream. The decode runs in a worker thread so that
        the tokens reach the caller as they come, whichever way the runtime dispatches.
        """
        inputs = self._inputs(batch)
        compiled = self.compiled(batch, streaming=True, inputs=inputs)
        self._rounds = queue.Queue()
        result = []

        def decode():
            try:
                out = jax.device_get(self._run(compiled, inputs))
                result.append((out.num_tokens, out.tokens, out.kinds))
            except Exception as err:  # re-raised in the caller's thread below
                result.append(err)
            finally:
                self._rounds.put(None)

        worker = threading.Thread(target=decode, daemon=True)
        worker.start()

        def snapshots():  # (count, tokens, kinds): the callbacks', then the finished output's
            while (item := self._rounds.get()) is not None:
                yield item
            worker.join()
            if isinstance(result[0], Exception):
                raise result[0]
            yield result[0]

        shown = 0
        for count, tokens, kinds in snapshots():
            if count[0] > shown:
                yield tokens[0, shown:count[0]], kinds[0, shown:count[0]]
                shown = int(count[0])
