"""One loader for every checkpoint a user holds: `load_model(path) -> (config, params, tokenizer)`.

    config, params, tok = checkpoints.load_model("models/embedded")              # a Hugging Face directory
    config, params, tok = checkpoints.load_model("runs/w", mesh=mesh)             # a training workdir
    config, params, tok = checkpoints.load_model("x.gguf", dtype="bfloat16")      # a GGUF file

It reads and never writes: a training workdir gives its newest intact checkpoint's params only (no
optimizer state is read), restored straight into the target shardings, with the tokenizer that trained it.
Weights stream tensor by tensor into their shardings, so no device holds more than its shards and host
memory peaks near one tensor. A tokenizer with ids beyond the embedding, or a non-finite weight, is a
one-line error.

Training workdirs: every finished step directory gets a manifest (`seal`: size and CRC-32 of each file),
and both a resume (`lsjax.train`) and `load_model` restore through `restore_newest`: the newest step whose
files match its manifest and that restores, with one warning line for each newer step skipped and why.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from pathlib import Path
from typing import TypeVar
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from lsjax import hf, model, train_config
from lsjax import tokenizer as tokenizer_lib
from lsjax.config import LlamaConfig
from lsjax.hf import CheckpointError

T = TypeVar("T")

EMBEDDED = Path(__file__).resolve().parents[1] / "models" / "embedded"  # the model lsjax trained itself
WORKDIR_CHECKPOINTS = "checkpoints"  # a training workdir's orbax directory: <step>/state holds {params, opt_state}
WORKDIR_TOKENIZER = "tokenizer"  # where training keeps a tokenizer it trained itself
MANIFEST = "lsjax_manifest.json"  # in each step directory: {relative path: [size, crc32]} of its other files


def kind_of(path) -> str:
    """'workdir', 'hf' or 'gguf'; anything else is a one-line CheckpointError."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    if (path / WORKDIR_CHECKPOINTS).is_dir():
        return "workdir"
    if (path / "config.json").is_file():
        return "hf"
    raise CheckpointError(f"{path}: not a checkpoint (expected a Hugging Face directory with config.json, an "
                          f"lsjax training workdir with {WORKDIR_CHECKPOINTS}/, or a .gguf file)")


def load_model(path, *, dtype: str | None = None, mesh=None) -> tuple[LlamaConfig, dict, tokenizer_lib.Tokenizer]:
    """(config, params, tokenizer) from a checkpoint of any kind (see `kind_of`).

    dtype: params and compute in this dtype (default: as stored). mesh: load straight into the params'
    shardings on this mesh (default: the default device).
    """
    path = Path(path)
    if kind_of(path) == "workdir":
        config, tok = workdir_config(path)
        if dtype:
            config = config.replace(param_dtype=dtype, dtype=dtype)
        params = restore_params(path, config, mesh)
    else:
        config = load_config(path, param_dtype=dtype, dtype=dtype)
        tok = load_tokenizer(path)
        check_vocabulary(config, tok, str(path))
        params = load_params(path, config, None if mesh is None else model.param_shardings(config, mesh))
    check_finite(params, str(path))
    return config, params, tok


def check_vocabulary(config: LlamaConfig, tok: tokenizer_lib.Tokenizer, where: str) -> None:
    """The tokenizer must not produce ids the embedding has no row for (they would embed as NaN, silently)."""
    if tok.vocab_size > config.vocab_size:
        raise CheckpointError(f"{where}: the tokenizer has {tok.vocab_size} tokens but the model's embedding has "
                              f"{config.vocab_size} rows (ids >= {config.vocab_size} have no embedding)")


def check_finite(params, where: str) -> None:
    """A NaN or infinite weight decodes to empty or garbage text with no sign of trouble: refuse it."""
    finite = jax.device_get(jax.tree.map(lambda p: jnp.isfinite(p).all(), params))
    bad = [jax.tree_util.keystr(path) for path, ok in jax.tree_util.tree_leaves_with_path(finite) if not ok]
    if bad:
        raise CheckpointError(f"{where}: non-finite weights in {bad[0]}" + (f" and {len(bad) - 1} more tensors"
                                                                          if len(bad) > 1 else ""))


