"""The embedded default model: a small Llama trained on the Python standard library on 2 CPU cores.

Its tokenizer is a byte-level BPE trained on the same corpus's train split. This is stage 1 (from scratch,
exported to workdirs/embedded/hf); configs/embedded_drafting.py continues it into models/embedded:
    python train.py --config configs/embedded.py --workdir workdirs/embedded
"""

from configs import base


def get_config():
    cfg = base.get_config()
    cfg.model.update(vocab_size=2048, hidden_size=256, intermediate_size=704, num_layers=8, num_heads=8,
                     num_kv_heads=4, max_position_embeddings=1024, tie_word_embeddings=True)
    cfg.tokenizer.vocab_size = 2048
    cfg.data.update(source="python_stdlib", seq_len=256)
    # From scratch (S(t) rises over time: docs/algorithms.md, layer dropout). e_scale = 1 and self-distillation
    # push up the agreement of shallow exits with the last layer, which is self-speculative decoding's acceptance
    # rate.
    cfg.train.update(steps=600, batch_size=16, warmup_steps=50, learning_rate=2e-3, end_lr_ratio=0.05,
                     p_max=0.1, layer_dropout_time_scale="exp", e_scale=1.0, curriculum="rotational", rotation=4,
                     self_distill_beta=1.0, loss_chunk_size=2048, log_every=10, eval_every=100, eval_batches=8,
                     checkpoint_every=100)
    return cfg
