"""Training end to end on configs/tiny.py: the loss falls, a SIGKILLed run resumes exactly, bad configs fail early."""

import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from lsjax import hf, train_config
from lsjax.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**train_overrides):
    spec = importlib.util.spec_from_file_location("tiny", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT))
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.train.update(train_overrides)
    return cfg


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _train_command(workdir, data_dir, *flags):
    return [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "tiny.py"),
            "--workdir", str(workdir), f"--config.data.data_dir={data_dir}", *flags]


def _run(workdir, data_dir, *flags):
    return subprocess.run(_train_command(workdir, data_dir, *flags), capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    """(config, workdir, result) of one configs/tiny.py run from scratch."""
    from lsjax import train
    workdir = tmp_path_factory.mktemp("tiny")
    cfg = tiny_config()
    cfg.data.data_dir = data_dir
    return cfg, workdir, train.run(cfg, workdir)


def test_tiny_config_trains_and_loss_falls(tiny_run):
    cfg, tmp_path, result = tiny_run
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if row["event"] == "train"]
    assert losses[-1] < losses[0] - 0.5, losses
    evals = [row for row in rows if row["event"] == "eval"]
    assert evals and len(evals[-1]["layer_accuracy"]) == cfg.model.num_layers
    # held out, the last exit beats the uniform guess that a freshly initialised model makes
    assert evals[-1]["layer_loss"][-1] < np.log(cfg.model.vocab_size) - 0.1, evals[-1]["layer_loss"]
    assert (tmp_path / "plots" / "layer_loss.png").exists() and (tmp_path / "plots" / "exit_curve.png").exists()
    config, params = hf.load(result["export_dir"])
    assert config.num_layers == cfg.model.num_layers and result["step"] == cfg.train.steps


def test_a_workdir_loads_for_decoding_with_the_exported_weights(tiny_run, monkeypatch):
    """Params only (orbax is asked for no optimizer leaf), straight into the mesh's shardings, and the
    workdir is left exactly as it was."""
    from orbax.checkpoint import PyTreeCheckpointer
    from lsjax import checkpoints, sharding
    _, workdir, result = tiny_run
    before = {p: p.stat().st_mtime_ns for p in Path(workdir).rglob("*")}
    asked = []
    restore = PyTreeCheckpointer.restore
    monkeypatch.setattr(PyTreeCheckpointer, "restore",
                        lambda self, path, args: asked.append(args.item) or restore(self, path, args=args))
    mesh = sharding.make_mesh((1, 2, 1))
    config, params, tok = checkpoints.load_model(workdir, mesh=mesh)
    assert [list(item) for item in asked] == [["params"]]
    assert {leaf.sharding.mesh for leaf in jax.tree.leaves(params)} == {mesh}
    assert {p: p.stat().st_mtime_ns for p in Path(workdir).rglob("*")} == before
    exported = load_file(Path(result["export_dir"]) / hf.WEIGHTS_NAME)
    for name, tensor in hf.to_hf_tensors(config, jax.device_get(params)).items():
        np.testing.assert_array_equal(tensor, exported[name], err_msg=name)
    assert tok.vocab_size <= config.vocab_size


def test_continual_pretraining_starts_from_the_hf_checkpoint(tiny_run, tmp_path, data_dir):
    from lsjax import train
    _, _, first = tiny_run
    cfg = tiny_config(steps=2, learning_rate=1e-12, warmup_steps=0, eval_every=2)
    cfg.data.data_dir = data_dir
    cfg.init_from = first["export_dir"]
    cfg.model.num_layers = 7  # ignored: the architecture and tokenizer come from the checkpoint
    result = train.run(cfg, tmp_path)
    before, after = load_file(Path(first["export_dir"]) / hf.WEIGHTS_NAME), load_file(
        Path(result["export_dir"]) / hf.WEIGHTS_NAME)
    assert before.keys() == after.keys()
    for name in before:  # a 1e-12 learning rate moves no weight visibly
        np.testing.assert_allclose(after[name], before[name], atol=1e-6, err_msg=name)
    assert (Path(result["export_dir"]) / "tokenizer.json").read_text() == (
        Path(first["export_dir"]) / "tokenizer.json").read_text()


