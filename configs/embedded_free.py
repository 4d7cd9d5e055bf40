"""FREE's shallow-deep training (docs/algorithms.md, FREE) continuing the embedded model: two exits, S = 2 of 8
layers and the last, (S CE_S + L CE_L) / (S + L) + 0.5 KD with the dynamic layer mapping; no layer dropout (FREE has none).
Its output feeds `decode.py --strategy free --exit-layer 2 --checkpoint workdirs/free/hf`.

    python train.py --config configs/embedded_free.py --workdir workdirs/free
"""

from configs import embedded


def get_config():
    cfg = embedded.get_config()
    cfg.init_from = "models/embedded"
    cfg.train.update(objective="free", free_exit_layer=2, free_alpha=0.5, free_mapping="dynamic", p_max=0.0,
                     steps=400, warmup_steps=20, learning_rate=5e-4, end_lr_ratio=0.1,
                     layer_dropout_time_scale="constant", self_distill_beta=0.0, eval_batches=16)
    return cfg
