"""Attention behind one signature, `attend(kind, q, k, v, mask)`, with interchangeable implementations.

q [B, T, H, hd]; k, v [B, S, KV, hd] (grouped-query: query head h reads KV head h // (H / KV));
mask [B, T, S] bool (True = may attend). Softmax is float32; a query with no visible key gets a uniform
(finite) distribution. The implementations compute the same function and differ in memory:

  xla        the reference: one einsum, float32 scores [B, KV, G, T, S] held at once (and, under autodiff,
             kept for the backward pass).
  blockwise  online softmax over blocks of BLOCK keys (a scan whose body is recomputed in the backward
             pass): at most [B, KV, G, T, BLOCK] scores exist at a time, so a 4096-token training row
             holds an eighth of them. Plain JAX, so it runs on every backend.
  auto       blockwise when a row's scores would number AUTO_SCORES or more (training rows, long
             prompts), else xla (decode steps and verifications, whose few queries make small scores).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from lsjax.config import ATTENTION

BLOCK = 512
AUTO_SCORES = 2 ** 20  # queries x keys of one row and head
_MASKED = float(jnp.finfo(jnp.float32).min)


def attend(kind: str, q, k, v, mask) -> jax.Array:
    """Attention output [B, T, H, hd] in q's dtype, by the implementation `kind` (module docstring)."""
    if kind == "auto":
        kind = "blockwise" if q.shape[1] * k.shape[1] >= AUTO_SCORES else "xla"
    if kind == "xla":
        return reference(q, k, v, mask)
    if kind == "blockwise":
        return blockwise(q, k, v, mask)
    raise ValueError(f"attention={kind!r}: expected one of {list(ATTENTION)}")


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


def blockwise(q, k, v, mask, block: Optional[int] = None) -> jax.Array:
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
