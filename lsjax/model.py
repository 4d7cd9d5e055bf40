"""Llama-family decoder (Llama 2, Llama 3, Llama 3.2) in Flax Linen, with layers stacked on a leading axis.

The building blocks are Linen modules; the model is a handful of pure functions over one params pytree:

    params = {"embed": {"embedding": [V, D]},
              "layers": {...every leaf with a leading [L] axis...},
              "final_norm": {"scale": [D]},
              "lm_head": {"kernel": [D, V]}}          # absent when the embedding is tied

Stacking lets `run_layers` execute any range [start, stop) as one `lax.scan` that indexes the stack, which
is what LayerSkip needs: the draft is layers [0, E), the verification [E, L), every exit reads the same
`unembed`, and compile time does not grow with depth.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lsjax import attention, sharding
from lsjax.config import LlamaConfig

Params = Any
_INIT_STD = 0.02


def _param(module: nn.Module, name: str, shape, axes, init=nn.initializers.normal(_INIT_STD)):
    """A parameter annotated with its logical axis names (see `lsjax.sharding`)."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, module.config.jnp_param_dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, scaled in the compute dtype (as Hugging Face does)."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        scale = _param(self, "scale", (x.shape[-1],), ("norm",), nn.initializers.ones)
        x32 = x.astype(jnp.float32)
        normed = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.config.rms_norm_eps)
        dtype = self.config.jnp_dtype
        return scale.astype(dtype) * normed.astype(dtype)


