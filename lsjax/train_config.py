"""Validation of training configs (ml_collections files in configs/) before anything compiles.

The allowed names come from the modules that implement them, so the checks cannot drift from the code.
"""

from __future__ import annotations

import dataclasses

from lsjax import data, early_exit, layer_dropout
from lsjax.config import DTYPES, ConfigError, LlamaConfig, RopeScaling


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {allowed}")


def model_config_from(cfg) -> LlamaConfig:
    """A LlamaConfig from the `model` section of a training config (an ml_collections ConfigDict)."""
    fields = dict(cfg.model)
    scaling = fields.pop("rope_scaling", None)
    if scaling:
        fields["rope_scaling"] = RopeScaling(**dict(scaling))
    known = {f.name for f in dataclasses.fields(LlamaConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: unknown key (expected one of {sorted(known)})")
    return LlamaConfig(**fields)


def validate_train_config(cfg) -> None:
    """Checks a whole training config before anything compiles; raises a one-line ConfigError."""
    t, d = cfg.train, cfg.data
    _check(0.0 <= t.p_max <= 1.0, "train.p_max", t.p_max, "a number in [0, 1]")
    _check(0.0 <= t.e_scale <= 1.0, "train.e_scale", t.e_scale, "a number in [0, 1]")
    _check(t.exit_scale_shape in early_exit.EXIT_SCALE_SHAPES, "train.exit_scale_shape", t.exit_scale_shape,
           f"one of {list(early_exit.EXIT_SCALE_SHAPES)}")
    _check(t.layer_dropout_scale in tuple(layer_dropout.LAYER_SCALES), "train.layer_dropout_scale", t.layer_dropout_scale,
           f"one of {list(tuple(layer_dropout.LAYER_SCALES))}")
    _check(t.layer_dropout_time_scale in layer_dropout.TIME_SCALES, "train.layer_dropout_time_scale",
           t.layer_dropout_time_scale, f"one of {list(layer_dropout.TIME_SCALES)}")
    _check(t.curriculum in early_exit.CURRICULA, "train.curriculum", t.curriculum, f"one of {list(early_exit.CURRICULA)}")
    _check(isinstance(t.rotation, int) and t.rotation >= 1, "train.rotation", t.rotation, "an integer R >= 1")
    _check(t.self_distill_beta >= 0.0, "train.self_distill_beta", t.self_distill_beta, "a number >= 0")
    for key in ("steps", "batch_size", "grad_accum", "loss_chunk_size", "log_every", "eval_every",
                "eval_batches", "checkpoint_every", "keep_checkpoints"):
        value = t[key]
        _check(isinstance(value, int) and value >= 1, f"train.{key}", value, "a positive integer")
    _check(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "an integer >= 0")
    _check(t.batch_size % t.grad_accum == 0, "train.grad_accum", t.grad_accum,
           f"a divisor of train.batch_size={t.batch_size}")
    _check(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "a positive number")
    _check(t.grad_clip > 0, "train.grad_clip", t.grad_clip, "a positive number")
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
        _check(d.seq_len <= config.max_position_embeddings, "data.seq_len", d.seq_len,
               f"at most model.max_position_embeddings={config.max_position_embeddings}")
