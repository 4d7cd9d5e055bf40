"""A reduced draft vocabulary: draft over the K most frequent tokens only, verify over all of them.

With a large vocabulary the shared LM head is most of a shallow draft step (SmolLM2-135M: 49k x 576, 21% of
its weights; Llama 3.2 1B: 263M of 1.24B). Drafting over the head's rows for the K tokens a corpus uses
most costs K/V of that, adds no parameter, and loses only the drafts the subset cannot propose (the
verification still sees the whole vocabulary, so greedy output is unchanged and sampling stays exact).

The ranking of every token id by frequency is chosen once and kept with the model as `draft_vocab.json`
(`save`, with the ranking of the model's own corpus); a checkpoint without one is ranked on the Python
standard library with its own tokenizer, the corpus lsjax trains on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from collections.abc import Iterable

import numpy as np

from lsjax.datasets import builders
from lsjax.errors import InputError

FILE = "draft_vocab.json"
STDLIB_FILES = 400  # files of the standard library a ranking reads when the checkpoint has none (~4 MB)


def ranking(tok, texts: Iterable[str]) -> np.ndarray:
    """Every token id [0, tok.vocab_size), most frequent in texts first (ties: lower id first)."""
    counts = np.zeros(tok.vocab_size, np.int64)
    for text in texts:
        np.add.at(counts, np.asarray(tok.encode(text, add_bos=False), np.int64), 1)
    return np.argsort(-counts, kind="stable").astype(np.int32)


def save(directory, ids: np.ndarray, source: str) -> Path:
    file = Path(directory) / FILE
    file.write_text(json.dumps({"source": source, "ids_by_frequency": [int(i) for i in ids]}))
    return file


def load(checkpoint) -> np.ndarray | None:
    """The ranking kept in a checkpoint directory, or None."""
    file = Path(checkpoint) / FILE
    if not file.is_file():
        return None
    try:
        return np.asarray(json.loads(file.read_text())["ids_by_frequency"], np.int32)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{file}: unreadable draft vocabulary ({type(err).__name__}: {err})") from None


def stdlib_ranking(tok, max_files: int = STDLIB_FILES) -> np.ndarray:
    texts = (text for text in map(builders.read_text, builders.stdlib_files(max_files)) if text)
    return ranking(tok, texts)


def for_checkpoint(checkpoint, tok) -> np.ndarray:
    """The checkpoint's own ranking, else one made on the standard library (said on stderr)."""
    ids = load(checkpoint) if Path(checkpoint).is_dir() else None
    if ids is None:
        print(f"note: {checkpoint} keeps no {FILE}; ranking tokens on {STDLIB_FILES} files of the Python "
              "standard library", file=sys.stderr)
        ids = stdlib_ranking(tok)
    return ids
