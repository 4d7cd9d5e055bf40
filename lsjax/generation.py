"""Host side of generation: encode and pad prompts to length buckets, check they fit, time the loop."""

from __future__ import annotations

import time
from typing import Dict, List, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lsjax.config import LlamaConfig
from lsjax.errors import InputError
from lsjax.decoding import autoregressive

BUCKET = 64  # prompts are right-padded to a multiple of this, so new prompt lengths rarely recompile


class PromptBatch(NamedTuple):
    tokens: np.ndarray  # [B, T] right-padded, T a multiple of BUCKET
    lengths: np.ndarray  # [B]


def encode_prompts(tok, texts: List[str]) -> PromptBatch:
    if not all(texts):
        raise InputError("empty prompt: give at least one character of text")
    encoded = [tok.encode(text, add_bos=True) for text in texts]
    width = -(-max(len(ids) for ids in encoded) // BUCKET) * BUCKET
    tokens = np.full((len(encoded), width), tok.pad_id or 0, np.int32)
    for i, ids in enumerate(encoded):
        tokens[i, :len(ids)] = ids
    return PromptBatch(tokens, np.asarray([len(ids) for ids in encoded], np.int32))


def cache_length(batch: PromptBatch, max_new_tokens: int) -> int:
    return batch.tokens.shape[1] + max_new_tokens


def check_fits(config: LlamaConfig, batch: PromptBatch, max_new_tokens: int) -> None:
    need = int(batch.lengths.max()) + max_new_tokens
    if need > config.max_position_embeddings:
        raise InputError(f"prompt ({int(batch.lengths.max())} tokens) + max_new_tokens ({max_new_tokens}) = {need} "
                         f"exceeds the model's max_position_embeddings={config.max_position_embeddings}")


def run_greedy(config: LlamaConfig, params, tok, batch: PromptBatch, max_new_tokens: int) -> Dict:
    """Compiles once, then times a second run: the figure excludes compilation."""
    args = (config, params, jnp.asarray(batch.tokens), jnp.asarray(batch.lengths), max_new_tokens)
    kwargs = dict(max_length=cache_length(batch, max_new_tokens), output_size=max_new_tokens,
                  eos_ids=tuple(config.eos_token_ids), pad_id=tok.pad_id or 0)
    jax.block_until_ready(autoregressive.greedy(*args, **kwargs))
    start = time.perf_counter()
    out = jax.block_until_ready(autoregressive.greedy(*args, **kwargs))
    seconds = time.perf_counter() - start
    outputs = []
    for row, n in zip(np.asarray(out.tokens), np.asarray(out.num_tokens)):
        ids = row[:n].tolist()
        outputs.append({"token_ids": ids, "text": tok.decode(ids), "new_tokens": int(n), "seconds": seconds,
                        "tokens_per_second": int(n) / seconds})
    return {"strategy": "autoregressive", "outputs": outputs}
