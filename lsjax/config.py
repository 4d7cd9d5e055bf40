"""Typed model configuration and its validation.

`LlamaConfig` is frozen and hashable so that it can be a static argument of jitted functions: everything
that changes the compiled program (shapes, dtypes, rope constants) lives here, nothing traced does.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import jax.numpy as jnp

from lsjax.errors import InputError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
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
    num_kv_heads: Optional[int] = None
    head_dim: Optional[int] = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: Optional[int] = 1
    eos_token_ids: Tuple[int, ...] = (2,)
    pad_token_id: Optional[int] = None
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
                    "num_kv_heads", "head_dim"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{key}={value!r}: expected a positive integer")
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
        if self.rope_theta <= 0:
            raise ConfigError(f"model.rope_theta={self.rope_theta}: expected a positive number")
        if self.rms_norm_eps <= 0:
            raise ConfigError(f"model.rms_norm_eps={self.rms_norm_eps}: expected a positive number")

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]

    @property
    def jnp_param_dtype(self):
        return DTYPES[self.param_dtype]

    def replace(self, **changes) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Number of weights, counting a tied embedding once."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.num_layers * layer + d + head

