"""Fault injection on configs/tiny.py runs: damaged checkpoints, two trainers on one workdir, a resume that
changes the model, divergence. Each ends as docs/robustness.md says, with nothing lost.

One uninterrupted reference run (12 steps, a checkpoint every 2, all kept) is copied and damaged per test.
Every run compiles the same few programs, so a persistent compilation cache, shared with the train.py
subprocesses, compiles each once. A SIGKILL during writes is test_train.py's
test_sigkilled_run_resumes_to_identical_params.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache
from safetensors.numpy import load_file

from lsjax import checkpoints, hf, train, workdir as workdir_lib
from lsjax.config import ConfigError
from lsjax.hf import CheckpointError

from tests.test_train import ROOT, _train_command, tiny_config

STEPS = dict(steps=12, checkpoint_every=2, keep_checkpoints=6, eval_every=1000, log_every=4)
STEP_FLAGS = tuple(f"--config.train.{key}={value}" for key, value in STEPS.items())


def damage(step_dir: Path, how: str) -> None:
    """One way a step directory gets damaged on a disk, by a full disk or by hand."""
    arrays = max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
                 key=lambda p: p.stat().st_size)  # the array data file (params and both Adam moments)
    if how == "truncate":
        arrays.write_bytes(arrays.read_bytes()[: arrays.stat().st_size // 2])
    elif how == "zero":
        arrays.write_bytes(bytes(arrays.stat().st_size))
    elif how == "no_metadata":
        (step_dir / "state" / "_METADATA").unlink()
    elif how == "no_checkpoint_metadata":
        (step_dir / "_CHECKPOINT_METADATA").unlink()
    elif how == "flip":  # 64 bytes near the end: the optimizer's moments, which restore without complaint
        data = bytearray(arrays.read_bytes())
        data[-4096:-4032] = bytes(b ^ 0xFF for b in data[-4096:-4032])
        arrays.write_bytes(bytes(data))


DAMAGE = ("truncate", "zero", "no_metadata", "no_checkpoint_metadata", "flip")


@pytest.fixture(scope="module", autouse=True)
def compilation_cache_dir(tmp_path_factory):
    """A persistent compilation cache for this module and the commands it spawns; off again afterwards."""
    directory = str(tmp_path_factory.mktemp("jax_cache"))
    settings = {"jax_compilation_cache_dir": directory, "jax_persistent_cache_min_compile_time_secs": 0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    before = {key: getattr(jax.config, key) for key in settings}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in settings.items():
            jax.config.update(key, value)
            patch.setenv(key.upper(), str(value))
        compilation_cache.reset_cache()
        yield directory
    for key, value in before.items():
        jax.config.update(key, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def config(data_dir, **train_overrides):
    cfg = tiny_config(**{**STEPS, **train_overrides})
    cfg.data.data_dir = data_dir
    return cfg


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """The workdir of an uninterrupted 12-step run: steps 2, 4, ..., 12 sealed, the model exported."""
    workdir = tmp_path_factory.mktemp("reference")
    train.run(config(data_dir), workdir)
    return workdir


def copy_of(reference, directory: Path) -> Path:
    shutil.copytree(reference, directory, ignore=shutil.ignore_patterns("hf"))
    return directory


def weights(workdir: Path):
    return load_file(Path(workdir) / "hf" / hf.WEIGHTS_NAME)


def snapshot(directory: Path):
    """Every path with its size and modification time, but the lock file (which a run rewrites with its pid)."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(directory).rglob("*")
            if p.name != workdir_lib.LOCK_FILE}


def warnings_in(text: str):
    return [line for line in text.splitlines() if line.startswith("warning: ")]


def test_a_resume_falls_back_past_every_kind_of_damage_to_identical_params(reference, data_dir, tmp_path, capfd):
    """Steps 12 .. 4 each damaged another way: the resume names each in one warning line, starts from step 2,
    moves the damaged steps aside and ends bit-identical to the uninterrupted run."""
    workdir = copy_of(reference, tmp_path / "w")
    for step, how in zip((12, 10, 8, 6, 4), DAMAGE):
        damage(workdir / "checkpoints" / str(step), how)
    capfd.readouterr()
    train.run(config(data_dir), workdir)
    err = capfd.readouterr().err
    skipped = [line for line in warnings_in(err) if "falling back" in line]
    assert [int(line.split("/checkpoints/")[1].split(":")[0]) for line in skipped] == [12, 10, 8, 6, 4], err
    assert "resumed from step 2" in err
    assert sorted(int(p.name) for p in (workdir / train.DAMAGED_CHECKPOINTS).iterdir()) == [4, 6, 8, 10, 12]
    assert all(checkpoints.damage(d) is None for d in checkpoints.step_dirs(workdir).values())
    want, got = weights(reference), weights(workdir)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    resumes = [json.loads(line) for line in (workdir / train.METRICS_FILE).read_text().splitlines()
               if json.loads(line)["event"] == "resume"]
    assert resumes == [{"event": "resume", "step": 2, "changed": {}}]


@pytest.mark.parametrize("how", DAMAGE)
def test_decoding_a_damaged_workdir_falls_back_and_writes_nothing(reference, tmp_path, capfd, how):
    workdir = copy_of(reference, tmp_path / "w")
    damage(workdir / "checkpoints" / "12", how)
    before = snapshot(workdir)
    capfd.readouterr()
    config_, params, _ = checkpoints.load_model(workdir)
    lines = warnings_in(capfd.readouterr().err)
    assert len(lines) == 1 and "checkpoints/12:" in lines[0] and "falling back" in lines[0], lines
    want = checkpoints.restore_params(reference, config_, step=10)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(want))
    assert snapshot(workdir) == before


