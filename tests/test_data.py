"""Tests of lsjax.data and lsjax.datasets: deterministic splits, the TFDS builders (array_record, no
TensorFlow), dataset errors, and the grain pipeline's packing, process sharding, seeding and checkpoints."""

import hashlib
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest

from lsjax import data, datasets
from lsjax import tokenizer as tk

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu def return if else".split()


def _one_line_error(call, *needles):
    with pytest.raises(data.DataError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and all(needle in message for needle in needles), message
    return message


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder of 40 distinct small documents in .txt/.md/.py files."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    texts = {}
    for i in range(40):
        words = rng.choice(WORDS, size=int(rng.integers(1, 40)))
        text = f"doc {i}:\n    " + " ".join(words) + ("\n" if i % 3 else "")
        name = f"part{i % 4}/d{i:02d}{('.txt', '.md', '.py')[i % 3]}"
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
        texts[name] = text
    return folder, texts


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def prepared(corpus, data_dir):
    folder, _ = corpus
    builder = data.prepare("local_text", data_dir, folder=folder, validation_fraction=0.25)
    train = data.data_source("local_text", "train", data_dir, folder=folder, validation_fraction=0.25)
    validation = data.data_source("local_text", "validation", data_dir, folder=folder, validation_fraction=0.25)
    return builder, train, validation


@pytest.fixture(scope="module")
def tok(corpus):
    folder, texts = corpus
    return tk.train_bpe([folder / name for name in texts], 300)


def _pieces(batches, tok):
    """(input, target) pairs per document in stream order; a piece that starts with BOS opens a document."""
    documents = []
    for batch in batches:
        for row in range(len(batch["inputs"])):
            segments = batch["segment_ids"][row]
            for segment in np.unique(segments[segments > 0]):
                where = segments == segment
                inputs, targets = batch["inputs"][row][where], batch["targets"][row][where]
                if inputs[0] == tok.bos_id:
                    documents.append([])
                documents[-1] += zip(inputs.tolist(), targets.tolist())
    return documents


def _texts(batches, tok):
    return [tok.decode([i for i, _ in pairs]) for pairs in _pieces(batches, tok)]


# --- splits and builders ---------------------------------------------------------------------------------

def test_split_rule_is_sha256_of_the_key():
    for key in ("json/decoder.py", "os.py", "notes.jsonl:3", "f9.txt"):
        for fraction in (0.02, 0.5):
            below = int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) < fraction * 2**64
            assert datasets.split_of(key, fraction) == ("validation" if below else "train")
    assert datasets.split_of("f9.txt") == "validation" and datasets.split_of("os.py") == "train"  # golden


def test_stdlib_listing_has_no_tests_and_about_two_percent_validation():
    root = datasets.builders.stdlib_root()
    keys = [path.relative_to(root).as_posix() for path in datasets.stdlib_files()]
    assert len(keys) > 500 and "json/decoder.py" in keys
    assert not any(set(key.split("/")[:-1]) & {"test", "tests", "idle_test", "site-packages"} for key in keys)
    validation = [key for key in keys if datasets.split_of(key) == "validation"]
    assert 0.005 < len(validation) / len(keys) < 0.05


def test_stdlib_subset_is_built_once_with_its_files(data_dir):
    builder = data.prepare("python_stdlib", data_dir, max_files=150)
    info_file = Path(builder.data_dir) / "dataset_info.json"
    stamp = info_file.stat().st_mtime_ns
    start = time.perf_counter()
    data.prepare("python_stdlib", data_dir, max_files=150)
    assert time.perf_counter() - start < 1.0 and info_file.stat().st_mtime_ns == stamp
    assert "embedded corpus" in builder.info.description

    root = datasets.builders.stdlib_root()
    expected = {"train": [], "validation": []}
    for path in datasets.stdlib_files(max_files=150):
        text = path.read_text(encoding="utf-8")
        if text.strip():
            expected[datasets.split_of(path.relative_to(root).as_posix())].append(text)
    for split, texts in expected.items():
        source = data.data_source("python_stdlib", split, data_dir, max_files=150)
        assert sorted(source) == sorted(texts) and texts


