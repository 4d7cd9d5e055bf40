"""Benchmark: per-device memory of LayerSkip training at real model sizes, compiled ahead of time.

    python benchmarks/memory.py [--models llama3.2-1b,llama2-7b] [--seq-lens 2048,4096] [--batch-per-device 1,4]
                                [--meshes 1x8x1,2x4x1] [--out benchmarks/results]

Each program is lowered on abstract shapes (`jax.ShapeDtypeStruct` with its shardings) over 8 simulated CPU
devices and compiled; nothing is allocated, so a 7B model is measured on a laptop. Per device it reports
XLA's arguments (params, optimizer state, batch) and temporaries (activations kept for the backward pass,
logits, gathered weights), and whether their sum fits a TPU v5e (16 GiB), v4 (32 GiB) or H100 (80 GiB).
The CPU backend overstates bfloat16 temporaries by about 1.2-1.5x (it computes some bfloat16 work in float32).
The model shapes use the continual-pretraining recipe of configs/llama2_7b_continual.py (p_max 0.1, e_scale
0.2, rotational R=8; float32 params, bfloat16 compute). Writes memory.json under --out.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lsjax import xla_cpu  # noqa: E402

xla_cpu.configure(num_devices=8)  # before JAX starts

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

from lsjax import decoding, model, objective, sharding, train, train_config  # noqa: E402
from lsjax.decoder import unrolls_layers  # noqa: E402
from lsjax.config import LlamaConfig, RopeScaling  # noqa: E402

GIB = 2 ** 30
MODELS = {
    "llama3.2-1b": LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
                               num_heads=32, num_kv_heads=8, head_dim=64, rope_theta=500000.0,
                               rope_scaling=RopeScaling(factor=32.0), tie_word_embeddings=True,
                               max_position_embeddings=131072, param_dtype="float32", dtype="bfloat16"),
    "smollm2-135m": LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                                num_heads=9, num_kv_heads=3, rope_theta=100000.0, tie_word_embeddings=True,
                                max_position_embeddings=8192, param_dtype="float32", dtype="bfloat16"),
    "llama2-7b": LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                             num_heads=32, num_kv_heads=32, max_position_embeddings=4096, param_dtype="float32",
                             dtype="bfloat16"),
}
DEVICES = {"TPU v5e": 16, "TPU v4": 32, "H100": 80}  # GiB of memory per chip
RECIPE = dict(p_max=0.1, layer_dropout_scale="exp", layer_dropout_time_scale="constant", e_scale=0.2,
              exit_scale_shape="sum_l", curriculum="rotational", rotation=8, self_distill_beta=0.0,
              total_steps=50000, seed=0, loss_chunk_size=4096)
OPTIMIZER = dict(learning_rate=2e-5, warmup_steps=2000, steps=50000, end_lr_ratio=0.1, grad_clip=1.0, b1=0.9,
                 b2=0.95, weight_decay=0.1)


def listed(kind):
    return lambda text: [kind(x) for x in text.split(",")]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=listed(str), default=["llama3.2-1b", "llama2-7b"])
    parser.add_argument("--seq-lens", type=listed(int), default=[2048, 4096])
    parser.add_argument("--batch-per-device", type=listed(int), default=[1, 4])
    parser.add_argument("--meshes", type=listed(lambda s: tuple(int(n) for n in s.split("x"))),
                        default=[(1, 8, 1), (2, 4, 1)], help="data x fsdp x tensor, comma-separated")
    parser.add_argument("--remat", type=listed(str), default=["full"],
                        help="remat policies of the train step (none, full, dots, offload)")
    parser.add_argument("--programs", type=listed(str), default=list(PROGRAMS))
    parser.add_argument("--decode-batch-sizes", type=listed(int), default=[16],
                        help="rows of the decode (global; prompts of seq_len / 2 tokens in a seq_len cache)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown model {unknown[0]!r}; expected some of {list(MODELS)}")
    return args


def abstract(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def _abstract_batch(rows, batch_size: int, seq_len: int) -> dict:
    batch = {key: jax.ShapeDtypeStruct((batch_size, seq_len), "float32" if key == "loss_mask" else "int32",
                                       sharding=rows[key]) for key in rows if key != "sample_index"}
    batch["sample_index"] = jax.ShapeDtypeStruct((batch_size,), "int32", sharding=rows["sample_index"])
    return batch


def train_step_memory(config: LlamaConfig, mesh, batch_size: int, seq_len: int) -> dict:
    """Per-device bytes of the compiled LayerSkip train step (state donated, as train.py runs it)."""
    optimizer = train.make_optimizer(train_config.OptimizerSettings(**OPTIMIZER))
    state = train.abstract_state(config, optimizer)
    shardings = sharding.train_state_shardings(mesh, model.param_logical_axes(config), optimizer, state)
    rows = train.batch_shardings(mesh, batch_size, seq_len)
    step = train.sharded_step(config, objective.Recipe(**RECIPE), optimizer, 1, shardings, rows)
    return _bytes(step.lower(abstract(state, shardings), _abstract_batch(rows, batch_size, seq_len)).compile())


def eval_memory(config: LlamaConfig, mesh, batch_size: int, seq_len: int) -> dict:
    """Per-device bytes of the compiled held-out evaluation of every exit."""
    params = jax.eval_shape(model.init, config, jax.random.key(0))
    shardings = sharding.param_shardings(mesh, model.param_logical_axes(config), params)
    rows = train.batch_shardings(mesh, batch_size, seq_len)
    evaluate = train.sharded_eval(config, RECIPE["loss_chunk_size"], shardings, rows)
    batch = {k: v for k, v in _abstract_batch(rows, batch_size, seq_len).items() if k != "sample_index"}
    return _bytes(evaluate.lower(abstract(params, shardings), batch).compile())


def decode_memory(config: LlamaConfig, mesh, batch_size: int, seq_len: int) -> dict:
    """Per-device bytes of the compiled self-speculative decode (E = L/4, d = 2) in bfloat16: prompts of
    seq_len / 2 tokens in a cache of seq_len slots."""
    config = config.replace(param_dtype="bfloat16", dtype="bfloat16")
    shardings = model.param_shardings(config, mesh)
    params = jax.eval_shape(model.init, config, jax.random.key(0))
    if unrolls_layers(mesh):  # the layout Decoder runs on this mesh
        params = jax.eval_shape(lambda: model.per_layer(model.init(config, jax.random.key(0))))
        shardings = model.per_layer_shardings(shardings, config.num_layers)
    params = abstract(params, shardings)
    prompt = seq_len // 2
    speculative = decoding.Settings(strategy="self_speculative", exit_layer=max(1, config.num_layers // 4),
                                    num_speculations=2, output_size=1)
    settings = speculative._replace(output_size=seq_len - prompt - speculative.slack)
    tokens = jax.ShapeDtypeStruct((batch_size, prompt), "int32", sharding=sharding.batch_sharding(
        mesh, (batch_size, prompt)))
    lengths = jax.ShapeDtypeStruct((batch_size,), "int32", sharding=sharding.batch_sharding(mesh, (batch_size,)))
    with jax.set_mesh(mesh):
        lowered = decoding.generate.lower(config, params, settings, tokens, lengths, settings.output_size,
                                          jax.random.key(0), decoding.Knobs.make(),
                                          max_length=decoding.cache_length(settings, prompt))
    return _bytes(lowered.compile())


PROGRAMS = {"train": train_step_memory, "eval": eval_memory, "decode": decode_memory}


def _bytes(compiled) -> dict:
    m = compiled.memory_analysis()
    return {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
            "temporaries": m.temp_size_in_bytes, "total": m.argument_size_in_bytes + m.temp_size_in_bytes}


def jobs(args):
    """(program, model, remat, mesh shape, sequence, global batch, batch per device) to compile: the train
    step under each remat policy, eval and decode once (remat changes only what a backward pass keeps)."""
    for name in args.models:
        for shape in args.meshes:
            rows_axes = shape[0] * shape[1]
            for seq_len in args.seq_lens:
                for program in args.programs:
                    if program == "decode":
                        for batch in args.decode_batch_sizes:
                            yield program, name, None, shape, seq_len, batch, batch / rows_axes
                        continue
                    for per_device in args.batch_per_device:
                        for remat in (args.remat if program == "train" else [None]):
                            yield program, name, remat, shape, seq_len, per_device * rows_axes, per_device


def main(argv=None):
    args = parse_args(argv)
    rows = []
    for program, name, remat, shape, seq_len, batch_size, per_device in jobs(args):
        config = MODELS[name].replace(remat=remat or "none")
        start = time.perf_counter()
        figures = PROGRAMS[program](config, sharding.make_mesh(shape), batch_size, seq_len)
        row = {"program": program, "model": name, "remat": remat, "mesh": "x".join(map(str, shape)),
               "seq_len": seq_len, "batch_size": batch_size, "batch_per_device": per_device, **figures,
               "fits": [d for d, gib in DEVICES.items() if figures["total"] <= gib * GIB],
               "compile_seconds": time.perf_counter() - start}
        rows.append(row)
        print(_line(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps({"devices_gib": DEVICES, "rows": rows}, indent=2))
    (args.out / "memory.md").write_text(markdown(rows))
    plot(rows, args.out / "memory.png")
    print(f"wrote {args.out / 'memory.json'}, memory.md and memory.png")


def _label(row: dict) -> str:
    remat = f", remat {row['remat']}" if row["remat"] else ""
    return (f"{row['program']} {row['model']}, mesh {row['mesh']}, seq {row['seq_len']}, "
            f"batch {row['batch_size']}{remat}")


def markdown(rows) -> str:
    lines = ["| program | model | mesh | sequence | batch (per device) | remat | arguments GiB | temporaries GiB | "
             "total GiB | fits |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['program']} | {r['model']} | {r['mesh']} | {r['seq_len']} | {r['batch_size']} "
                     f"({r['batch_per_device']:g}) | {r['remat'] or ''} | {r['arguments'] / GIB:.2f} | "
                     f"{r['temporaries'] / GIB:.2f} | {r['total'] / GIB:.2f} | {', '.join(r['fits']) or 'none'} |")
    return "\n".join(lines) + "\n"


def plot(rows, path: Path) -> None:
    """Per-device GiB of every compiled program as bars, against the memory of each device kind."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(11, 0.28 * len(rows) + 1.5))
    colours = {"train": "tab:blue", "eval": "tab:green", "decode": "tab:orange"}
    y = range(len(rows))
    ax.barh(y, [r["arguments"] / GIB for r in rows], color="lightgrey", label="arguments")
    ax.barh(y, [r["temporaries"] / GIB for r in rows], left=[r["arguments"] / GIB for r in rows],
            color=[colours[r["program"]] for r in rows], label="temporaries")
    for device, gib in DEVICES.items():
        ax.axvline(gib, color="black", linestyle=":", linewidth=1)
        ax.text(gib, -1, device, ha="center", va="top", fontsize=8)
    ax.set_yticks(list(y), [_label(r) for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("GiB per device (CPU backend, compiled on abstract shapes)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _line(row: dict) -> str:
    remat = f" remat {row['remat']}" if row["remat"] else ""
    return (f"{row['program']:6s} {row['model']:12s}{remat:13s} mesh {row['mesh']} seq {row['seq_len']:5d} "
            f"batch {row['batch_size']:3d}: arguments {row['arguments'] / GIB:6.2f} GiB, temporaries "
            f"{row['temporaries'] / GIB:7.2f} GiB, total {row['total'] / GIB:7.2f} GiB; fits "
            f"{', '.join(row['fits']) or 'none'}")


if __name__ == "__main__":
    sys.exit(main())