def _format(path):
    """The module that reads a Hugging Face directory or a GGUF file."""
    if kind_of(path) == "gguf":
        from lsjax import gguf_checkpoint
        return gguf_checkpoint
    return hf


def load_config(path, *, param_dtype: str | None = None, dtype: str | None = None) -> LlamaConfig:
    """The model config of a Hugging Face directory or GGUF file (dtypes default to the stored ones)."""
    return _format(path).load_config(path, param_dtype=param_dtype, dtype=dtype)


def load_params(path, config: LlamaConfig, shardings=None) -> dict:
    """The weights of a Hugging Face directory or GGUF file, streamed into `shardings` (a params-shaped tree
    of NamedShardings; default: the default device) in config's param dtype."""
    _, params = _format(path).load(path, param_dtype=config.param_dtype, dtype=config.dtype, shardings=shardings)
    return params


def load_tokenizer(path) -> tokenizer_lib.Tokenizer:
    """The tokenizer kept with a Hugging Face directory or GGUF file."""
    if kind_of(path) == "gguf":
        from lsjax import gguf_checkpoint
        return gguf_checkpoint.load_tokenizer(path)
    return tokenizer_lib.load(path)


def model_config(settings: train_config.ModelSettings, tok) -> LlamaConfig:
    """The one LlamaConfig of a training config's model: the init checkpoint's (with this run's dtypes, remat
    and attention), or the `model` section's with the tokenizer's special ids."""
    if settings.init_from:
        config = load_config(settings.init_from, param_dtype=settings.param_dtype, dtype=settings.dtype).replace(
            remat=settings.remat, attention=settings.attention)
    else:
        config = settings.config.replace(
            bos_token_id=tok.bos_id, eos_token_ids=tuple(tok.eos_ids) if tok.eos_ids else (), pad_token_id=tok.pad_id)
    check_vocabulary(config, tok, settings.init_from or f"model.vocab_size={config.vocab_size}")
    return config


def run_tokenizer(path: str, init_from: str, workdir) -> tokenizer_lib.Tokenizer | None:
    """The tokenizer of a training run: tokenizer.path's, the init checkpoint's, or the one the run trained
    and kept in the workdir; None before it has trained one."""
    if path:
        return tokenizer_lib.load(path)
    if init_from:
        return load_tokenizer(init_from)
    saved = Path(workdir) / WORKDIR_TOKENIZER
    return tokenizer_lib.load(saved) if (saved / "tokenizer.json").is_file() else None


def read_train_config(workdir: Path) -> ml_collections.ConfigDict:
    """The training config a workdir was run with (its config.json)."""
    file = Path(workdir) / "config.json"
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{workdir}: not an lsjax training workdir (config.json: {type(err).__name__})") from None
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), dict) for k in ("model", "tokenizer", "train")):
        raise CheckpointError(f"{file}: not an lsjax training config (expected an object with model, tokenizer "
                              f"and train sections)")
    return ml_collections.ConfigDict(raw)


def workdir_config(workdir: Path) -> tuple[LlamaConfig, tokenizer_lib.Tokenizer]:
    """The model config and tokenizer of a training workdir, rebuilt from its training config."""
    cfg = read_train_config(workdir)
    tok = run_tokenizer(cfg.tokenizer.path, cfg.init_from, workdir)
    if tok is None:
        raise CheckpointError(f"{workdir}: no tokenizer (neither tokenizer.path nor init_from in its config.json, "
                              f"nor {WORKDIR_TOKENIZER}/ in the workdir)")
    return model_config(train_config.ModelSettings.from_config(cfg), tok), tok


def step_dirs(workdir) -> dict[int, Path]:
    """{step: directory} of a workdir's finished checkpoints (orbax writes a step under a temporary name and
    renames it when complete, so a digit-only name is a finished step), newest first."""
    root = Path(workdir) / WORKDIR_CHECKPOINTS
    steps = {int(p.name): p for p in root.iterdir() if p.name.isdigit() and p.is_dir()} if root.is_dir() else {}
    return dict(sorted(steps.items(), reverse=True))


