"""A separate 2-layer draft model for two-model speculative decoding of the embedded model: the embedded
model's width, tokenizer and head, so one draft step costs what the embedded model's E = 2 exit costs, and
the comparison with self-speculation at E = 2 is one of equal draft cost (separate weights and KV cache
against shared ones). Trained from scratch with the plain next-token loss (the last exit only).

    python train.py --config configs/embedded_draft.py --workdir workdirs/draft_model
    python decode.py --strategy speculative --draft-checkpoint workdirs/draft_model/hf --num-speculations 4

Without training, `lsjax.decoding.speculative.truncated(config, params, 2)` gives the zero-cost stand-in:
the embedded model's own first two layers as a separate model.
"""

from configs import embedded


def get_config():
    cfg = embedded.get_config()
    cfg.model.num_layers = 2
    cfg.tokenizer.path = "models/embedded/tokenizer.json"
    cfg.train.update(p_max=0.0, e_scale=0.0, curriculum="none", exit_scale_shape="sum_l", self_distill_beta=0.0)
    return cfg