def test_no_intact_step_is_one_line_and_changes_nothing(reference, data_dir, tmp_path, capfd):
    workdir = copy_of(reference, tmp_path / "w")
    for step_dir in checkpoints.step_dirs(workdir).values():
        damage(step_dir, "zero")
    before = snapshot(workdir)
    for attempt in (lambda: train.run(config(data_dir), workdir), lambda: checkpoints.load_model(workdir)):
        with pytest.raises(CheckpointError) as err:
            attempt()
        assert "no intact checkpoint" in str(err.value) and "\n" not in str(err.value)
        assert snapshot(workdir) == before


def test_a_resume_that_changes_the_model_is_refused_and_the_record_kept(reference, data_dir, tmp_path):
    workdir = copy_of(reference, tmp_path / "w")
    recorded = (workdir / "config.json").read_text()
    before = snapshot(workdir)
    cfg = config(data_dir)
    cfg.model.hidden_size = 128
    cfg.tokenizer.vocab_size = 1024
    with pytest.raises(ConfigError) as err:
        train.run(cfg, workdir)
    message = str(err.value)
    assert "model.hidden_size (64 -> 128)" in message and "tokenizer.vocab_size (512 -> 1024)" in message
    assert "\n" not in message
    assert (workdir / "config.json").read_text() == recorded and snapshot(workdir) == before
    checkpoints.load_model(workdir)  # still decodes


def test_a_second_trainer_exits_2_within_a_second(reference, data_dir, tmp_path):
    workdir = copy_of(reference, tmp_path / "w")
    with workdir_lib.locked(workdir):
        for _ in range(3):
            start = time.perf_counter()
            result = subprocess.run(_train_command(workdir, data_dir, *STEP_FLAGS), capture_output=True, text=True,
                                    cwd=ROOT, timeout=60)
            seconds = time.perf_counter() - start
            assert result.returncode == 2 and seconds < 1.0, (seconds, result.stderr[-2000:])
            assert result.stderr.startswith(f"error: --workdir {workdir}: another run (pid {os.getpid()})")
            assert len(result.stderr.strip().splitlines()) == 1


def test_two_trainers_started_together_one_trains_one_exits_2(reference, data_dir, tmp_path):
    """Both resume a copy whose step 12 is gone, one with a changed log interval (recorded)."""
    workdir = copy_of(reference, tmp_path / "w")
    shutil.rmtree(workdir / "checkpoints" / "12")
    command = _train_command(workdir, data_dir, *STEP_FLAGS, "--config.train.log_every=2")
    started = time.perf_counter()
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    ended = {}
    while len(ended) < 2 and time.perf_counter() - started < 300:
        for i, process in enumerate(processes):
            if i not in ended and process.poll() is not None:
                ended[i] = time.perf_counter() - started
        time.sleep(0.02)
    codes = [process.wait(timeout=10) for process in processes]
    errors = [process.stderr.read() for process in processes]
    assert sorted(codes) == [0, 2], errors
    loser = codes.index(2)
    assert ended[loser] < 1.0 and len(errors[loser].strip().splitlines()) == 1, (ended, errors[loser])
    assert "another run" in errors[loser] and "resumed from step 10" in errors[1 - loser]
    want, got = weights(reference), weights(workdir)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    rows = [json.loads(line) for line in (workdir / train.METRICS_FILE).read_text().splitlines()]
    assert [row for row in rows if row["event"] == "resume"] == [
        {"event": "resume", "step": 10, "changed": {"train.log_every": [4, 2]}}]
    assert json.loads((workdir / "config.json").read_text())["train"]["log_every"] == 2


def test_divergence_exits_3_keeping_the_last_good_checkpoint_and_exporting_nothing(reference, data_dir, tmp_path):
    workdir = tmp_path / "diverged"
    result = subprocess.run(_train_command(workdir, data_dir, "--config.train.steps=8", "--config.train.log_every=8",
                                           "--config.train.checkpoint_every=2", "--config.train.learning_rate=1e9",
                                           f"--config.tokenizer.path={reference / 'tokenizer'}"),
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 3, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step ") and "not finite" in last, last
    first_bad = int(last.split()[2].rstrip(":"))
    saved = checkpoints.step_dirs(workdir)
    assert saved and max(saved) < first_bad and f"checkpoint {max(saved)} holds the last good state" in last
    assert all(checkpoints.damage(d) is None for d in saved.values())
    _, params, _ = checkpoints.load_model(workdir)  # restores, and every weight is finite
    assert not (workdir / "hf").exists()


def test_skip_nonfinite_steps_drops_the_updates_and_counts_them(reference, data_dir, tmp_path):
    cfg = config(data_dir, steps=6, log_every=3, checkpoint_every=3, learning_rate=1e9, skip_nonfinite_steps=True)
    cfg.tokenizer.path = str(reference / "tokenizer")
    workdir = tmp_path / "skipping"
    result = train.run(cfg, workdir)
    rows = [json.loads(line) for line in (workdir / train.METRICS_FILE).read_text().splitlines()]
    skipped = [row["skipped_steps"] for row in rows if row["event"] == "train"]
    assert skipped == [1, 3], skipped  # step 3 is the first non-finite one; with its update dropped, so are 4-6
    config_, _, _ = checkpoints.load_model(workdir)
    at_3, at_6 = (jax.device_get(checkpoints.restore_params(workdir, config_, step=s)) for s in (3, 6))
    jax.tree.map(np.testing.assert_array_equal, at_3, at_6)
    assert all(np.isfinite(t).all() for t in weights(workdir).values()) and result["step"] == 6
