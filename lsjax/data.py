"""Text corpora in, packed token batches out: TFDS array_record datasets read through a grain pipeline.

Datasets. `prepare` writes lsjax's own corpora (`lsjax.datasets`: python_stdlib, the embedded corpus, and
local_text) as array_record, the only format TFDS writes and reads without TensorFlow. Any other TFDS
dataset already prepared as array_record is read by name from its files (`data_source`).

Batches. Documents are shuffled with a seed (reshuffled every epoch), dealt round-robin to processes,
tokenised as BOS + text + EOS and packed by concatenate-then-split into rows of `seq_len`. Every batch is a
dict of [rows, seq_len] NumPy arrays:
  inputs       int32  token ids; a document contributes BOS t1 .. tn (its EOS appears only as a target)
  targets      int32  the token after inputs[r, t] in the same document: t1 .. tn EOS. Inputs and targets
                      are packed as aligned pairs, so a row boundary splits between pairs and loses nothing,
                      and no target ever crosses into the next document
  segment_ids  int32  1, 2, .. for the document pieces of a row, 0 for padding (padding only ends a
                      finite stream); the model attends within equal segment ids
  positions    int32  position within the piece, restarting at 0 for every piece, also for the rest of a
                      document continued from the previous row (that piece starts without BOS)
  loss_mask    float32 1 where segment_ids > 0, else 0
"""

from __future__ import annotations

import inspect
import itertools
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from grain.experimental import ConcatThenSplitIterDataset, WindowShuffleIterDataset
from tensorflow_datasets.core import read_only_builder
from tensorflow_datasets.core.registered import DatasetNotFoundError

from lsjax.datasets import BUILDERS, SPLITS, DataError

SOURCES = ("python_stdlib", "local_text", "tfds")  # values of a training config's data.source
FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


class TextSource(Sequence):
    """Random access to the texts (str) of one split; what `grain.MapDataset.source` needs."""

    def __init__(self, records, feature: str, name: str):
        self._records, self._feature, self.name = records, feature, name

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> str:
        if not -len(self) <= index < len(self):  # IndexError ends iteration; array_record raises ValueError
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} documents")
        value = self._records[index % len(self)][self._feature]
        return value.decode("utf-8") if isinstance(value, bytes) else value


# --- datasets -------------------------------------------------------------------------------------------------

def _root(data_dir) -> Path:
    return Path(data_dir or tfds.core.constants.DATA_DIR).expanduser()


def _own_builder(source_name: str, data_dir, kwargs) -> tfds.core.DatasetBuilder:
    cls, arguments = BUILDERS[source_name], {**kwargs, "data_dir": str(_root(data_dir))}
    try:
        inspect.signature(cls).bind(**arguments)
    except TypeError as e:
        raise DataError(f"{source_name}: {e}; its arguments are {inspect.signature(cls)}") from None
    return cls(**arguments)


def prepare(source_name: str, data_dir=None, **kwargs) -> tfds.core.DatasetBuilder:
    """Builds python_stdlib or local_text (kwargs: their builder's arguments) as array_record in data_dir.

    Idempotent: a prepared dataset is only reopened. data_dir defaults to TFDS's (TFDS_DATA_DIR or
    ~/tensorflow_datasets).
    """
    if source_name not in BUILDERS:
        raise DataError(f"prepare builds {' and '.join(BUILDERS)}, not {source_name!r}; prepare other TFDS datasets "
                        f"with their builder: tfds build {source_name} --file_format=array_record")
    builder = _own_builder(source_name, data_dir, kwargs)
    if not builder.is_prepared():
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder


def _prepared_builder(source_name: str, data_dir, kwargs) -> tfds.core.DatasetBuilder:
    """The builder of a prepared dataset, or a one-line DataError before anything slow starts."""
    root = _root(data_dir)
    if source_name in BUILDERS:
        builder = _own_builder(source_name, data_dir, kwargs)
        if not builder.is_prepared():
            raise DataError(f"dataset {builder.info.full_name} is not prepared in data_dir {root}; run "
                            f"lsjax.data.prepare({source_name!r}, {str(root)!r}, ...) first")
        return builder
    if kwargs:
        raise DataError(f"dataset {source_name!r}: unexpected arguments {sorted(kwargs)} (only lsjax's own "
                        f"builders {sorted(BUILDERS)} take any)")
    try:
        # From the files alone: catalog code may need TensorFlow, and nothing here may reach the network.
        return read_only_builder.builder_from_files(source_name, data_dir=str(root))
    except DatasetNotFoundError:
        build = f"tfds build {re.split('[/:]', source_name)[0]} --data_dir={root} --file_format=array_record"
        raise DataError(f"dataset {source_name!r} is not prepared in data_dir {root}; prepare it first, "
                        f"e.g. {build}") from None


def data_source(source_name: str, split: str, data_dir=None, *, text_feature: str = "text", **kwargs) -> TextSource:
    """The texts of one split of a prepared dataset: python_stdlib, local_text (kwargs: builder arguments)
    or any TFDS dataset name ('name[/config][:version]') prepared as array_record."""
    return _open(_prepared_builder(source_name, data_dir, kwargs), split, text_feature)


