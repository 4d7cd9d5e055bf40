"""A model that trains in seconds, for tests and for trying the command line."""

from configs import base


def get_config():
    cfg = base.get_config()
    cfg.model.update(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4,
                     num_kv_heads=2, max_position_embeddings=256)
    cfg.tokenizer.vocab_size = 512
    cfg.data.update(source="python_stdlib", max_files=100, seq_len=64)
    cfg.train.update(steps=30, batch_size=8, warmup_steps=5, learning_rate=3e-3, p_max=0.1, e_scale=0.5,
                     curriculum="rotational", rotation=2, log_every=5, eval_every=15, eval_batches=2,
                     checkpoint_every=10, loss_chunk_size=256)
    return cfg
