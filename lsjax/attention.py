"""Attention behind one signature, `attend(kind, q, k, v, mask)`, with interchangeable implementations.

q [B, T, H, hd]; k, v [B, S, KV, hd] (grouped-query: query head h reads KV head h // (H / KV));
mask [B, T, S] bool (True = may attend). Softmax is float32; a query with no visible key gets a uniform
(finite) distribution in xla and blockwise, zeros in flash (such queries are padding; nothing reads them).
`segments` [B, T] is passed when the mask is exactly "causal within a segment" over whole rows (training,
held-out eval): a fused kernel then builds the mask itself instead of reading it. The implementations
compute the same function and differ in memory and speed:

  xla        the reference: one einsum, float32 scores [B, KV, G, T, S] held at once (and, under autodiff,
             kept for the backward pass).
  blockwise  online softmax over blocks of BLOCK keys (a scan whose body is recomputed in the backward
             pass): at most [B, KV, G, T, BLOCK] scores exist at a time, so a 4096-token training row
             holds an eighth of them. Plain JAX, so it runs on every backend.
  flash      the fused kernels that ship with JAX: on GPU cuDNN's flash attention
             (`jax.nn.dot_product_attention(implementation="cudnn")`, bfloat16/float16, GQA and the mask
             handled by the kernel); on TPU the Pallas splash-attention kernel (causal, packed segments,
             GQA as one multi-query kernel per KV head, under `shard_map` on a mesh). Where the kernel does
             not apply (CPU, float32 on GPU, decode steps on TPU, a length not a multiple of 128) it falls
             back to the size rule of auto.
  auto       flash on GPU and TPU; on CPU blockwise when a row's scores would number AUTO_SCORES or more
             (training rows, long prompts), else xla (decode steps and verifications, whose few queries make
             small scores).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from lsjax import sharding
from lsjax.config import ATTENTION

BLOCK = 512
AUTO_SCORES = 2 ** 20  # queries x keys of one row and head
_MASKED = float(jnp.finfo(jnp.float32).min)


SPLASH_MULTIPLE = 128  # the splash kernel's block granularity along the sequence
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def attend(kind: str, q, k, v, mask, segments=None) -> jax.Array:
    """Attention output [B, T, H, hd] in q's dtype, by the implementation `kind` (module docstring)."""
    kind = resolve(kind, jax.default_backend(), q, k, segments)
    if kind == "xla":
        return reference(q, k, v, mask)
    if kind == "blockwise":
        return blockwise(q, k, v, mask)
    if kind == "cudnn":
        return fused_gpu(q, k, v, mask)
    return splash(q, k, v, segments)


def resolve(kind: str, platform: str, q, k, segments=None) -> str:
    """The implementation that runs: 'xla', 'blockwise', 'cudnn' or 'splash'."""
    if kind not in ATTENTION:
        raise ValueError(f"attention={kind!r}: expected one of {list(ATTENTION)}")
    if kind in ("auto", "flash"):
        if platform == "gpu" and q.dtype in CUDNN_DTYPES and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128:
            return "cudnn"
        if platform == "tpu" and segments is not None and q.shape[1] % SPLASH_MULTIPLE == 0:
            return "splash"
        return "blockwise" if q.shape[1] * k.shape[1] >= AUTO_SCORES else "xla"
    return kind


