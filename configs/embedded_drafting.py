"""Continual pretraining of the embedded model for self-speculative decoding (stages 2 to 4 of
models/embedded): every exit is trained every step with the same weight ("one" shape, no curriculum) plus
self-distillation from the last layer, which raises the shallow exits' agreement with the last layer (the
draft acceptance rate) while the last layer keeps improving. S(t) = 1, as for any continual pretraining.

    python train.py --config configs/embedded.py --workdir workdirs/embedded                    # stage 1
    python train.py --config configs/embedded_drafting.py --workdir workdirs/draft              # stage 2
    python train.py --config configs/embedded_drafting.py --workdir workdirs/draft2 \
        --config.init_from=workdirs/draft/hf --config.train.p_max=0.2 --config.train.self_distill_beta=2.0  # 3
    python train.py --config configs/embedded_drafting.py --workdir workdirs/draft4 \
        --config.init_from=workdirs/draft2/hf --config.train.p_max=0.3 --config.train.self_distill_beta=3.0 \
        --config.train.steps=800 --config.train.seed=4 --config.train.eval_every=200 \
        --config.export_dir=models/embedded                                                    # stage 4
"""

from configs import embedded


def get_config():
    cfg = embedded.get_config()
    cfg.init_from = "workdirs/embedded/hf"
    cfg.train.update(steps=400, warmup_steps=20, learning_rate=5e-4, end_lr_ratio=0.1,
                     layer_dropout_time_scale="constant", exit_scale_shape="one", curriculum="none",
                     self_distill_beta=1.0, eval_batches=16)
    return cfg