def test_local_text_reads_text_files_and_jsonl_lines(tmp_path):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    (folder / "a.txt").write_text("plain text\n")
    (folder / "b.md").write_text("# markdown\n")
    (folder / "sub" / "c.py").write_text("print('hi')\n")
    (folder / "d.jsonl").write_text('{"body": "line one"}\n\n{"body": "line two", "x": 1}\n{"body": "line 3"}\n')
    (folder / "e.bin").write_text("not a text suffix")
    (folder / ".hidden" / "f.txt").write_text("hidden")
    (folder / "latin1.txt").write_bytes(b"caf\xe9")
    (folder / "blank.txt").write_text("  \n")
    expected = {"a.txt": "plain text\n", "b.md": "# markdown\n", "sub/c.py": "print('hi')\n",
                "d.jsonl:1": "line one", "d.jsonl:3": "line two", "d.jsonl:4": "line 3"}
    kwargs = dict(folder=folder, text_field="body", validation_fraction=0.5)
    data.prepare("local_text", tmp_path / "tfds", **kwargs)
    for split in datasets.SPLITS:
        texts = sorted(data.data_source("local_text", split, tmp_path / "tfds", **kwargs))
        assert texts == sorted(text for key, text in expected.items() if datasets.split_of(key, 0.5) == split)


def test_local_text_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": 3}\n')
    _one_line_error(lambda: data.prepare("local_text", tmp_path / "tfds", folder=tmp_path),
                    "bad.jsonl:2", "'text'")
    _one_line_error(lambda: data.prepare("local_text", tmp_path, folder=tmp_path / "missing"), "not a directory")
    (tmp_path / "bad.jsonl").unlink()
    (tmp_path / "one.txt").write_text("a single document")
    _one_line_error(lambda: data.prepare("local_text", tmp_path / "tfds", folder=tmp_path), "validation split")
    _one_line_error(lambda: data.prepare("local_text", tmp_path / "tfds", folder=tmp_path, validation_fraction=1.0),
                    "validation_fraction=1.0")
    _one_line_error(lambda: data.prepare("local_text", tmp_path / "tfds", folder=tmp_path, colour="red"), "colour")


def test_unprepared_datasets_are_one_line_errors(tmp_path):
    start = time.perf_counter()
    _one_line_error(lambda: data.data_source("no_such_dataset", "train", tmp_path),
                    "no_such_dataset", str(tmp_path), "not prepared")
    _one_line_error(lambda: data.data_source("python_stdlib", "train", tmp_path, max_files=3),
                    "python_stdlib", str(tmp_path), "not prepared", "prepare(")
    assert time.perf_counter() - start < 2.0


def test_prepared_dataset_loads_by_tfds_name(prepared, data_dir):
    builder, train, _ = prepared
    name = f"{builder.name}/{builder.builder_config.name}:1.0.0"  # read from its files, as any TFDS dataset
    assert list(data.data_source(name, "train", data_dir)) == list(train) and len(train) > 20
    _one_line_error(lambda: data.data_source(name, "test", data_dir), "'test'", "validation")
    _one_line_error(lambda: data.data_source(name, "train", data_dir, text_feature="body"), "'body'")


def test_corpus_files_hold_the_train_split_only(prepared, corpus, data_dir):
    _, train, _ = prepared
    kwargs = dict(folder=corpus[0], validation_fraction=0.25)
    files = data.corpus_files("local_text", data_dir, **kwargs)
    assert "".join(f.read_text(encoding="utf-8") for f in files) == "".join(text + "\n" for text in train)
    stamp = files[0].stat().st_mtime_ns
    assert data.corpus_files("local_text", data_dir, **kwargs) == files and files[0].stat().st_mtime_ns == stamp


# --- batches ------------------------------------------------------------------------------------------------

def test_packing_reproduces_documents_with_consistent_fields(prepared, tok):
    _, train, _ = prepared
    batches = list(data.make_batches(train, tok, seq_len=16, global_batch_size=1, seed=0, shuffle=False,
                                     num_epochs=1))
    for batch in batches:
        assert {k: (v.dtype.name, v.shape) for k, v in batch.items()} == {
            "inputs": ("int32", (1, 16)), "targets": ("int32", (1, 16)), "segment_ids": ("int32", (1, 16)),
            "positions": ("int32", (1, 16)), "loss_mask": ("float32", (1, 16))}
        segments, positions = batch["segment_ids"][0], batch["positions"][0]
        np.testing.assert_array_equal(batch["loss_mask"][0], segments > 0)
        real = segments > 0
        assert real[: real.sum()].all()  # padding only at the end
        for t in range(1, 16):
            if segments[t] == segments[t - 1] and real[t]:
                assert positions[t] == positions[t - 1] + 1
                assert batch["targets"][0][t - 1] == batch["inputs"][0][t]  # shifted by one
            elif real[t]:
                assert positions[t] == 0 and segments[t] == segments[t - 1] + 1
        assert positions[0] == 0 and segments[0] == 1
    assert (batches[-1]["segment_ids"] == 0).any()  # the finite stream ends with padding

    documents = _pieces(batches, tok)
    assert len(documents) == len(train)
    for pairs, text in zip(documents, train):
        inputs = [i for i, _ in pairs]
        assert inputs + [pairs[-1][1]] == tok.encode(text, add_bos=True, add_eos=True)
        assert [t for _, t in pairs[:-1]] == inputs[1:]
        assert tok.decode(inputs) == text