def test_export_dtype_writes_bfloat16_weights(tmp_path, data_dir):
    from lsjax import train
    cfg = tiny_config(steps=1, eval_every=1)
    cfg.data.data_dir = data_dir
    cfg.export_dtype = "bfloat16"
    result = train.run(cfg, tmp_path)
    weights = load_file(Path(result["export_dir"]) / hf.WEIGHTS_NAME)
    assert {t.dtype.name for t in weights.values()} == {"bfloat16"}
    assert hf.load_config(result["export_dir"]).param_dtype == "bfloat16"


def test_sigkilled_run_resumes_to_identical_params(tmp_path, data_dir):
    flags = ("--config.train.steps=16", "--config.train.checkpoint_every=4", "--config.train.eval_every=8")
    straight = _run(tmp_path / "straight", data_dir, *flags)
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(_train_command(killed_dir, data_dir, *flags), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    checkpoints = killed_dir / "checkpoints"
    while time.time() < deadline and process.poll() is None:
        done = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()] if checkpoints.exists() else []
        if done and max(done) >= 8:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "hf").exists()

    resumed = _run(killed_dir, data_dir, *flags)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step" in resumed.stderr
    a = load_file(tmp_path / "straight" / "hf" / hf.WEIGHTS_NAME)
    b = load_file(killed_dir / "hf" / hf.WEIGHTS_NAME)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_checkpoint_saved_on_one_mesh_resumes_on_another_and_on_one_device(tmp_path, data_dir):
    from lsjax import train

    def run(workdir, mesh, steps):
        cfg = tiny_config(steps=steps, checkpoint_every=2, eval_every=100)
        cfg.data.data_dir = data_dir
        cfg.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
        return train.run(cfg, workdir)

    run(tmp_path / "straight", (2, 4, 1), 4)
    run(tmp_path / "first_half", (2, 4, 1), 2)
    want = load_file(tmp_path / "straight" / "hf" / hf.WEIGHTS_NAME)
    for mesh in ((1, 1, 8), (1, 1, 1)):
        workdir = tmp_path / f"resumed_on_{'x'.join(map(str, mesh))}"
        shutil.copytree(tmp_path / "first_half", workdir)
        shutil.rmtree(workdir / "hf")
        assert run(workdir, mesh, 4)["step"] == 4
        got = load_file(workdir / "hf" / hf.WEIGHTS_NAME)
        for name in want:  # float32; another mesh sums in another order, so equal to rounding
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=f"{mesh} {name}")


