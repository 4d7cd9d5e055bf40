"""Defaults shared by every recipe; each config file overrides what differs."""

import ml_collections


def get_config():
    cfg = ml_collections.ConfigDict()
    cfg.model = ml_collections.ConfigDict(dict(
        vocab_size=32000, hidden_size=512, intermediate_size=1376, num_layers=8, num_heads=8, num_kv_heads=8,
        head_dim=None, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        max_position_embeddings=2048, param_dtype="float32", dtype="float32",
        remat="none",  # none | full | dots | offload: what the backward pass recomputes (lsjax.config.REMAT)
        attention="auto"))  # auto | xla | blockwise | flash (lsjax.attention)
    cfg.init_from = ""  # a Hugging Face Llama directory for continual pretraining / fine-tuning
    cfg.export_dir = ""  # where the trained model is written in HF format (default: WORKDIR/hf)
    cfg.export_dtype = ""  # the exported weights' dtype: float32, bfloat16 or float16 (default: model.param_dtype)
    # Devices as (data, fsdp, tensor); -1 = the rest. distributed: call jax.distributed.initialize() first
    # (multi-host TPU pods and GPU clusters; it finds the coordinator from the environment).
    cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, distributed=False))
    cfg.tokenizer = ml_collections.ConfigDict(dict(path="", vocab_size=8192))
    cfg.data = ml_collections.ConfigDict(dict(
        source="python_stdlib", name="", data_dir="", path="", text_field="text", max_files=0, seq_len=512,
        shuffle_window=512))  # packed rows are shuffled within windows of this many rows
    cfg.train = ml_collections.ConfigDict(dict(
        steps=1000, batch_size=16, grad_accum=1, seed=0,
        learning_rate=1e-3, warmup_steps=100, end_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95, grad_clip=1.0,
        # LayerSkip (docs/algorithms.md, the LayerSkip recipe): layer dropout p_{l,t} = S(t) D(l) p_max and the
        # early-exit loss
        p_max=0.1, layer_dropout_scale="exp", layer_dropout_time_scale="constant",
        e_scale=0.2, exit_scale_shape="sum_l", curriculum="rotational", rotation=8, self_distill_beta=0.0,
        exits=(),  # curriculum "fixed": the exits after layers [0, E) for each E here (and the last), every step
        loss_chunk_size=2048,
        # objective: layerskip (the recipe) | free (docs/algorithms.md, FREE: (S CE_S + L CE_L) / (S + L)
        # + free_alpha KD, exit S = free_exit_layer or L/4, KD layer mapping uniform | last | dynamic)
        objective="layerskip", free_exit_layer=0, free_alpha=0.5, free_mapping="dynamic",
        log_every=10, eval_every=200, eval_batches=8,
        checkpoint_every=200, keep_checkpoints=3,
        # a non-finite loss or gradient norm stops the run (exit 3, nothing saved or exported); True skips
        # such steps instead (the update is not applied) and counts them as skipped_steps in metrics.jsonl
        skip_nonfinite_steps=False))
    return cfg


LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                 num_kv_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)
LAYERSKIP_1P5B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5504, num_layers=24, num_heads=16,
                      num_kv_heads=16, max_position_embeddings=4096, rms_norm_eps=1e-5)


def paper_recipe(*, p_max, e_scale, curriculum, rotation=1, from_scratch=False, model=None):
    """A LayerSkip paper setting (docs/algorithms.md, the paper's settings) on TPU-scale defaults: bfloat16, a
    prepared TFDS text dataset (--config.data.name, --config.data.data_dir), and for continual pretraining /
    fine-tuning an HF Llama checkpoint (--config.init_from)."""
    cfg = get_config()
    if model:
        cfg.model.update(model)
    # full rematerialisation: the 7B shape at 4096 tokens then needs 21 GiB a device on 8 devices, 90 without
    # (benchmarks/memory.py)
    cfg.model.update(param_dtype="float32", dtype="bfloat16", remat="full")
    cfg.data.update(source="tfds", seq_len=4096)
    cfg.train.update(p_max=p_max, e_scale=e_scale, curriculum=curriculum, rotation=rotation,
                     layer_dropout_time_scale="exp" if from_scratch else "constant",
                     batch_size=256, learning_rate=3e-4 if from_scratch else 2e-5, warmup_steps=2000,
                     steps=50000, loss_chunk_size=4096, eval_every=1000, checkpoint_every=1000)
    return cfg