def rope_frequencies(config: LlamaConfig) -> np.ndarray:
    """Inverse rotary frequencies [head_dim / 2], with Llama 3 scaling when configured (float32, as HF)."""
    dim = config.head_dim
    inv_freq = 1.0 / (np.float32(config.rope_theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    inv_freq = inv_freq.astype(np.float32)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def apply_rope(x, positions, inv_freq):
    """Rotates x [B, T, heads, head_dim] by its positions [B, T] (Hugging Face's half-split convention)."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, hd/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


Attend = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]


class Attention(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, attend: Attend):
        cfg = self.config
        d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        wq = _param(self, "q", (d, h, hd), ("embed", "heads", "head_dim"))
        wk = _param(self, "k", (d, kv, hd), ("embed", "kv_heads", "head_dim"))
        wv = _param(self, "v", (d, kv, hd), ("embed", "kv_heads", "head_dim"))
        wo = _param(self, "o", (h, hd, d), ("heads", "head_dim", "embed"))
        dtype = cfg.jnp_dtype
        inv_freq = rope_frequencies(cfg)
        q = apply_rope(jnp.einsum("btd,dhk->bthk", x, wq.astype(dtype)), positions, inv_freq)
        k = apply_rope(jnp.einsum("btd,dhk->bthk", x, wk.astype(dtype)), positions, inv_freq)
        v = jnp.einsum("btd,dhk->bthk", x, wv.astype(dtype))
        out, state = attend(q, k, v)
        return jnp.einsum("bthk,hkd->btd", out, wo.astype(dtype)), state


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        d, f, dtype = cfg.hidden_size, cfg.intermediate_size, cfg.jnp_dtype
        gate = _param(self, "gate", (d, f), ("embed", "mlp"))
        up = _param(self, "up", (d, f), ("embed", "mlp"))
        down = _param(self, "down", (f, d), ("mlp", "embed"))
        hidden = nn.silu(x @ gate.astype(dtype)) * (x @ up.astype(dtype))
        return hidden @ down.astype(dtype)


class DecoderLayer(nn.Module):
    """Pre-norm attention and MLP blocks with residual connections; attention I/O is delegated to `attend`."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, attend: Attend):
        attn_out, state = Attention(self.config, name="attn")(RMSNorm(self.config, name="attn_norm")(x),
                                                              positions, attend)
        x = x + attn_out
        return x + MLP(self.config, name="mlp")(RMSNorm(self.config, name="mlp_norm")(x)), state


class Embedding(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self):
        cfg = self.config
        return _param(self, "embedding", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"))


class LMHead(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self):
        cfg = self.config
        return _param(self, "kernel", (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"))


def _top_modules(config: LlamaConfig):
    modules = {"embed": (Embedding(config), ()),
               "final_norm": (RMSNorm(config), (jnp.zeros((1, 1, config.hidden_size), config.jnp_dtype),))}
    if not config.tie_word_embeddings:
        modules["lm_head"] = (LMHead(config), ())
    return modules


def _layer_init_args(config: LlamaConfig):
    x = jnp.zeros((1, 1, config.hidden_size), config.jnp_dtype)
    return x, jnp.zeros((1, 1), jnp.int32), _self_attend_without_mask


def _self_attend_without_mask(q, k, v):
    return attention.reference(q, k, v, jnp.ones((q.shape[0], q.shape[1], k.shape[1]), bool)), None


def _boxed_init(config: LlamaConfig, key):
    """Params still wrapped in Flax's logical-partitioning boxes; see `init` and `param_logical_axes`."""
    modules = _top_modules(config)
    keys = jax.random.split(key, len(modules) + 1)
    params = {name: module.init(k, *args)["params"] for k, (name, (module, args)) in zip(keys[1:], modules.items())}
    layer_keys = jax.random.split(keys[0], config.num_layers)
    layer_init = lambda k: DecoderLayer(config).init(k, *_layer_init_args(config))["params"]
    params["layers"] = jax.vmap(layer_init)(layer_keys)
    return params


@functools.partial(jax.jit, static_argnums=0)
def init(config: LlamaConfig, key: jax.Array) -> Params:
    """Random params (normal(0.02) matrices, unit norm scales), layers stacked on a leading axis."""
    return nn.unbox(_boxed_init(config, key))


def param_logical_axes(config: LlamaConfig) -> Params:
    """A pytree like `init`'s whose leaves are `PartitionSpec`s of logical axis names ('layers' leads the stack)."""
    boxed = jax.eval_shape(functools.partial(_boxed_init, config), jax.random.key(0))
    specs = nn.get_partition_spec(boxed)
    specs["layers"] = jax.tree.map(lambda s: jax.sharding.PartitionSpec("layers", *s), specs["layers"],
                                   is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    return specs


def param_shardings(config: LlamaConfig, mesh) -> Params:
    """NamedShardings of this config's params on `mesh`, by the rules table (shapes from an abstract init;
    nothing is allocated)."""
    return sharding.param_shardings(mesh, param_logical_axes(config), jax.eval_shape(init, config, jax.random.key(0)))


def per_layer(params: Params) -> Params:
    """The params with `layers` as a tuple of per-layer trees instead of one stacked tree (the decoding layout).

    Training scans over the stacked layers; decoding runs them unrolled over separate arrays. On CPU, XLA
    copies a layer's weights out of the stack (a dynamic slice) before every matrix product of every decode
    step, which more than doubled a SmolLM2-135M pass (101 -> 42 ms, benchmarks/decode.py); separate arrays
    are read in place, and so are per-layer KV-cache buffers (`kvcache.init_cache(per_layer=True)`), which
    take each new token's K/V as an in-place update instead of a copy of the layer's slice. Arrays keep
    their shardings (minus the layer axis). Idempotent."""
    if is_per_layer(params):
        return params
    stacked = params["layers"]
    count = jax.tree.leaves(stacked)[0].shape[0]
    layers = tuple(jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(count))
    return {**params, "layers": layers}


def is_per_layer(params: Params) -> bool:
    return isinstance(params["layers"], (tuple, list))


def per_layer_shardings(shardings: Params, num_layers: int) -> Params:
    """`param_shardings` for the `per_layer` layout: each layer's leaves without the layer axis."""
    layer = jax.tree.map(sharding.without_leading_axis, shardings["layers"])
    return {**shardings, "layers": (layer,) * num_layers}


def in_compute_dtype(config: LlamaConfig, params: Params) -> Params:
    """The params cast to the compute dtype. Every use casts them anyway; in a train step doing it first makes
    FSDP's all-gathers move bfloat16 rather than float32 (gradients still reach the float32 params)."""
    return jax.tree.map(lambda p: p.astype(config.jnp_dtype), params)


def embed(config: LlamaConfig, params: Params, tokens) -> jax.Array:
    """Token ids [B, T] -> residual stream x_0 [B, T, D] in the compute dtype, rows over the batch axes."""
    x = jnp.take(params["embed"]["embedding"], tokens, axis=0).astype(config.jnp_dtype)
    return sharding.constrain(x, sharding.ACTIVATION_AXES)


def unembed(config: LlamaConfig, params: Params, x) -> jax.Array:
    """The shared exit g: final RMSNorm then LM head, for a hidden state from any layer. Float32 logits."""
    normed = RMSNorm(config).apply({"params": params["final_norm"]}, x)
    if config.tie_word_embeddings:
        return jnp.einsum("...d,vd->...v", normed, params["embed"]["embedding"].astype(normed.dtype),
                          preferred_element_type=jnp.float32)
    return jnp.einsum("...d,dv->...v", normed, params["lm_head"]["kernel"].astype(normed.dtype),
                      preferred_element_type=jnp.float32)


def head_rows(config: LlamaConfig, params: Params, ids) -> jax.Array:
    """The LM head's rows [K, D] for token ids [K]: a draft head over part of the vocabulary, no new params."""
    if config.tie_word_embeddings:
        return jnp.take(params["embed"]["embedding"], ids, axis=0)
    return jnp.take(params["lm_head"]["kernel"], ids, axis=1).T


def unembed_rows(config: LlamaConfig, params: Params, x, rows) -> jax.Array:
    """`unembed` restricted to the head rows [K, D] of `head_rows`: float32 logits [..., K]."""
    normed = RMSNorm(config).apply({"params": params["final_norm"]}, x)
    return jnp.einsum("...d,kd->...k", normed, rows.astype(normed.dtype), preferred_element_type=jnp.float32)


class LayersOutput(NamedTuple):
    x: jax.Array  # residual stream after layer stop-1, [B, T, D]
    cache: tuple[jax.Array, jax.Array] | None  # updated (k, v) buffers [L, B, S, KV, hd], if given
    hidden: jax.Array | None  # [stop - start, B, T, D]: the stream after each layer, if collected


def causal_mask(batch: int, length: int, segment_ids=None) -> jax.Array:
    """[B, T, T] mask: causal over the sequence index, and within a segment when segment_ids [B, T] is given."""
    idx = jnp.arange(length)
    mask = jnp.broadcast_to(idx[None, :, None] >= idx[None, None, :], (batch, length, length))
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    return mask


def run_layers(config: LlamaConfig, params: Params, x, start: int, stop: int, *, positions, mask,
               cache: tuple[jax.Array, jax.Array] | None = None, write_index=None, residual_mask=None,
               collect_hidden: bool = False, segments=None) -> LayersOutput:
    """Runs layers [start, stop) on the residual stream x [B, T, D] as one scan over the stacked params.

    positions: [B, T] rotary positions. mask: [B, T, K] attention mask, where K = T without a cache, or
    the cache length S with one. segments: [B, T] when mask is `causal_mask(B, T, segments)` (lets a fused
    attention kernel build the mask itself).
    cache: optional (k, v) buffers [L, B, S, KV, hd] covering all L layers; each layer in the range writes
    its new keys/values at slots [write_index[b], write_index[b] + T) of row b, then attends over the
    whole buffer under `mask`. Layers outside the range are untouched.
    residual_mask: optional [B, stop - start] (bool or 0/1): where 0, the layer is skipped for that sample
    (its residual stream passes unchanged); a select, not a branch, so shapes stay static (layer dropout).
    """
    if not 0 <= start < stop <= config.num_layers:
        raise ValueError(f"layer range [{start}, {stop}) is not inside [0, {config.num_layers}]")
    keep = None if residual_mask is None else jnp.asarray(residual_mask).astype(bool).T  # [n, B]
    layer = DecoderLayer(config)
    if is_per_layer(params):
        return _run_unrolled(config, params, layer, x, start, stop, positions=positions, mask=mask, cache=cache,
                             write_index=write_index, keep=keep, collect_hidden=collect_hidden, segments=segments)

    def body(carry, inputs):
        x, buffers = carry
        x = sharding.constrain(x, sharding.ACTIVATION_AXES)
        keep_row, index = inputs
        # Index the whole stack rather than scanning over a slice of it: a slice [start, stop) that is not
        # the whole stack would be a copy of those layers' weights (a draft or verify pass would pay for it).
        p = jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, index, keepdims=False), params["layers"])
        if buffers is None:
            attend = lambda q, k, v: (attention.attend(config.attention, q, k, v, mask, segments), None)
        else:
            attend = functools.partial(_attend_with_cache, kind=config.attention, buffers=buffers, layer=index,
                                       write_index=write_index, mask=mask)
        y, buffers = layer.apply({"params": p}, x, positions, attend)
        if keep_row is not None:
            y = jnp.where(keep_row[:, None, None], y, x)
        y = sharding.constrain(y, sharding.ACTIVATION_AXES)
        return (y, buffers), (y if collect_hidden else None)

    if config.remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[config.remat](), prevent_cse=False)
    (x, cache), hidden = lax.scan(body, (x, cache), (keep, jnp.arange(start, stop)))
    return LayersOutput(x, cache, hidden)


def _run_unrolled(config: LlamaConfig, params: Params, layer, x, start: int, stop: int, *, positions, mask, cache,
                  write_index, keep, collect_hidden: bool, segments) -> LayersOutput:
    """`run_layers` over the `per_layer` layout: one unrolled layer after another, each reading its own weight
    arrays and (with a cache) updating its own K/V buffers [B, S, KV, hd] in place. No remat: this is the
    decoding layout."""
    k_buffers, v_buffers = (None, None) if cache is None else (list(cache[0]), list(cache[1]))
    hidden = []
    for j, index in enumerate(range(start, stop)):
        x = sharding.constrain(x, sharding.ACTIVATION_AXES)
        if cache is None:
            attend = lambda q, k, v: (attention.attend(config.attention, q, k, v, mask, segments), None)
        else:
            attend = functools.partial(_attend_with_cache, kind=config.attention,
                                       buffers=(k_buffers[index], v_buffers[index]), write_index=write_index,
                                       mask=mask)
        y, buffers = layer.apply({"params": params["layers"][index]}, x, positions, attend)
        if buffers is not None:
            k_buffers[index], v_buffers[index] = buffers
        if keep is not None:
            y = jnp.where(keep[j][:, None, None], y, x)
        x = sharding.constrain(y, sharding.ACTIVATION_AXES)
        if collect_hidden:
            hidden.append(x)
    new_cache = None if cache is None else (tuple(k_buffers), tuple(v_buffers))
    return LayersOutput(x, new_cache, jnp.stack(hidden) if collect_hidden else None)


# config.remat -> what a layer's backward pass may keep from its forward pass (the scan carry, the layer's
# input, is always kept). Made on use: the offload policy names memory kinds.
REMAT_POLICIES = {
    "full": lambda: jax.checkpoint_policies.nothing_saveable,
    "dots": lambda: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # the weight matmuls' outputs
    "offload": lambda: jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}


def _attend_with_cache(q, k, v, *, kind, buffers, write_index, mask, layer=None):
    """Writes the new keys/values into the (k, v) buffers, then attends over them. Per-layer buffers
    [B, S, KV, hd], or stacks [L, B, S, KV, hd] at `layer`: the new tokens go straight into the stack at
    (layer, row, slot), an in-place update of the loop's buffer, and attention reads the layer's slice."""
    k_all, v_all = (_write_rows(buffer, new, write_index, layer) for buffer, new in zip(buffers, (k, v)))
    read = (lambda a: a) if layer is None else (lambda a: a[layer])
    out = attention.attend(kind, q, read(k_all).astype(q.dtype), read(v_all).astype(q.dtype), mask)
    return out, (k_all, v_all)


def _write_rows(buffer, new, write_index, layer=None):
    """buffer [B, S, ...] (or a stack [L, B, S, ...] at `layer`) <- new [B, T, ...] at per-row slots
    [write_index[b], write_index[b] + T); slots past the buffer's end are dropped. One scatter that XLA
    applies in place, in either layout."""
    b, t = new.shape[:2]
    rows = jnp.arange(b)[:, None]
    slots = write_index[:, None] + jnp.arange(t, dtype=write_index.dtype)[None, :]
    index = (rows, slots) if layer is None else (layer, rows, slots)
    return buffer.at[index].set(new.astype(buffer.dtype), mode="drop")


def forward(config: LlamaConfig, params: Params, tokens, *, positions=None, segment_ids=None,
            residual_mask=None, collect_hidden: bool = False) -> LayersOutput:
    """All layers over token ids [B, T] without a cache (training, teacher forcing).

    Positions default to 0..T-1; with packed documents pass per-document positions and segment_ids so
    that attention stays inside each document.
    """
    b, t = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    x = embed(config, params, tokens)
    segments = jnp.zeros((b, t), jnp.int32) if segment_ids is None else segment_ids
    return run_layers(config, params, x, 0, config.num_layers, positions=positions,
                      mask=causal_mask(b, t, segment_ids), residual_mask=residual_mask,
                      collect_hidden=collect_hidden, segments=segments)


@functools.partial(jax.jit, static_argnums=0)
def logits(config: LlamaConfig, params: Params, tokens, *, positions=None, segment_ids=None,
           residual_mask=None) -> jax.Array:
    """Float32 logits [B, T, V] of the full model for int token ids [B, T] (jitted; see `forward`)."""
    out = forward(config, params, tokens, positions=positions, segment_ids=segment_ids, residual_mask=residual_mask)
    return unembed(config, params, out.x)


@functools.partial(jax.jit, static_argnums=0)
def hidden_states(config: LlamaConfig, params: Params, tokens, *, positions=None, segment_ids=None) -> jax.Array:
    """[L + 1, B, T, D]: x_0 (embeddings) and the residual stream after every layer (not normalised)."""
    x0 = embed(config, params, tokens)
    out = forward(config, params, tokens, positions=positions, segment_ids=segment_ids, collect_hidden=True)
    return jnp.concatenate([x0[None], out.hidden], axis=0)
