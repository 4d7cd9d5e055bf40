"""Training configs (ml_collections files in configs/): validated before anything compiles, then split once
into typed sections (`TrainSettings`) that the training code reads.

The allowed names come from the modules that implement them, so the checks cannot drift from the code. The
ConfigDict stays the format on the command line and on disk (a workdir's config.json, what a resume is
compared against); nothing past `TrainSettings.from_config` reads it by key.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any, Self

import jax
import numpy as np

from lsjax import data, early_exit_loss, layer_dropout, objective, shallow_deep
from lsjax.config import DTYPES, SEED_LIMIT, ConfigError, LlamaConfig, RopeScaling, require_memory

# Keys a resume may not change, because the checkpoint or the data iterator's position would no longer mean
# what it meant: the params' shapes and values (every model key but the compute dtype, remat and attention,
# which change only memory and speed), the tokenizer (ids), the dataset and how it is packed and shuffled
# (the iterator state counts rows), and the seed and global batch size (layer-dropout draws derive from
# seed, step and sample index). Everything else (steps, optimiser and schedule, LayerSkip recipe, intervals,
# mesh, export, data_dir) may change on resume; the changes are recorded.
RESUME_FROZEN = ("model.", "tokenizer.", "init_from", "data.", "train.seed", "train.batch_size")
RESUME_FREE = ("model.dtype", "model.remat", "model.attention", "data.data_dir")
# train.objective: the LayerSkip recipe, or FREE's shallow-deep loss (docs/algorithms.md)
OBJECTIVES = ("layerskip", "free")
OPTIONAL_KEYS = ("model.rope_scaling",)  # read by `model_config_from` when a config sets it


def from_file(spec: str):
    """The ConfigDict of a config file given as FILE or FILE:ARG, as on train.py's command line (for scripts
    that take train.py's configs without its flags). The file's parent's parent goes on sys.path, since config
    files import each other as `configs.base`."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise ConfigError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"lsjax_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    root = str(Path(path).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {allowed}")


def _finite(value) -> bool:
    """A finite real number (NaN compares false with everything, so range checks alone let it through)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _unknown_key(key: str, known) -> str:
    """The message for a key that is not in `known`, with the closest known name as a suggestion."""
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], [k.rsplit(".", 1)[-1] for k in known], n=1)
    return f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def check_config_keys(cfg, reference, where: str) -> None:
    """A config file must set exactly the keys of `reference` (configs/base.py's defaults), as flags must: a
    typo (`cfg.train.p_mx = 0.5`) would otherwise train with the default, and a missing key fail mid-run."""
    have, want = _flat(cfg), _flat(reference)
    unknown = sorted(k for k in have.keys() - want.keys() if not k.startswith(OPTIONAL_KEYS))
    if unknown:
        section = unknown[0].rpartition(".")[0]
        raise ConfigError(f"{where}: " + _unknown_key(unknown[0], [k for k in want if k.startswith(section)]))
    missing = sorted(want.keys() - have.keys())
    if missing:
        raise ConfigError(f"{where}: missing config key {missing[0]!r} (start from configs/base.py's get_config())")


def model_config_from(cfg) -> LlamaConfig:
    """A LlamaConfig from the `model` section of a training config (an ml_collections ConfigDict)."""
    fields = dict(cfg.model)
    scaling = fields.pop("rope_scaling", None)
    if scaling:
        fields["rope_scaling"] = RopeScaling(**dict(scaling))
    known = {f.name for f in dataclasses.fields(LlamaConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(_unknown_key(f"model.{unknown[0]}", known))
    return LlamaConfig(**fields)


# --- typed sections: what the training code reads ----------------------------------------------------------

class _Section:
    """Settings read from one config section (`SECTION`; "" for the top level), one dataclass field a key of
    the same name: a new key of that section is a new field."""

    SECTION = ""

    @classmethod
    def from_config(cls, cfg) -> Self:
        section = cfg[cls.SECTION] if cls.SECTION else cfg
        return cls(**{field.name: section[field.name] for field in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class TokenizerSettings(_Section):
    """The tokenizer: a saved one (`path`), or else one of `vocab_size` tokens trained on the corpus."""

    SECTION = "tokenizer"
    path: str
    vocab_size: int


@dataclasses.dataclass(frozen=True)
class DataSettings(_Section):
    """Where the text comes from and how it is packed (`lsjax.data.sources`, `make_batches`)."""

    SECTION = "data"
    source: str  # one of data.SOURCES
    name: str  # source tfds: the prepared dataset
    data_dir: str  # where datasets are prepared ("": TFDS's default)
    path: str  # source local_text: the folder of text files
    text_field: str  # the feature (or .jsonl field) holding the text
    max_files: int  # python_stdlib and local_text: at most this many files (0: all)
    seq_len: int
    shuffle_window: int  # packed rows are shuffled within windows of this many rows


@dataclasses.dataclass(frozen=True)
class OptimizerSettings(_Section):
    """AdamW and its learning-rate schedule (`lsjax.train.make_optimizer`); the schedule ends at `steps`."""

    SECTION = "train"
    learning_rate: float  # the peak
    warmup_steps: int
    end_lr_ratio: float  # the last step's learning rate over the peak
    weight_decay: float
    b1: float
    b2: float
    grad_clip: float  # the largest global norm of a gradient
    steps: int


@dataclasses.dataclass(frozen=True)
class MeshSettings(_Section):
    """The device mesh's (data, fsdp, tensor) sizes (-1: the rest), and whether to start JAX's multi-host
    runtime first."""

    SECTION = "mesh"
    data: int
    fsdp: int
    tensor: int
    distributed: bool

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data, self.fsdp, self.tensor


@dataclasses.dataclass(frozen=True)
class RunSettings(_Section):
    """The run's own keys of the `train` section: its length, global batch, seed, and how often it logs,
    evaluates and saves."""

    SECTION = "train"
    steps: int
    batch_size: int
    grad_accum: int
    seed: int
    loss_chunk_size: int  # also held-out evaluation's
    log_every: int
    eval_every: int
    eval_batches: int
    checkpoint_every: int
    keep_checkpoints: int
    skip_nonfinite_steps: bool


@dataclasses.dataclass(frozen=True)
class ExportSettings(_Section):
    """Where and in which dtype the trained model is written in Hugging Face format."""

    export_dir: str  # "": WORKDIR/hf
    export_dtype: str  # "": model.param_dtype


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The model a run trains, all but the tokenizer's special ids (`checkpoints.model_config` adds them):
    the `model` section's keys as `config`, or, with init_from, that checkpoint's architecture in the
    section's param_dtype, dtype, remat and attention."""

    init_from: str
    config: LlamaConfig | None  # None with init_from: the section's shape keys are not read
    param_dtype: str
    dtype: str
    remat: str
    attention: str

    @classmethod
    def from_config(cls, cfg) -> ModelSettings:
        """Also for a workdir's config.json (not validated again as a whole)."""
        if cfg.init_from:
            section = cfg.model
            return cls(cfg.init_from, None, section.param_dtype, section.dtype, section.remat, section.attention)
        config = model_config_from(cfg)
        return cls("", config, config.param_dtype, config.dtype, config.remat, config.attention)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """A training config as typed sections. The `train` section feeds three of them: the optimiser, the
    LayerSkip recipe (`objective.Recipe.from_config`) and the run's own keys."""

    model: ModelSettings
    tokenizer: TokenizerSettings
    data: DataSettings
    optimizer: OptimizerSettings
    recipe: objective.Recipe
    mesh: MeshSettings
    run: RunSettings
    export: ExportSettings

    @classmethod
    def from_config(cls, cfg) -> TrainSettings:
        """The sections of `cfg` once `validate_train_config` has passed it (or raised a one-line ConfigError)."""
        validate_train_config(cfg)
        return cls(model=ModelSettings.from_config(cfg), tokenizer=TokenizerSettings.from_config(cfg),
                   data=DataSettings.from_config(cfg), optimizer=OptimizerSettings.from_config(cfg),
                   recipe=objective.Recipe.from_config(cfg.train), mesh=MeshSettings.from_config(cfg),
                   run=RunSettings.from_config(cfg), export=ExportSettings.from_config(cfg))


def check_layer_keys(free_exit_layer: int, exits: tuple[int, ...], config: LlamaConfig) -> None:
    """The keys that name layers must name layers of the model (its config read, for an init_from model)."""
    _check(free_exit_layer < config.num_layers, "train.free_exit_layer", free_exit_layer,
           f"below model.num_layers={config.num_layers}")
    _check(all(e <= config.num_layers for e in exits), "train.exits", exits,
           f"exit layers E in [1, {config.num_layers}] (the exit after layers [0, E))")


def check_train_memory(config: LlamaConfig) -> None:
    """The params, their gradients and two Adam moments must fit in this process's devices before anything is
    allocated: a model too large for the machine is then one line, not an abort in XLA or a swap storm."""
    state_bytes = 4 * config.num_params() * np.dtype(config.jnp_param_dtype).itemsize // jax.process_count()
    require_memory(f"the train state (params, gradients and Adam moments) of a {config.num_params():,}-param model "
                   f"(hidden_size={config.hidden_size})", state_bytes, jax.local_devices())


def resume_changes(old, new) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
    """(refused, allowed): the keys whose values differ between a workdir's training config and a resuming
    run's, as {key: (old, new)}, split by whether a resume may change them (`RESUME_FROZEN`)."""
    before, after = _flat(old), _flat(new)
    changed = {key: (before.get(key), after.get(key)) for key in sorted(before.keys() | after.keys())
               if before.get(key) != after.get(key)}
    frozen = lambda key: key.startswith(RESUME_FROZEN) and key not in RESUME_FREE
    return ({k: v for k, v in changed.items() if frozen(k)}, {k: v for k, v in changed.items() if not frozen(k)})


def _flat(cfg, prefix: str = "") -> dict[str, Any]:
    """{'train.p_max': 0.1, ...} from a (nested) ConfigDict or dict; JSON-normalised (tuples become lists)."""
    out = {}
    for key, value in dict(cfg).items():
        if hasattr(value, "items"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def validate_train_config(cfg) -> None:
    """Checks a whole training config before anything compiles; raises a one-line ConfigError."""
    t, d = cfg.train, cfg.data
    _check(0.0 <= t.p_max <= 1.0, "train.p_max", t.p_max, "a number in [0, 1]")
    _check(0.0 <= t.e_scale <= 1.0, "train.e_scale", t.e_scale, "a number in [0, 1]")
    _check(t.exit_scale_shape in early_exit_loss.EXIT_SCALE_SHAPES, "train.exit_scale_shape",
           t.exit_scale_shape, f"one of {list(early_exit_loss.EXIT_SCALE_SHAPES)}")
    _check(t.layer_dropout_scale in tuple(layer_dropout.LAYER_SCALES), "train.layer_dropout_scale", t.layer_dropout_scale,
           f"one of {list(tuple(layer_dropout.LAYER_SCALES))}")
    _check(t.layer_dropout_time_scale in layer_dropout.TIME_SCALES, "train.layer_dropout_time_scale",
           t.layer_dropout_time_scale, f"one of {list(layer_dropout.TIME_SCALES)}")
    _check(t.curriculum in early_exit_loss.CURRICULA, "train.curriculum", t.curriculum,
           f"one of {list(early_exit_loss.CURRICULA)}")
    _check(isinstance(t.rotation, int) and t.rotation >= 1, "train.rotation", t.rotation, "an integer R >= 1")
    exits = tuple(t.exits)
    _check(all(isinstance(e, int) and e >= 1 for e in exits), "train.exits", exits,
           "exit layers E >= 1 (the exit after layers [0, E))")
    _check(t.curriculum != "fixed" or exits, "train.exits", exits, "at least one E with train.curriculum=fixed")
    for key in ("steps", "batch_size", "grad_accum", "loss_chunk_size", "log_every", "eval_every",
                "eval_batches", "checkpoint_every", "keep_checkpoints"):
        value = t[key]
        _check(isinstance(value, int) and value >= 1, f"train.{key}", value, "a positive integer")
    # warmup may outlast `steps`: a run raised to more steps on resume then keeps the same schedule so far
    _check(isinstance(t.warmup_steps, int) and t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps,
           "an integer >= 0")
    _check(t.batch_size % t.grad_accum == 0, "train.grad_accum", t.grad_accum,
           f"a divisor of train.batch_size={t.batch_size}")
    _check(isinstance(t.seed, int) and 0 <= t.seed < SEED_LIMIT, "train.seed", t.seed,
           "an integer in [0, 2**32)")
    for key in ("learning_rate", "grad_clip"):
        _check(_finite(t[key]) and t[key] > 0, f"train.{key}", t[key], "a finite positive number")
    _check(_finite(t.end_lr_ratio) and 0 <= t.end_lr_ratio <= 1, "train.end_lr_ratio", t.end_lr_ratio,
           "a number in [0, 1] (the final learning rate over the peak)")
    for key in ("b1", "b2"):
        _check(_finite(t[key]) and 0 <= t[key] < 1, f"train.{key}", t[key], "a number in [0, 1) (Adam's decay)")
    _check(_finite(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay", t.weight_decay,
           "a finite number >= 0")
    _check(_finite(t.self_distill_beta) and t.self_distill_beta >= 0, "train.self_distill_beta",
           t.self_distill_beta, "a finite number >= 0")
    _check(t.objective in OBJECTIVES, "train.objective", t.objective, f"one of {list(OBJECTIVES)}")
    _check(t.free_mapping in shallow_deep.MAPPINGS, "train.free_mapping", t.free_mapping,
           f"one of {list(shallow_deep.MAPPINGS)}")
    _check(_finite(t.free_alpha) and t.free_alpha >= 0, "train.free_alpha", t.free_alpha, "a finite number >= 0")
    _check(isinstance(t.free_exit_layer, int) and t.free_exit_layer >= 0, "train.free_exit_layer",
           t.free_exit_layer, "an integer S >= 0 (0: a quarter of the layers), below model.num_layers")
    for axis in ("data", "fsdp", "tensor"):
        size = cfg.mesh[axis]
        _check(isinstance(size, int) and (size >= 1 or size == -1), f"mesh.{axis}", size,
               "a positive integer, or -1 for the rest of the devices")
    _check(isinstance(d.seq_len, int) and d.seq_len >= 1, "data.seq_len", d.seq_len, "a positive integer")
    _check(d.source in data.SOURCES, "data.source", d.source, f"one of {list(data.SOURCES)}")
    _check(cfg.export_dtype in ("",) + tuple(DTYPES), "export_dtype", cfg.export_dtype,
           f"one of {list(DTYPES)} (or empty: model.param_dtype)")
    if not cfg.init_from:
        config = model_config_from(cfg)
        check_layer_keys(t.free_exit_layer, exits, config)
        _check(d.seq_len <= config.max_position_embeddings, "data.seq_len", d.seq_len,
               f"at most model.max_position_embeddings={config.max_position_embeddings}")
        check_train_memory(config)  # (an init_from model is checked once its config is read)
