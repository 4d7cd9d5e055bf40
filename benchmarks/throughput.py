"""Benchmark: training and decoding throughput on whatever devices are present, sharded over a mesh.

    python benchmarks/throughput.py [--config configs/embedded.py] [--mesh -1,1,1] [--steps 10]
                                    [--checkpoint models/embedded] [--batch-size 8] [--max-new-tokens 128]
                                    [--peak-tflops X] [--peak-gbps Y]

Training: the config's model and LayerSkip step on synthetic batches over the mesh; prints tokens/s, tokens/s
per device and MFU = achieved model FLOPs / peak FLOPs (model FLOPs per token: 6 N for the weights plus
12 L T D for attention, N the parameters without the embedding; peak from a table of TPU / GPU kinds or
--peak-tflops). Decoding: autoregressive and self-speculative on HumanEval prompts over the mesh; prints
tokens/s, and for autoregressive decoding the memory-bandwidth utilisation = bytes a step reads (the weights
and the static KV cache buffers) x steps / time / peak bandwidth (from the table or --peak-gbps). Medians
over repeats; writes throughput.json under --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lsjax import checkpoints, data, model, prompts, sharding, train, train_config  # noqa: E402
from lsjax.decoder import Decoder, Options, encode_prompts  # noqa: E402

# Dense bf16 peak TFLOP/s and HBM GB/s per device, by jax's device_kind (a chip for TPUs).
PEAKS = {"TPU v4": (275, 1200), "TPU v5 lite": (197, 819), "TPU v5e": (197, 819), "TPU v5p": (459, 2765),
         "TPU v5": (459, 2765), "TPU v6 lite": (918, 1640), "TPU v6e": (918, 1640),
         "NVIDIA H100 80GB HBM3": (989, 3350), "NVIDIA H200": (989, 4800), "NVIDIA A100-SXM4-80GB": (312, 2039),
         "NVIDIA A100-SXM4-40GB": (312, 1555)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/embedded.py")
    parser.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor (-1 = the rest)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--checkpoint", type=Path, default=checkpoints.EMBEDDED)
    parser.add_argument("--batch-size", type=int, default=None, help="decode rows (default: one per device)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--exit-layer", type=int, default=2)
    parser.add_argument("--num-speculations", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None, help="per device, if not in the table")
    parser.add_argument("--peak-gbps", type=float, default=None, help="per device, if not in the table")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return parser.parse_args(argv)


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token: 6 per weight (forward and backward) plus causal attention's 12 L T D."""
    per_layer = (2 * config.hidden_size * config.head_dim * (config.num_heads + config.num_kv_heads)
                 + 3 * config.hidden_size * config.intermediate_size)
    head = config.hidden_size * config.vocab_size
    return 6 * (config.num_layers * per_layer + head) + 12 * config.num_layers * seq_len * config.hidden_size


def measure_training(cfg, mesh, steps: int):
    settings = train_config.TrainSettings.from_config(cfg)
    config = train_config.model_config_from(cfg)  # the model section's shape, also in a config with init_from
    batch_size, seq_len = settings.run.batch_size, settings.data.seq_len
    optimizer = train.make_optimizer(settings.optimizer)
    shardings = sharding.train_state_shardings(mesh, model.param_logical_axes(config), optimizer,
                                               train.abstract_state(config, optimizer))
    state = train.init_state(config, optimizer, shardings, seed=0)
    rows = train.batch_shardings(mesh, batch_size, seq_len)
    step = train.sharded_step(config, settings.recipe, optimizer, settings.run.grad_accum, shardings, rows)
    batch = jax.device_put(data.synthetic_batch(config.vocab_size, batch_size, seq_len), rows)
    state, _ = step(state, batch)  # compile
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens = batch_size * seq_len / seconds
    return {"seconds_per_step": seconds, "tokens_per_second": tokens,
            "tokens_per_second_per_device": tokens / mesh.size,
            "model_tflops_per_second_per_device": tokens * flops_per_token(config, seq_len) / mesh.size / 1e12}


