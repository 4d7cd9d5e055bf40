"""One loader for every checkpoint a user holds: `load_model(path) -> (config, params, tokenizer)`.

    config, params, tok = checkpoints.load_model("models/embedded")              # a Hugging Face directory
    config, params, tok = checkpoints.load_model("runs/w", mesh=mesh)             # a training workdir
    config, params, tok = checkpoints.load_model("x.gguf", dtype="bfloat16")      # a GGUF file

It reads and never writes: a training workdir gives its latest checkpoint's params only (no optimizer
state is read), restored straight into the target shardings, with the tokenizer that trained it. Weights
stream tensor by tensor into their shardings, so no device holds more than its shards and host memory
peaks near one tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

import jax
import ml_collections
import orbax.checkpoint as ocp

from lsjax import hf, model, train_config
from lsjax import tokenizer as tokenizer_lib
from lsjax.config import ConfigError, LlamaConfig
from lsjax.hf import CheckpointError

EMBEDDED = Path(__file__).resolve().parents[1] / "models" / "embedded"  # the model lsjax trained itself
WORKDIR_CHECKPOINTS = "checkpoints"  # a training workdir's orbax directory: <step>/state holds {params, opt_state}
WORKDIR_TOKENIZER = "tokenizer"  # where training keeps a tokenizer it trained itself


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


def load_model(path, *, dtype: Optional[str] = None, mesh=None) -> Tuple[LlamaConfig, dict, tokenizer_lib.Tokenizer]:
    """(config, params, tokenizer) from a checkpoint of any kind (see `kind_of`).

    dtype: params and compute in this dtype (default: as stored). mesh: load straight into the params'
    shardings on this mesh (default: the default device).
    """
    path = Path(path)
    kind = kind_of(path)
    if kind == "workdir":
        config, tok = workdir_config(path)
        if dtype:
            config = config.replace(param_dtype=dtype, dtype=dtype)
        return config, restore_params(path, config, mesh), tok
    config = load_config(path, param_dtype=dtype, dtype=dtype)
    shardings = None if mesh is None else model.param_shardings(config, mesh)
    return config, load_params(path, config, shardings), load_tokenizer(path)


def _format(path):
    """The module that reads a Hugging Face directory or a GGUF file."""
    if kind_of(path) == "gguf":
        from lsjax import gguf_checkpoint
        return gguf_checkpoint
    return hf


def load_config(path, *, param_dtype: Optional[str] = None, dtype: Optional[str] = None) -> LlamaConfig:
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


def model_config(cfg, tok) -> LlamaConfig:
    """The model a training config describes: the init checkpoint's (with this run's dtypes, remat and
    attention), or the `model` section with the tokenizer's special ids."""
    if cfg.init_from:
        return load_config(cfg.init_from, param_dtype=cfg.model.param_dtype, dtype=cfg.model.dtype).replace(
            remat=cfg.model.remat, attention=cfg.model.attention)
    config = train_config.model_config_from(cfg)
    if tok.vocab_size > config.vocab_size:
        raise ConfigError(f"model.vocab_size={config.vocab_size}: the tokenizer has {tok.vocab_size} tokens")
    return config.replace(bos_token_id=tok.bos_id, eos_token_ids=tuple(tok.eos_ids) if tok.eos_ids else (),
                          pad_token_id=tok.pad_id)


def read_train_config(workdir: Path) -> ml_collections.ConfigDict:
    """The training config a workdir was run with (its config.json)."""
    file = Path(workdir) / "config.json"
    try:
        return ml_collections.ConfigDict(json.loads(file.read_text()))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{workdir}: not an lsjax training workdir (config.json: {type(err).__name__})") from None


def workdir_config(workdir: Path) -> Tuple[LlamaConfig, tokenizer_lib.Tokenizer]:
    """The model config and tokenizer of a training workdir, rebuilt from its training config."""
    cfg = read_train_config(workdir)
    if cfg.tokenizer.path:
        tok = tokenizer_lib.load(cfg.tokenizer.path)
    elif cfg.init_from:
        tok = load_tokenizer(cfg.init_from)
    elif (Path(workdir) / WORKDIR_TOKENIZER / "tokenizer.json").is_file():
        tok = tokenizer_lib.load(Path(workdir) / WORKDIR_TOKENIZER)
    else:
        raise CheckpointError(f"{workdir}: no tokenizer (neither tokenizer.path nor init_from in its config.json, "
                              f"nor {WORKDIR_TOKENIZER}/ in the workdir)")
    return model_config(cfg, tok), tok


def latest_step(workdir: Path) -> int:
    steps = [int(p.name) for p in (Path(workdir) / WORKDIR_CHECKPOINTS).iterdir() if p.name.isdigit()
             and (p / "state").is_dir()]
    if not steps:
        raise CheckpointError(f"{workdir}: a training workdir without any checkpoint yet")
    return max(steps)


def restore_params(workdir: Path, config: LlamaConfig, mesh=None, step: Optional[int] = None) -> dict:
    """The params of a workdir's checkpoint (default: the latest), in config's param dtype, restored into their
    shardings on `mesh` (default: the default device). The optimizer state is not read."""
    step = latest_step(workdir) if step is None else step
    abstract = jax.eval_shape(lambda: model.init(config, jax.random.key(0)))
    shardings = (jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
                 if mesh is None else model.param_shardings(config, mesh))
    item = {"params": jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                   shardings)}
    state_dir = (Path(workdir) / WORKDIR_CHECKPOINTS / str(step) / "state").absolute()
    restored = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
    return restored["params"]
