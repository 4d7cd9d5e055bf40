"""TFDS builders of lsjax's local text corpora: one `text` feature, splits train and validation.

Both builders split documents by a SHA-256 of its key (never Python's salted `hash()`), so a document lands in
the same split on every machine, run and Python version, and adding files never moves the others. A
document is a whole file (key: its path relative to the root, with '/') or one JSONL line (key: path:line).
Files that are not UTF-8 or hold only whitespace are skipped: there is nothing to learn from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import tensorflow_datasets as tfds

from lsjax.errors import InputError

SPLITS = ("train", "validation")
VALIDATION_FRACTION = 0.02
# Path components that hold tests or third-party code, not the standard library itself.
STDLIB_EXCLUDED = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
LOCAL_SUFFIXES = (".txt", ".md", ".py", ".jsonl")


class DataError(InputError):
    """A corpus, dataset or pipeline argument is unusable; the message is one line naming it."""


def split_of(key: str, validation_fraction: float = VALIDATION_FRACTION) -> str:
    """'validation' for about `validation_fraction` of keys, else 'train', stable across runs and machines."""
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return "validation" if digest < validation_fraction * 2**64 else "train"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(max_files: int | None = None) -> list[Path]:
    """The running interpreter's standard library .py files, sorted, without tests and site-packages."""
    return _walk(stdlib_root(), (".py",), STDLIB_EXCLUDED, max_files)


def _walk(root: Path, suffixes, excluded, max_files: int | None) -> list[Path]:
    """Files under root with one of the suffixes, sorted; excluded and hidden folders are never entered."""
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in excluded and not d.startswith(".")]
        files += [Path(folder, n) for n in names if n.endswith(suffixes) and not n.startswith(".")]
    files.sort()
    return files[:max_files] if max_files else files


def read_text(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.strip() else None


@dataclasses.dataclass
class TextConfig(tfds.core.BuilderConfig):
    """Where the documents come from; the config name encodes all of it, so each variant has its own folder."""

    root: str = ""
    max_files: int | None = None
    text_field: str = "text"
    validation_fraction: float = VALIDATION_FRACTION


class _TextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared generation: list the files, check both splits are non-empty, write each split's documents."""

    VERSION = tfds.core.Version("1.0.0")
    SUFFIXES: tuple[str, ...] = ()
    EXCLUDED: frozenset[str] = frozenset()

    def __init__(self, *, config: TextConfig, arguments: dict, data_dir: str | None):
        """`arguments`: the subclass's own constructor arguments, which unpickling passes back to it."""
        super().__init__(config=config, file_format="array_record", data_dir=data_dir)
        # TFDS pickles a builder as its constructor arguments (worker processes unpickle data sources).
        self._original_state = {**arguments, "data_dir": data_dir}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=self.builder_config.description,
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        )

    def _documents(self) -> Iterator[tuple[str, str]]:
        config = self.builder_config
        root = Path(config.root)
        for path in _walk(root, self.SUFFIXES, self.EXCLUDED, config.max_files):
            key = path.relative_to(root).as_posix()
            if path.suffix == ".jsonl":
                yield from _jsonl_documents(path, key, config.text_field)
            elif (text := read_text(path)) is not None:
                yield key, text

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        fraction = self.builder_config.validation_fraction
        counts = Counter(split_of(key, fraction) for key, _ in self._documents())
        for split in SPLITS:
            if not counts[split]:
                raise DataError(f"{self.name}/{self.builder_config.name} ({self.builder_config.root}): the {split} "
                                f"split would be empty ({counts.total()} documents, validation_fraction={fraction}); "
                                "add documents (max_files) or change validation_fraction")
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        fraction = self.builder_config.validation_fraction
        for key, text in self._documents():
            if split_of(key, fraction) == split:
                yield key, {"text": text}


def _jsonl_documents(path: Path, key: str, field: str) -> Iterator[tuple[str, str]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)[field]
            except (json.JSONDecodeError, TypeError, KeyError) as e:
                raise DataError(f"{path}:{number}: expected a JSON object with a string field {field!r} "
                                f"({type(e).__name__})") from None
            if not isinstance(text, str):
                raise DataError(f"{path}:{number}: field {field!r} is a {type(text).__name__}, expected a string")
            if text.strip():
                yield f"{key}:{number}", text


def _check_options(max_files: int | None, validation_fraction: float) -> None:
    if not 0.0 < validation_fraction < 1.0:
        raise DataError(f"validation_fraction={validation_fraction}: expected a number in (0, 1)")
    if max_files is not None and max_files < 1:
        raise DataError(f"max_files={max_files}: expected a positive integer or None")


def _fraction_suffix(validation_fraction: float) -> str:
    return "" if validation_fraction == VALIDATION_FRACTION else f"-val{validation_fraction:g}"


class PythonStdlib(_TextBuilder):
    """The embedded corpus: the running interpreter's standard library source, one example per .py file."""

    SUFFIXES = (".py",)
    EXCLUDED = STDLIB_EXCLUDED

    def __init__(self, *, max_files: int | None = None, validation_fraction: float = VALIDATION_FRACTION,
                 data_dir: str | None = None):
        _check_options(max_files, validation_fraction)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        name = f"py{version}" + (f"-first{max_files}" if max_files else "") + _fraction_suffix(validation_fraction)
        description = (f"lsjax's embedded corpus: the Python {version} standard library source ({stdlib_root()}), "
                       "one example per .py file keyed by its relative path, without test folders and "
                       f"site-packages; validation = SHA-256(key) below {validation_fraction:g} of the range")
        config = TextConfig(name=name, description=description, root=str(stdlib_root()), max_files=max_files,
                            validation_fraction=validation_fraction)
        arguments = dict(max_files=max_files, validation_fraction=validation_fraction)
        super().__init__(config=config, arguments=arguments, data_dir=data_dir)


class LocalText(_TextBuilder):
    """A local folder of .txt/.md/.py files (one example each) and .jsonl files (one example per line).

    The config name is the folder's name plus a digest of its absolute path, the options and every file's
    path, size and mtime: a changed folder is a new dataset, never a stale one.
    """

    SUFFIXES = LOCAL_SUFFIXES

    def __init__(self, *, folder: str | Path, text_field: str = "text", max_files: int | None = None,
                 validation_fraction: float = VALIDATION_FRACTION, data_dir: str | None = None):
        _check_options(max_files, validation_fraction)
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise DataError(f"local_text folder {folder}: not a directory")
        files = _walk(root, self.SUFFIXES, self.EXCLUDED, max_files)
        if not files:
            raise DataError(f"local_text folder {root}: no {'/'.join(self.SUFFIXES)} files in it")
        stats = [(p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        digest = hashlib.sha256(json.dumps([str(root), text_field, max_files, validation_fraction, stats]).encode())
        slug = re.sub(r"[^a-z0-9_]+", "_", root.name.lower()).strip("_") or "folder"
        description = (f"text files under {root} (.txt/.md/.py: one example per file; .jsonl: one per line, field "
                       f"{text_field!r}); validation = SHA-256(key) below {validation_fraction:g} of the range")
        config = TextConfig(name=f"{slug}-{digest.hexdigest()[:12]}", description=description, root=str(root),
                            max_files=max_files, text_field=text_field, validation_fraction=validation_fraction)
        arguments = dict(folder=folder, text_field=text_field, max_files=max_files,
                         validation_fraction=validation_fraction)
        super().__init__(config=config, arguments=arguments, data_dir=data_dir)
