"""Typed model configuration and its validation.

`LlamaConfig` is frozen and hashable so that it can be a static argument of jitted functions: everything
that changes the compiled program (shapes, dtypes, rope constants) lives here, nothing traced does.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Any
from collections.abc import Sequence

import jax.numpy as jnp

from lsjax.errors import InputError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
SEED_LIMIT = 2 ** 32  # jax.random.key keeps 32 bits of a seed: larger seeds repeat smaller ones
# What the backward pass keeps of each layer (`model.REMAT_POLICIES`): everything, only the layer's input,
# the input and the weight matmuls' outputs, or those matmuls' outputs moved to host memory.
REMAT = ("none", "full", "dots", "offload")
# How attention is computed (`lsjax.attention`): auto picks by backend and size; all give the same values.
ATTENTION = ("auto", "xla", "blockwise", "flash")


class ConfigError(InputError):
    """A configuration value is outside what lsjax supports; the message names the key and the allowed values."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3 rotary frequency scaling (`rope_type: llama3` in Hugging Face configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        for key in ("factor", "low_freq_factor", "high_freq_factor"):
            if not _is_number(getattr(self, key)) or getattr(self, key) <= 0:
                raise ConfigError(f"model.rope_scaling.{key}={getattr(self, key)!r}: expected a positive number")
        if not _is_int(self.original_max_position_embeddings) or self.original_max_position_embeddings < 1:
            raise ConfigError(f"model.rope_scaling.original_max_position_embeddings="
                              f"{self.original_max_position_embeddings!r}: expected a positive integer")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture of a Llama 2 / 3 / 3.2 decoder.

    `param_dtype` is the storage dtype of the weights, `dtype` the compute dtype of activations and matmuls;
    attention softmax, norms and returned logits are always float32. `remat` says how much of each layer
    the backward pass recomputes instead of storing, `attention` which implementation computes attention
    (both change memory and time, never the values).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: int | None = 1
    eos_token_ids: tuple[int, ...] = (2,)
    pad_token_id: int | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: str = "none"
    attention: str = "auto"

    def __post_init__(self):
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // max(self.num_heads, 1))
        object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))
        self.validate()

    def validate(self) -> None:
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                    "num_kv_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"model.{key}={value!r}: expected a positive integer")
        for key in ("bos_token_id", "pad_token_id"):
            value = getattr(self, key)
            if value is not None and (not _is_int(value) or value < 0):
                raise ConfigError(f"model.{key}={value!r}: expected a token id (an integer >= 0) or None")
        if not all(_is_int(i) and i >= 0 for i in self.eos_token_ids):
            raise ConfigError(f"model.eos_token_ids={self.eos_token_ids!r}: expected token ids (integers >= 0)")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ConfigError(f"model.tie_word_embeddings={self.tie_word_embeddings!r}: expected true or false")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ConfigError(f"model.rope_scaling={self.rope_scaling!r}: expected llama3 scaling settings or None")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"model.num_kv_heads={self.num_kv_heads}: must divide num_heads={self.num_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"model.head_dim={self.head_dim}: rotary embeddings need an even head_dim")
        for key in ("param_dtype", "dtype"):
            if getattr(self, key) not in DTYPES:
                raise ConfigError(f"model.{key}={getattr(self, key)!r}: expected one of {sorted(DTYPES)}")
        if self.attention not in ATTENTION:
            raise ConfigError(f"model.attention={self.attention!r}: expected one of {list(ATTENTION)}")
        if self.remat not in REMAT:
            raise ConfigError(f"model.remat={self.remat!r}: expected one of {list(REMAT)}")
        for key in ("rope_theta", "rms_norm_eps"):
            if not _is_number(getattr(self, key)) or getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}={getattr(self, key)!r}: expected a positive number")

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]

    @property
    def jnp_param_dtype(self):
        return DTYPES[self.param_dtype]

    def replace(self, **changes) -> LlamaConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Number of weights, counting a tied embedding once."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.num_layers * layer + d + head


def _is_int(value) -> bool:
    """An integer (NumPy's too), but not a bool: JSON's `true` must not pass as a size or token id."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite real number, not a bool (NaN or inf would poison every activation)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# Fields of a Hugging Face config.json that lsjax reads, by the JSON types it accepts (None: absent or null).
_HF_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "bos_token_id", "pad_token_id")
_HF_NUMBERS = ("rms_norm_eps", "rope_theta")
_HF_OBJECTS = ("rope_scaling", "rope_parameters")


def check_hf_types(raw: Any, where: str) -> None:
    """A one-line ConfigError unless a parsed config.json is an object whose Llama fields have JSON types lsjax
    can read: `"max_position_embeddings": "abc"` or `"rope_scaling": "llama3"` would otherwise fail deep in the
    conversion with a traceback, and `"eos_token_id": "2"` would never match a generated id."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON object of model fields, got a {type(raw).__name__}")
    expected = {**{key: (_is_int, "an integer") for key in _HF_INTS},
                **{key: (_is_number, "a number") for key in _HF_NUMBERS},
                **{key: (lambda v: isinstance(v, dict), "an object") for key in _HF_OBJECTS},
                "tie_word_embeddings": (lambda v: isinstance(v, bool), "true or false"),
                "eos_token_id": (lambda v: _is_int(v) or (isinstance(v, list) and all(map(_is_int, v))),
                                 "a token id or a list of token ids")}
    for key, (ok, allowed) in expected.items():
        if raw.get(key) is not None and not ok(raw[key]):
            raise ConfigError(f"{where}: {key}={raw[key]!r}: expected {allowed}")


# --- memory bounds: checked before anything is allocated, so that an impossible size is one line, not an abort

def available_memory(devices: Sequence) -> int | None:
    """Bytes that `devices` can still allocate: free accelerator memory summed over devices, or for CPU devices
    (which share the host's memory) the host's available memory; None where the runtime does not say."""
    if all(d.platform == "cpu" for d in devices):
        return _host_available_memory()
    stats = [d.memory_stats() for d in devices]
    if not all(s and "bytes_limit" in s for s in stats):
        return None
    return sum(s["bytes_limit"] - s.get("bytes_in_use", 0) for s in stats)


def _host_available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (what the kernel can hand out without swapping), else free pages."""
    try:
        with open("/proc/meminfo") as f:
            fields: dict[str, str] = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None


def require_memory(what: str, needed: int, devices: Sequence) -> None:
    """A one-line ConfigError when `needed` bytes cannot fit in what `devices` have available."""
    available = available_memory(devices)
    if available is not None and needed > available:
        raise ConfigError(f"{what} needs {needed / 2 ** 30:,.1f} GiB but {available / 2 ** 30:,.1f} GiB of "
                          f"memory are available")