def test_processes_read_disjoint_documents_that_cover_the_stream(prepared, tok):
    _, train, _ = prepared
    common = dict(seq_len=16, seed=3, num_epochs=1)
    single = _texts(data.make_batches(train, tok, global_batch_size=1, **common), tok)
    assert sorted(single) == sorted(train)
    for index in range(2):
        batches = list(data.make_batches(train, tok, global_batch_size=2, process_index=index, process_count=2,
                                         **common))
        assert all(len(batch["inputs"]) == 1 for batch in batches)
        assert _texts(batches, tok) == single[index::2]


def test_shuffle_is_seeded_and_differs_between_epochs(prepared, tok):
    _, train, _ = prepared

    def order(seed):
        return _texts(data.make_batches(train, tok, seq_len=32, global_batch_size=1, seed=seed, num_epochs=2), tok)

    first = order(0)
    assert first == order(0) and first != order(1)
    n = len(train)
    assert sorted(first[:n]) == sorted(first[n:]) == sorted(train) and first[:n] != first[n:]


def test_shuffle_window_permutes_rows_within_windows(prepared, tok):
    _, train, _ = prepared
    rows = lambda window: [tuple(row) for batch in itertools.islice(data.make_batches(
        train, tok, seq_len=8, global_batch_size=4, seed=2, shuffle_window=window), 12) for row in batch["inputs"]]
    plain, shuffled = rows(0), rows(16)
    assert shuffled != plain and shuffled == rows(16)
    for start in range(0, 48, 16):  # each window of 16 rows holds the same rows, in another order
        assert sorted(shuffled[start:start + 16]) == sorted(plain[start:start + 16])


@pytest.mark.parametrize("window", [0, 16])
def test_restored_iterator_gives_the_same_next_batches(prepared, tok, window):
    _, train, _ = prepared
    kwargs = dict(seq_len=8, global_batch_size=2, seed=1, shuffle_window=window)
    batches = data.make_batches(train, tok, **kwargs)
    states, seen = [], []
    for _ in range(40):
        states.append(json.dumps(batches.get_state()))
        seen.append(next(batches))
    for step in (0, 1, 5, 13, 20, 27, 34):
        resumed = data.make_batches(train, tok, **kwargs)
        resumed.set_state(json.loads(states[step]))
        for expected in seen[step:step + 5]:
            got = next(resumed)
            for key in data.FIELDS:
                np.testing.assert_array_equal(got[key], expected[key])


def test_eval_batches_are_finite_deterministic_and_padded(prepared, tok):
    _, _, validation = prepared
    kwargs = dict(seq_len=16, global_batch_size=4)
    one_pass = list(data.eval_batches(validation, tok, **kwargs))
    assert _texts(one_pass, tok) == list(validation)
    assert all(batch["inputs"].shape == (4, 16) for batch in one_pass)
    again = list(data.eval_batches(validation, tok, **kwargs))
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(one_pass, again) for k in data.FIELDS)

    longer = list(data.eval_batches(validation, tok, num_batches=len(one_pass) + 2, **kwargs))
    assert len(longer) == len(one_pass) + 2 and not longer[-1]["loss_mask"].any()
    assert longer[-1]["loss_mask"].dtype == np.float32
    assert len(list(data.eval_batches(validation, tok, num_batches=1, **kwargs))) == 1

    halves = [_texts(data.eval_batches(validation, tok, process_index=i, process_count=2, **kwargs), tok)
              for i in range(2)]
    assert halves == [list(validation)[0::2], list(validation)[1::2]]


def test_bad_pipeline_arguments_are_one_line_errors(prepared, tok):
    _, train, _ = prepared
    make = lambda **kw: data.make_batches(train, tok, **{**dict(seq_len=8, global_batch_size=4, seed=0), **kw})
    _one_line_error(lambda: make(global_batch_size=3, process_count=2), "global_batch_size=3")
    _one_line_error(lambda: make(process_index=2, process_count=2), "process_index=2")
    _one_line_error(lambda: make(seq_len=0), "seq_len=0")
    _one_line_error(lambda: make(seed=-1), "seed=-1")
    _one_line_error(lambda: data.prepare("mnist", "/nonexistent"), "mnist", "tfds build")
