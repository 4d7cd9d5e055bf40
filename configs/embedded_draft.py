"""A separate 2-layer draft model for two-model speculative decoding of the embedded model: the embedded
model's width, tokenizer and head, so one draft step costs what the embedded model's E = 2 exit costs, and
the comparison with self-speculation at E = 2 is one of equal draft cost (separate weights and KV cache
against shared ones). Trained from scratch with the plain next-token loss (the last exit only).

    python train.py --config configs/embedded_draft.py --workdir workdirs/draft_model \
        --config.export_dir=models/embedded_draft
    python decode.py --strategy speculative --draft-checkpoint models/embedded_draft --num-speculations 4

Without training, `lsjax.decoding.speculative.truncated(config, params, 2)` gives the zero-cost stand-in:
the embedded model's own first two layers as a separate model.
"""

from configs import embedded


def get_config():
    cfg = embedded.get_config()
    cfg.model.num_layers = 2
    cfg.tokenizer.path = "models/embedded/tokenizer.json"
    # 1000 steps: about 35 minutes on 2 shared CPU cores (~2 s a step), about the embedded model's stage 1
    cfg.train.update(steps=1000, p_max=0.0, e_scale=0.0, curriculum="none", exit_scale_shape="sum_l",
                     self_distill_beta=0.0, eval_every=200, checkpoint_every=200)
    return cfg