def measure_decoding(args, mesh):
    config, params, tok = checkpoints.load_model(args.checkpoint)
    rows = args.batch_size or mesh.size
    texts = list(prompts.humaneval_problems().values())[:rows]
    batch = encode_prompts(tok, [texts[i % len(texts)] for i in range(rows)])
    weight_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    out, decoders = {}, {}
    for strategy in ("autoregressive", "self_speculative"):
        options = Options(strategy=strategy, exit_layer=args.exit_layer, num_speculations=args.num_speculations,
                          max_new_tokens=args.max_new_tokens)
        decoders[strategy] = Decoder(config, params, tok, options, mesh=mesh)
        runs = [decoders[strategy].generate(batch) for _ in range(4)][1:]  # the first compiles
        out[strategy] = {"tokens_per_second": statistics.median(r.tokens_per_second for r in runs)}
    # an autoregressive step reads every weight and the whole static cache (attention is masked, not cut)
    slots = decoders["autoregressive"].cache_length(batch.tokens.shape[1])
    itemsize = jax.numpy.dtype(config.jnp_dtype).itemsize  # the cache is kept in the model's compute dtype
    cache_bytes = 2 * config.num_layers * rows * slots * config.num_kv_heads * config.head_dim * itemsize
    steps_per_second = out["autoregressive"]["tokens_per_second"] / rows
    out["autoregressive"]["bytes_per_second"] = steps_per_second * (weight_bytes + cache_bytes)
    out["speedup"] = out["self_speculative"]["tokens_per_second"] / out["autoregressive"]["tokens_per_second"]
    return out


def main(argv=None):
    args = parse_args(argv)
    mesh = sharding.mesh_from_flag(args.mesh)
    kind = jax.devices()[0].device_kind
    table_tflops, table_gbps = PEAKS.get(kind, (None, None))
    peak_tflops, peak_gbps = args.peak_tflops or table_tflops, args.peak_gbps or table_gbps
    print(f"{mesh.size} x {kind}, mesh (data, fsdp, tensor) = {tuple(mesh.shape.values())}")
    train_figures = measure_training(train_config.from_file(args.config), mesh, args.steps)
    mfu = train_figures["model_tflops_per_second_per_device"] / peak_tflops if peak_tflops else None
    print(f"training: {train_figures['tokens_per_second']:,.0f} tokens/s, "
          f"{train_figures['tokens_per_second_per_device']:,.0f} tokens/s/device, "
          f"{train_figures['model_tflops_per_second_per_device']:.3f} model TFLOP/s/device, MFU "
          + (f"{mfu:.1%}" if mfu is not None else "n/a (give --peak-tflops)"))
    decode_figures = measure_decoding(args, mesh)
    row = decode_figures["autoregressive"]
    gbps = row["bytes_per_second"] / mesh.size / 1e9
    row["memory_bandwidth_utilisation"] = gbps / peak_gbps if peak_gbps else None
    print(f"decoding, autoregressive: {row['tokens_per_second']:,.0f} tokens/s, {gbps:.1f} GB/s/device read, "
          "bandwidth utilisation " + (f"{gbps / peak_gbps:.1%}" if peak_gbps else "n/a (give --peak-gbps)"))
    print(f"decoding, self-speculative E={args.exit_layer} d={args.num_speculations}: "
          f"{decode_figures['self_speculative']['tokens_per_second']:,.0f} tokens/s, "
          f"speedup {decode_figures['speedup']:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"devices": mesh.size, "device_kind": kind, "mesh": dict(mesh.shape), "peak_tflops": peak_tflops,
              "peak_gbps": peak_gbps, "training": {**train_figures, "mfu": mfu}, "decoding": decode_figures}
    (args.out / "throughput.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out / 'throughput.json'}")


if __name__ == "__main__":
    main()
