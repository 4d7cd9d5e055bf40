"""A random, untrained 4-layer model with a real byte-level BPE tokenizer: a checkpoint for CLI tests."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import jax

from lsjax import model, tokenizer
from lsjax.config import LlamaConfig


def random_model(seed: int = 0):
    """(config, params, tokenizer): a byte-level BPE trained on a few stdlib files and a 4-layer random model."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(str(p) for p in stdlib.glob("*.py"))[:40]
    tok = tokenizer.train_bpe(files, vocab_size=1024)
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=128, intermediate_size=256, num_layers=4,
                         num_heads=4, num_kv_heads=2, bos_token_id=tok.bos_id, eos_token_ids=(tok.eos_id,),
                         pad_token_id=tok.pad_id)
    return config, model.init(config, jax.random.key(seed)), tok