def _files(step_dir: Path) -> dict[str, Path]:
    return {p.relative_to(step_dir).as_posix(): p for p in sorted(step_dir.rglob("*"))
            if p.is_file() and not p.name.startswith(MANIFEST)}


def _crc32(file: Path) -> int:
    crc = 0
    with file.open("rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def seal(workdir) -> None:
    """Writes the manifest of every finished step that has none. Call it only while no save is in flight:
    orbax finalises and garbage-collects steps on its own threads."""
    for step_dir in step_dirs(workdir).values():
        if (step_dir / MANIFEST).exists():
            continue
        try:
            manifest = {name: [file.stat().st_size, _crc32(file)] for name, file in _files(step_dir).items()}
            temporary = step_dir / f"{MANIFEST}.tmp"
            temporary.write_text(json.dumps({"files": manifest}, indent=1))
            os.replace(temporary, step_dir / MANIFEST)  # atomic: a manifest is whole or absent
        except FileNotFoundError:  # deleted meanwhile (by hand or another process): nothing to seal
            continue


def damage(step_dir: Path) -> str | None:
    """Why a sealed step cannot be trusted (a file missing, resized or failing its checksum), or None."""
    try:
        manifest = {name: (int(size), int(crc)) for name, (size, crc) in
                    json.loads((step_dir / MANIFEST).read_text())["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"unreadable {MANIFEST} ({type(err).__name__})"
    present = _files(step_dir)
    for name, (size, _) in manifest.items():  # sizes first: cheap, and most damage changes them
        if name not in present:
            return f"{name} is missing"
        if present[name].stat().st_size != size:
            return f"{name} is {present[name].stat().st_size} bytes, {size} when saved"
    return next((f"{name} fails its checksum" for name, (_, crc) in manifest.items()
                 if _crc32(present[name]) != crc), None)


def restore_newest(workdir, restore: Callable[[int], T]) -> tuple[int, T]:
    """(step, restore(step)) for the newest step that is intact and restores. A sealed step must match its
    manifest; a step without one is tried (unverified) only while it is newer than every sealed step: the
    run stopped between orbax finishing it and sealing it. Each step skipped is one warning line naming it
    and why; when none is left, one CheckpointError line, and nothing is touched."""
    steps = step_dirs(workdir)
    if not steps:
        raise CheckpointError(f"{workdir}: a training workdir without any checkpoint yet")
    newest_sealed = max((s for s, d in steps.items() if (d / MANIFEST).exists()), default=-1)
    skipped = {}
    for step, step_dir in steps.items():
        sealed = (step_dir / MANIFEST).exists()
        problem = damage(step_dir) if sealed else None if step > newest_sealed else f"{MANIFEST} is missing"
        if problem is None:
            if not sealed:
                print(f"warning: {step_dir}: no {MANIFEST} (the run stopped before sealing it, or an older lsjax "
                      f"saved it); restoring it unverified", file=sys.stderr)
            try:
                return step, restore(step)
            except Exception as err:  # noqa: BLE001 - whatever orbax or tensorstore raise for a damaged step
                problem = f"restoring it failed ({type(err).__name__}: {_first_line(err)})"
        print(f"warning: {step_dir}: {problem}; falling back to an older step", file=sys.stderr)
        skipped[step] = problem
    raise CheckpointError(f"{workdir}: no intact checkpoint (" + "; ".join(
        f"step {step}: {why}" for step, why in skipped.items()) + "); nothing was changed")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""


def restore_params(workdir: Path, config: LlamaConfig, mesh=None, step: int | None = None) -> dict:
    """The params of a workdir's checkpoint (default: the newest intact one, see `restore_newest`), in
    config's param dtype, restored into their shardings on `mesh` (default: the default device). The optimizer
    state is not read."""
    abstract = jax.eval_shape(lambda: model.init(config, jax.random.key(0)))
    shardings = (jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
                 if mesh is None else model.param_shardings(config, mesh))
    item = {"params": jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                   shardings)}

    def restore(at: int) -> dict:
        state_dir = (Path(workdir) / WORKDIR_CHECKPOINTS / str(at) / "state").absolute()
        return ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))["params"]

    return restore(step) if step is not None else restore_newest(workdir, restore)[1]