def _grouped(q, kv_heads: int):
    b, t, h, hd = q.shape
    return q.reshape(b, t, kv_heads, h // kv_heads, hd)


def reference(q, k, v, mask) -> jax.Array:
    b, t, h, hd = q.shape
    scores = jnp.einsum("btkgd,bskd->bkgts", _grouped(q, k.shape[2]), k,
                        preferred_element_type=jnp.float32) * (hd ** -0.5)
    scores = jnp.where(mask[:, None, None], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, hd)


def blockwise(q, k, v, mask, block: int | None = None) -> jax.Array:
    """Online softmax over key blocks (of BLOCK keys by default): running max m, normaliser l and unnormalised
    output per query."""
    b, t, h, hd = q.shape
    s, kv = k.shape[1], k.shape[2]
    block = min(block or BLOCK, s)
    num_blocks = -(-s // block)
    pad = num_blocks * block - s
    if pad:  # padded keys get no weight at all, even in a query that sees no real key
        k, v = (jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0))) for a in (k, v))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad)))
    real = jnp.arange(num_blocks * block).reshape(num_blocks, block) < s
    blocks = lambda a, axis: jnp.moveaxis(a.reshape(a.shape[:axis] + (num_blocks, block) + a.shape[axis + 1:]),
                                          axis, 0)
    qg = _grouped(q, kv)

    def body(carry, inputs):
        m, l, acc = carry  # [B, KV, G, T], [B, KV, G, T], [B, KV, G, T, hd] float32
        k_blk, v_blk, mask_blk, real_blk = inputs
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, k_blk, preferred_element_type=jnp.float32) * (hd ** -0.5)
        scores = jnp.where(mask_blk[:, None, None], scores, _MASKED)
        scores = jnp.where(real_blk, scores, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(scores, axis=-1))
        probs = jnp.exp(scores - m_new[..., None])
        correction = jnp.exp(m - m_new)
        l = l * correction + jnp.sum(probs, axis=-1)
        acc = acc * correction[..., None] + jnp.einsum("bkgts,bskd->bkgtd", probs.astype(v_blk.dtype), v_blk,
                                                       preferred_element_type=jnp.float32)
        return (m_new, l, acc), None

    g = h // kv
    init = (jnp.full((b, kv, g, t), _MASKED, jnp.float32), jnp.zeros((b, kv, g, t), jnp.float32),
            jnp.zeros((b, kv, g, t, hd), jnp.float32))
    (_, l, acc), _ = lax.scan(jax.checkpoint(body, prevent_cse=False), init,
                              (blocks(k, 1), blocks(v, 1), blocks(mask, 2), real))
    out = (acc / l[..., None]).astype(q.dtype)  # [B, KV, G, T, hd]
    return jnp.moveaxis(out, 3, 1).reshape(b, t, h, hd)


def fused_gpu(q, k, v, mask, implementation: str = "cudnn") -> jax.Array:
    """JAX's fused attention (cuDNN on GPU; implementation='xla' is its portable twin, for tests). JAX
    partitions the cuDNN call over batch and heads itself. Queries with no visible key give zeros."""
    out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=implementation)
    return jnp.where(jnp.any(mask, axis=-1)[:, :, None, None], out, 0).astype(q.dtype)


def splash(q, k, v, segments, interpret: bool = False) -> jax.Array:
    """TPU Pallas splash attention over whole rows: causal within `segments` [B, T], GQA as a multi-query
    kernel per KV head. Pallas calls are not partitioned by XLA, so on a mesh the kernel runs per shard
    (rows over the batch axes, KV heads over 'tensor' when they divide). interpret=True runs the kernel's
    reference interpreter (any backend; tests)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

    b, t, h, hd = q.shape
    kv = k.shape[2]
    g = h // kv

    def per_shard(q, k, v, segments):
        kernel = kernel_lib.make_splash_mqa(
            mask_lib.MultiHeadMask([mask_lib.CausalMask((t, t))] * g), head_shards=1, q_seq_shards=1,
            interpret=interpret)
        scaled = (q.astype(jnp.float32) * hd ** -0.5).astype(q.dtype)
        qg = jnp.moveaxis(_grouped(scaled, k.shape[2]), 1, 3)  # [B, KV, G, T, hd]
        kg, vg = (jnp.moveaxis(a, 1, 2) for a in (k, v))  # [B, KV, T, hd]
        one = lambda qh, kh, vh, seg: kernel(qh, kh, vh, segment_ids=kernel_lib.SegmentIds(q=seg, kv=seg))
        over_heads = jax.vmap(one, in_axes=(0, 0, 0, None))
        out = jax.vmap(over_heads)(qg, kg, vg, segments.astype(jnp.int32))  # [B, KV, G, T, hd]
        return jnp.moveaxis(out, 3, 1).reshape(q.shape).astype(q.dtype)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return per_shard(q, k, v, segments)
    rows = sharding.fitted_spec(mesh, sharding.to_mesh_spec(sharding.BATCH_AXES), (b,))[0]
    heads = sharding.fitted_spec(mesh, sharding.to_mesh_spec(PartitionSpec("kv_heads")), (kv,))[0]
    qkv = PartitionSpec(rows, None, heads, None)
    return jax.shard_map(per_shard, mesh=mesh, in_specs=(qkv, qkv, qkv, PartitionSpec(rows, None)),
                         out_specs=qkv, check_vma=False)(q, k, v, segments)