def test_ctrl_c_saves_the_current_step_and_exits_130(tmp_path, data_dir):
    workdir = tmp_path / "interrupted"
    flags = ("--config.train.steps=400", "--config.train.checkpoint_every=1000", "--config.train.eval_every=1000")
    process = subprocess.Popen(_train_command(workdir, data_dir, *flags), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        rows = (workdir / "metrics.jsonl").read_text().splitlines() if (workdir / "metrics.jsonl").exists() else []
        if len(rows) >= 2:  # two log events: the loop is running
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    saved = int(stderr.split("interrupted: saved step ")[1].split()[0])
    assert saved >= 10 and (workdir / "checkpoints" / str(saved)).is_dir()


@pytest.mark.parametrize("key,value,needle", [
    ("train.p_max", 1.5, "train.p_max=1.5"),
    ("train.e_scale", -0.1, "train.e_scale=-0.1"),
    ("train.rotation", 0, "train.rotation=0"),
    ("train.layer_dropout_scale", "cubic", "train.layer_dropout_scale='cubic'"),
    ("train.curriculum", "zigzag", "train.curriculum='zigzag'"),
    ("train.exit_scale_shape", "cubic", "train.exit_scale_shape='cubic'"),
    ("train.batch_size", 0, "train.batch_size=0"),
    ("data.seq_len", -4, "data.seq_len=-4"),
    ("mesh.tensor", 0, "mesh.tensor=0"),
    ("model.remat", "sometimes", "model.remat='sometimes'"),
    ("model.attention", "flashy", "model.attention='flashy'"),
    ("train.learning_rate", float("inf"), "train.learning_rate=inf"),
    ("train.end_lr_ratio", float("nan"), "train.end_lr_ratio=nan"),
    ("train.end_lr_ratio", 1.5, "train.end_lr_ratio=1.5"),
    ("train.b1", 5.0, "train.b1=5.0"),
    ("train.b2", 1.0, "train.b2=1.0"),
    ("train.weight_decay", -100.0, "train.weight_decay=-100.0"),
    ("train.grad_clip", 0.0, "train.grad_clip=0.0"),
    ("train.warmup_steps", -1, "train.warmup_steps=-1"),
    ("train.seed", 2 ** 32, "train.seed=4294967296"),
    ("model.max_position_embeddings", 0, "model.max_position_embeddings=0"),
    ("train.exits", (0,), "train.exits=(0,)"),
    ("train.exits", (2, 99), "train.exits=(2, 99)"),
])
def test_bad_config_values_are_one_line_errors(key, value, needle):
    cfg = tiny_config()
    section, name = key.split(".")
    cfg[section][name] = value
    with pytest.raises(ConfigError) as err:
        train_config.validate_train_config(cfg)
    assert needle in str(err.value) and "expected" in str(err.value) and "\n" not in str(err.value)


def test_the_fixed_curriculum_needs_its_exits():
    cfg = tiny_config()
    cfg.train.curriculum = "fixed"
    with pytest.raises(ConfigError, match=r"train.exits=\(\): expected at least one E"):
        train_config.validate_train_config(cfg)
    cfg.train.exits = (2,)
    train_config.validate_train_config(cfg)


@pytest.mark.parametrize("hidden_size", [20000, 1_000_000_000])
def test_a_model_too_large_for_memory_is_one_line_before_anything_is_allocated(hidden_size, monkeypatch):
    """hidden_size=20000 (72 GiB of params, gradients and Adam moments) hung; 1e9 aborted in XLA."""
    monkeypatch.setattr("lsjax.config._host_available_memory", lambda: 64 * 2 ** 30)
    cfg = tiny_config()
    cfg.model.hidden_size = hidden_size
    with pytest.raises(ConfigError) as err:
        train_config.validate_train_config(cfg)
    assert f"hidden_size={hidden_size}" in str(err.value) and "GiB of memory are available" in str(err.value)


def test_a_config_file_must_set_exactly_the_base_keys():
    from configs import base
    cfg = tiny_config()
    cfg.train.p_mx = 0.5
    unknown = r"^--config x.py: unknown config key 'train.p_mx' \(did you mean 'p_max'\?\)$"
    with pytest.raises(ConfigError, match=unknown):
        train_config.check_config_keys(cfg, base.get_config(), "--config x.py")
    cfg = tiny_config()
    del cfg.data["seq_len"]
    with pytest.raises(ConfigError, match="missing config key 'data.seq_len'"):
        train_config.check_config_keys(cfg, base.get_config(), "--config x.py")
    cfg = tiny_config()
    cfg.model.rope_scaling = {"factor": 8.0}  # optional: model_config_from reads it when present
    train_config.check_config_keys(cfg, base.get_config(), "--config x.py")


def test_every_config_key_is_read_into_a_typed_section():
    """A key added to configs/base.py becomes a field of the same name in its section's class
    (`train_config.TrainSettings`); until it does, nothing in the training code reads it."""
    from configs import base
    settings = train_config.TrainSettings.from_config(tiny_config())
    read = {"init_from"} | {f"model.{f.name}" for f in dataclasses.fields(settings.model.config)}
    read |= {f.name for f in dataclasses.fields(settings.export)}
    read |= {f"train.{name}" for name in settings.recipe._fields}
    for section, typed in (("tokenizer", settings.tokenizer), ("data", settings.data), ("mesh", settings.mesh),
                           ("train", settings.optimizer), ("train", settings.run)):
        read |= {f"{section}.{f.name}" for f in dataclasses.fields(typed)}
    keys = set()
    for section, value in base.get_config().to_dict().items():
        keys |= {f"{section}.{key}" for key in value} if isinstance(value, dict) else {section}
    assert keys - read == set()


def test_resume_changes_split_what_a_checkpoint_depends_on_from_what_may_change():
    old, new = tiny_config(), tiny_config(steps=60, learning_rate=1e-4)
    new.model.update(hidden_size=128, dtype="bfloat16")
    new.data.data_dir = "/elsewhere"
    refused, allowed = train_config.resume_changes(json.loads(old.to_json()), new)
    assert refused == {"model.hidden_size": (64, 128)}
    assert allowed == {"train.steps": (30, 60), "train.learning_rate": (3e-3, 1e-4),
                       "model.dtype": ("float32", "bfloat16"), "data.data_dir": ("", "/elsewhere")}


def test_cli_exits_2_before_compiling(tmp_path, data_dir):
    result = _run(tmp_path / "bad", data_dir, "--config.train.p_max=0.2", "--config.train.curriculum=spiral")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: train.curriculum='spiral'")
    assert not (tmp_path / "bad" / "checkpoints").exists()


@pytest.mark.parametrize("flag,message", [
    ("--config.train.pmax=0.2", "error: --config.train.pmax: unknown config key 'pmax' (did you mean 'p_max'?)"),
    ("--config.train.steps=abc", "error: flag --config.train.steps=abc: invalid literal for int()"),
    ("--config=configs/no_such.py", "error: --config: [Errno 2] No such file or directory"),
    ("--config.train.b1=5", "error: train.b1=5.0: expected a number in [0, 1)"),
    ("--config.model.hidden_size=1000000000", "error: the train state (params, gradients and Adam moments) of a "),
])
def test_bad_flags_are_one_line_errors(tmp_path, data_dir, flag, message):
    result = _run(tmp_path / "flags", data_dir, flag)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("body,message", [
    ("cfg.train.p_mx = 0.5", ": unknown config key 'train.p_mx' (did you mean 'p_max'?)"),
    ("cfg.train.nope.x = 1", ":4: AttributeError: 'nope'"),
    ("del cfg.train['b1']", ": missing config key 'train.b1'"),
    ("raise ValueError('no such variant')", ":4: ValueError: no such variant"),
    ("return (", ":4: SyntaxError: "),
])
def test_config_file_errors_are_one_line_with_the_file(tmp_path, data_dir, body, message):
    config_file = tmp_path / "mine.py"
    config_file.write_text(f"from configs import base\ndef get_config():\n    cfg = base.get_config()\n    {body}\n"
                           f"    return cfg\n")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(config_file), "--workdir",
                             str(tmp_path / "w"), f"--config.data.data_dir={data_dir}"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 2 and not (tmp_path / "w" / "config.json").exists()
    assert result.stderr.strip().startswith(f"error: --config {config_file}{message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("layout,message", [
    ("file", "is a file, not a directory"),
    ("under_file", "which is a file"),
])
def test_unusable_workdirs_are_one_line_errors(tmp_path, data_dir, layout, message):
    (tmp_path / "plain").write_text("x")
    workdir = tmp_path / "plain" if layout == "file" else tmp_path / "plain" / "run"
    result = _run(workdir, data_dir)
    assert result.returncode == 2 and result.stderr.strip().startswith(f"error: --workdir {workdir}: "), result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_workdir_is_a_one_line_error(tmp_path, data_dir):
    workdir = tmp_path / "ro"
    workdir.mkdir(mode=0o555)
    result = _run(workdir, data_dir)
    assert result.returncode == 2 and "not writable" in result.stderr, result.stderr


def test_unprepared_tfds_dataset_is_a_one_line_error(tmp_path, data_dir):
    result = _run(tmp_path / "tfds", data_dir, "--config.data.source=tfds", "--config.data.name=no_such_dataset")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no_such_dataset" in last


def test_a_config_file_loads_for_scripts_as_train_py_reads_it(tmp_path):
    """train_config.from_file (the benchmarks' loader) runs FILE:ARG's get_config(ARG), with `configs.base`
    importable from a file outside the repository's own directory."""
    variant = tmp_path / "configs" / "mine.py"
    variant.parent.mkdir()
    shutil.copy(ROOT / "configs" / "base.py", variant.parent / "base.py")
    variant.write_text("from configs import base\ndef get_config(arg='a'):\n    cfg = base.get_config()\n"
                       "    cfg.train.steps = {'a': 7, 'b': 9}[arg]\n    return cfg\n")
    assert train_config.from_file(str(variant)).train.steps == 7
    assert train_config.from_file(f"{variant}:b").train.steps == 9
    with pytest.raises(ConfigError, match=r"^config file '.*no_such.py' does not exist$"):
        train_config.from_file(str(tmp_path / "no_such.py"))