def _open(builder: tfds.core.DatasetBuilder, split: str, text_feature: str) -> TextSource:
    info = builder.info
    if split not in info.splits:
        raise DataError(f"dataset {info.full_name}: no split {split!r} (it has {sorted(info.splits)})")
    if text_feature not in info.features:
        raise DataError(f"dataset {info.full_name}: no feature {text_feature!r} (it has {sorted(info.features)})")
    file_format = info.file_format.value if info.file_format else "tfrecord"
    if file_format != "array_record":
        raise DataError(f"dataset {info.full_name} is stored as {file_format}; reading without TensorFlow needs "
                        "array_record (rebuild with --file_format=array_record)")
    return TextSource(builder.as_data_source(split=split), text_feature, f"{info.full_name}[{split}]")


def corpus_files(source_name: str, data_dir=None, *, text_feature: str = "text", **kwargs) -> list[Path]:
    """The train split as text files, for `tokenizer.train_bpe`: the tokenizer never sees validation text.

    Written once under data_dir/lsjax_corpus/<dataset>/ and reused: documents separated by a newline, in
    files of about 32M characters each.
    """
    builder = _prepared_builder(source_name, data_dir, kwargs)
    directory = _root(data_dir) / "lsjax_corpus" / builder.info.full_name / text_feature
    if not directory.is_dir():
        partial = directory.with_name(directory.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for number, texts in enumerate(_chunks(_open(builder, "train", text_feature), 32 << 20)):
            (partial / f"train-{number:05d}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        partial.rename(directory)
    return sorted(directory.iterdir())


def _chunks(texts, max_chars: int) -> Iterator[list[str]]:
    chunk, size = [], 0
    for text in texts:
        chunk.append(text)
        size += len(text)
        if size >= max_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


# --- training configs ---------------------------------------------------------------------------------------

def _config_args(settings) -> tuple[str, str | None, dict]:
    """(dataset name, data_dir, arguments) of a training config's data section (`train_config.DataSettings`)."""
    data_dir, max_files = settings.data_dir or None, settings.max_files or None
    if settings.source == "python_stdlib":
        return "python_stdlib", data_dir, {"max_files": max_files}
    if settings.source == "local_text":
        if not settings.path:
            raise DataError("data.path is empty: data.source='local_text' needs the folder of text files")
        return "local_text", data_dir, {"folder": settings.path, "text_field": settings.text_field,
                                        "max_files": max_files}
    if not settings.name:
        raise DataError("data.name is empty: data.source='tfds' needs the name of a prepared TFDS dataset")
    return settings.name, data_dir, {"text_feature": settings.text_field}


def sources(settings) -> tuple[TextSource, TextSource]:
    """The train and validation sources of a training config's data section, preparing lsjax's corpora."""
    name, data_dir, kwargs = _config_args(settings)
    if name in BUILDERS:
        prepare(name, data_dir, **kwargs)
    return tuple(data_source(name, split, data_dir, **kwargs) for split in SPLITS)


def training_files(settings) -> list[Path]:
    """`corpus_files` of a training config's data section, preparing lsjax's corpora."""
    name, data_dir, kwargs = _config_args(settings)
    if name in BUILDERS:
        prepare(name, data_dir, **kwargs)
    return corpus_files(name, data_dir, **kwargs)


# --- batches ------------------------------------------------------------------------------------------------

class _Tokenize:
    """A document as aligned (input, target) pairs of BOS + text + EOS; a class, so worker processes can pickle it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> dict[str, np.ndarray]:
        ids = np.asarray(self.tokenizer.encode(text, add_bos=True, add_eos=True), np.int32)
        return {"inputs": ids[:-1], "targets": ids[1:]}


def _fields(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    segment_ids = packed["inputs_segment_ids"]
    return {"inputs": packed["inputs"], "targets": packed["targets"], "segment_ids": segment_ids,
            "positions": packed["inputs_positions"], "loss_mask": (segment_ids > 0).astype(np.float32)}


# One thread tokenises ahead of the consumer: `tokenizers` holds the GIL in `encode`, so more threads add
# nothing (measured), and grain's default 500-document read-ahead delays the first batch by seconds.
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=16)


def _batches(documents: grain.MapDataset, tokenizer, seq_len: int, rows: int, drop_remainder: bool,
             shuffle_window: int = 0, seed: int = 0):
    tokens = documents.map(_Tokenize(tokenizer)).to_iter_dataset(_READ_OPTIONS)
    packed = ConcatThenSplitIterDataset(tokens, length_struct={"inputs": seq_len, "targets": seq_len})
    if shuffle_window > 1:
        packed = WindowShuffleIterDataset(packed, window_size=shuffle_window, seed=seed)
    return packed.batch(rows, drop_remainder=drop_remainder).map(_fields)


def _rows_per_process(source, seq_len: int, global_batch_size: int, process_index: int, process_count: int) -> int:
    if seq_len < 1:
        raise DataError(f"seq_len={seq_len}: expected a positive integer")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index}, process_count={process_count}: expected "
                        "0 <= process_index < process_count")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise DataError(f"global_batch_size={global_batch_size}: expected a positive multiple of "
                        f"process_count={process_count}")
    if len(source) < process_count:
        raise DataError(f"{getattr(source, 'name', 'source')}: {len(source)} documents cannot feed "
                        f"{process_count} processes")
    return global_batch_size // process_count


def make_batches(source: Sequence[str], tokenizer, *, seq_len: int, global_batch_size: int, seed: int,
                 shuffle: bool = True, num_epochs: int | None = None, process_index: int = 0,
                 process_count: int = 1, worker_count: int = 0, shuffle_window: int = 0) -> grain.DatasetIterator:
    """Training batches of this process's global_batch_size // process_count rows (module docstring).

    shuffle_window > 1 also shuffles the packed rows within windows of that many rows: a long document
    fills many consecutive rows, and without it one batch can be a single file (correlated gradients).

    Endless unless num_epochs is given; a partial last batch is dropped. Process p reads the documents
    p, p + P, .. of each epoch's order, so processes are disjoint and together read every document once per
    epoch. The iterator is checkpointable: `get_state()` is JSON-serialisable and `set_state(state)` makes
    the next batches those that followed. worker_count > 0 tokenises and packs in that many processes
    (needs absl flags parsed in the entry point; batches are then dealt from the workers in turn, a
    different but still deterministic order).
    """
    rows = _rows_per_process(source, seq_len, global_batch_size, process_index, process_count)
    if shuffle and not 0 <= seed < 2**32:
        raise DataError(f"seed={seed}: expected an integer in [0, 2**32)")
    documents = grain.MapDataset.source(source)
    if shuffle:
        documents = documents.shuffle(seed=seed)  # reshuffled every epoch: the epoch is folded into the seed
    documents = documents[process_index::process_count].repeat(num_epochs)
    if shuffle_window < 0:
        raise DataError(f"shuffle_window={shuffle_window}: expected an integer >= 0 (0 or 1: off)")
    batches = _batches(documents, tokenizer, seq_len, rows, drop_remainder=True, shuffle_window=shuffle_window,
                       seed=seed)
    if worker_count:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags
            raise DataError(f"worker_count={worker_count} needs absl flags parsed: run under absl.app.run, or "
                            "call absl.flags.FLAGS.mark_as_parsed() first")
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return _JsonStateIterator(iter(batches))


def eval_batches(source: Sequence[str], tokenizer, *, seq_len: int, global_batch_size: int,
                 num_batches: int | None = None, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Evaluation batches: the documents in stored order, packed as in training, starting afresh per call.

    Without num_batches, one pass, the last batch filled up with padding rows. With it, exactly num_batches
    batches (cut, or extended by all-padding batches), so every process runs the same number of steps.
    """
    rows = _rows_per_process(source, seq_len, global_batch_size, process_index, process_count)
    documents = grain.MapDataset.source(source)[process_index::process_count]
    batches = (_padded(batch, rows) for batch in _batches(documents, tokenizer, seq_len, rows, drop_remainder=False))
    if num_batches is None:
        return batches
    padding = iter(lambda: _padded(_empty(seq_len), rows), None)
    return itertools.islice(itertools.chain(batches, padding), num_batches)


def synthetic_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of uniformly random tokens with every field a training step reads (one document per row): for
    measuring speed and memory without a corpus."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_size, (batch_size, seq_len + 1)).astype(np.int32)
    ones = np.ones((batch_size, seq_len), np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": ones,
            "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len)).copy(),
            "loss_mask": ones.astype(np.float32), "sample_index": np.arange(batch_size)}


def _empty(seq_len: int) -> dict[str, np.ndarray]:
    return {key: np.zeros((0, seq_len), np.float32 if key == "loss_mask" else np.int32) for key in FIELDS}


def _padded(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Adds all-padding rows (zeros everywhere, loss_mask included) up to `rows`."""
    return {key: np.concatenate([value, np.zeros((rows - len(value), value.shape[1]), value.dtype)])
            for key, value in batch.items()}


class _JsonStateIterator(grain.DatasetIterator):
    """Passes batches through; restores states that went through JSON.

    grain 0.2.18's concat-then-split keeps slices as tuples and compares them with a tuple sentinel, so the
    lists that json.loads gives back restore a wrong packing position (grain's own orbax save/load included).
    """

    def __next__(self):
        return next(self._parent)

    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(_slices_as_tuples(state))


def _slices_as_tuples(state):
    if isinstance(state, list):  # e.g. the per-worker states of mp_prefetch
        return [_slices_as_tuples(value) for value in state]
    if not isinstance(state, dict):
        return state
    return {key: {name: tuple(s) for name, s in value.items()} if key == "remainder_slices"
            else _slices_as_tuples(value) for key, value in state.items()}
