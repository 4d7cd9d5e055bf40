"""Static-shape KV cache: preallocated per-layer K/V buffers, per-row valid ranges, writes and masks.

Row b's tokens live in slots [start[b], length[b]) of every layer's buffer; slot s holds the token at
rotary position s - start[b]. Right-padded prompts have start = 0; left-padded prompts start after their
padding. Rows advance independently (each row writes at its own `length`), several tokens can be written
at once with a causal mask among them (the verification pass of self-speculative decoding), and a
rollback only lowers `length`: stale entries past it are masked out and overwritten by later writes.
Shapes never change, so nothing recompiles as a sequence grows.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import struct

from lsjax import model, sharding
from lsjax.config import LlamaConfig
from lsjax.errors import InputError


@struct.dataclass
class KVCache:
    k: jax.Array | tuple[jax.Array, ...]  # [L, B, S, KV, hd], or per layer [B, S, KV, hd] (per_layer)
    v: jax.Array | tuple[jax.Array, ...]  # as k
    start: jax.Array  # [B] int32: first valid slot of each row
    length: jax.Array  # [B] int32: one past the last valid slot of each row

    @property
    def max_length(self) -> int:
        return _layer_shape(self.k)[1]

    @property
    def batch_size(self) -> int:
        return self.start.shape[0]

    def query_slots(self, num_tokens: int, write_index=None) -> jax.Array:
        """[B, T] slots that T new tokens written at `write_index` (default: `length`) occupy."""
        write_index = self.length if write_index is None else write_index
        return write_index[:, None] + jnp.arange(num_tokens, dtype=jnp.int32)[None, :]

    def positions(self, num_tokens: int, write_index=None) -> jax.Array:
        """[B, T] rotary positions of T new tokens written at `write_index`."""
        return self.query_slots(num_tokens, write_index) - self.start[:, None]

    def mask(self, num_tokens: int, write_index=None) -> jax.Array:
        """[B, T, S]: new token t of row b sees slots [start[b], its own slot], so the new tokens are causal
        among themselves and nothing stale past them is visible."""
        slots = jnp.arange(self.max_length, dtype=jnp.int32)
        query = self.query_slots(num_tokens, write_index)
        return (slots[None, None, :] >= self.start[:, None, None]) & (slots[None, None, :] <= query[:, :, None])

    def rollback(self, length) -> KVCache:
        """Forgets every slot at or past `length` [B] (no copy: those entries are masked and overwritten)."""
        return self.replace(length=jnp.asarray(length, jnp.int32))


def _layer_shape(buffers) -> tuple[int, ...]:
    """[B, S, KV, hd] of one layer's buffer, in either layout."""
    return buffers[0].shape if isinstance(buffers, tuple) else buffers.shape[1:]


def init_cache(config: LlamaConfig, batch_size: int, max_length: int, dtype=None,
               num_layers: int | None = None, per_layer: bool = False) -> KVCache:
    """An empty cache of `max_length` slots per row, in the compute dtype unless `dtype` is given.

    num_layers: buffers for layers [0, num_layers) only (early exit never touches the rest); default all.
    per_layer: one buffer per layer (a tuple), as the `model.per_layer` params layout runs them, instead of
    one stacked buffer.
    """
    num_layers = config.num_layers if num_layers is None else num_layers
    layer_shape = (batch_size, max_length, config.num_kv_heads, config.head_dim)
    dtype = config.jnp_dtype if dtype is None else dtype
    zeros = jnp.zeros((batch_size,), jnp.int32)
    if per_layer:
        buffers = lambda: tuple(sharding.constrain(jnp.zeros(layer_shape, dtype), sharding.LAYER_CACHE_AXES)
                                for _ in range(num_layers))
    else:
        buffers = lambda: sharding.constrain(jnp.zeros((num_layers, *layer_shape), dtype), sharding.CACHE_AXES)
    return KVCache(k=buffers(), v=buffers(), start=zeros, length=zeros)


def run_cached_layers(config: LlamaConfig, params, cache: KVCache, x, start: int, stop: int,
                      write_index=None, collect_hidden: bool = False) -> tuple[model.LayersOutput, KVCache]:
    """Layers [start, stop) over new hidden states x [B, T, D] placed at `write_index` (default `length`).

    Those layers write their K/V for the new tokens and attend over everything visible. `length` is left
    alone: layer ranges may run ahead of each other (drafting fills only the shallow layers), so the
    caller says when a position is complete.
    """
    write_index = cache.length if write_index is None else write_index
    t = x.shape[1]
    out = model.run_layers(config, params, x, start, stop, positions=cache.positions(t, write_index),
                           mask=cache.mask(t, write_index), cache=(cache.k, cache.v),
                           write_index=write_index, collect_hidden=collect_hidden)
    k, v = out.cache
    return out, cache.replace(k=k, v=v)


def _check_room(cache: KVCache, num_tokens: int) -> None:
    """Eager calls get a clear error instead of a clamped (silently wrong) write; jitted callers bound it."""
    if isinstance(cache.length, jax.core.Tracer):
        return
    need = int(jnp.max(cache.length)) + num_tokens
    if need > cache.max_length:
        raise InputError(f"cache overflow: writing {num_tokens} tokens needs {need} slots but the cache "
                         f"holds max_length={cache.max_length}")


def extend(config: LlamaConfig, params, cache: KVCache, tokens, depth: int | None = None
           ) -> tuple[jax.Array, KVCache]:
    """Appends token ids [B, T] to every row (T >= 1, causal among themselves): float32 logits [B, T, V].

    depth: run layers [0, depth) and exit through the shared head (early exit); default all layers.
    """
    _check_room(cache, tokens.shape[1])
    depth = config.num_layers if depth is None else depth
    out, cache = run_cached_layers(config, params, cache, model.embed(config, params, tokens), 0, depth)
    return model.unembed(config, params, out.x), cache.replace(length=cache.length + tokens.shape[1])


def prefill(config: LlamaConfig, params, cache: KVCache, tokens, prompt_lengths, padding: str = "right",
            depth: int | None = None) -> tuple[jax.Array, KVCache]:
    """Writes a padded prompt batch [B, T] into an empty cache; returns the next-token logits [B, V] (at each
    row's last prompt token, the only position unembedded) and the cache.

    prompt_lengths [B]: real tokens per row. padding='right': row b's prompt is tokens[b, :n_b];
    'left': tokens[b, T - n_b:]. depth: as in `extend`.
    """
    if padding not in ("left", "right"):
        raise ValueError(f"padding={padding!r}: expected 'left' or 'right'")
    b, t = tokens.shape
    if t > cache.max_length:
        raise InputError(f"prompt of {t} tokens is longer than the cache (max_length={cache.max_length})")
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    zeros = jnp.zeros((b,), jnp.int32)
    if padding == "right":
        cache = cache.replace(start=zeros, length=zeros)
        new_length, last = prompt_lengths, prompt_lengths - 1
    else:
        cache = cache.replace(start=t - prompt_lengths, length=zeros)
        new_length, last = jnp.full((b,), t, jnp.int32), jnp.full((b,), t - 1, jnp.int32)
    depth = config.num_layers if depth is None else depth
    out, cache = run_cached_layers(config, params, cache, model.embed(config, params, tokens), 0, depth)
    x_last = jnp.take_along_axis(out.x, last[:, None, None], axis=1)[:, 0]
    return model.unembed(config, params, x_last), cache.replace(length=new_length)
