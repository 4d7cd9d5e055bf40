"""Held-out early-exit curves of any checkpoint, before and after training, on a training config's eval split.

    python benchmarks/heldout.py --config configs/smollm2_continual.py --name before          # init_from
    python benchmarks/heldout.py --config configs/smollm2_continual.py:drafting --checkpoint workdirs/smollm2_exit8 \
        --name after --out benchmarks/results/smollm2_heldout

Runs the trainer's own held-out evaluation (the config's data, sequence length, batch size and
eval_batches; the same documents every time) on the checkpoint (default: the config's init_from): per exit,
top-1 accuracy, perplexity and top-1 agreement with the last layer (the agreement at exit E is what
self-speculative decoding with E draft layers accepts, token by token). Results are kept by --name in
OUT.json, so runs made at different times stand side by side in OUT.md and OUT.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lsjax import xla_cpu

xla_cpu.configure()

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import jax  # noqa: E402

from lsjax import checkpoints, data, model, sharding, train, train_config  # noqa: E402


def heldout(settings: train_config.TrainSettings, checkpoint) -> dict:
    config, params, tok = checkpoints.load_model(checkpoint)
    mesh = sharding.make_mesh((1, 1, 1))
    param_shardings = model.param_shardings(config, mesh)
    params = jax.device_put(params, param_shardings)
    run, seq_len = settings.run, settings.data.seq_len
    rows = train.batch_shardings(mesh, run.batch_size, seq_len)
    eval_fn = train.sharded_eval(config, run.loss_chunk_size, param_shardings, rows)
    _, eval_source = data.sources(settings.data)
    batches = data.eval_batches(eval_source, tok, seq_len=seq_len, global_batch_size=run.batch_size,
                                num_batches=run.eval_batches)
    return train.evaluate(eval_fn, params, batches)


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    names = list(results)
    layers = len(next(iter(results.values()))["layer_accuracy"])
    lines = ["| exit | " + " | ".join(f"{n} top-1 | {n} agreement" for n in names) + " |",
             "|---|" + "---|---|" * len(names)]
    for layer in range(layers):
        cells = [f"{results[n]['layer_accuracy'][layer]:.3f} | {results[n]['layer_agreement'][layer]:.3f}"
                 for n in names]
        lines.append(f"| {layer + 1} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"last layer's perplexity, {n}: {results[n]['layer_perplexity'][-1]:.3f} "
              f"({results[n]['tokens']} held-out tokens)" for n in names]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    rows = (len(names) + 1) // 2  # legend rows, below both plots (inside, it hides the deep exits)
    fig, (top1, agree) = plt.subplots(1, 2, figsize=(10, 4 + 0.25 * rows))
    for name in names:
        exits = range(1, layers + 1)
        top1.plot(exits, results[name]["layer_accuracy"], marker=".", label=name)
        agree.plot(exits, results[name]["layer_agreement"], marker=".", label=name)
    top1.set(xlabel="exit layer", ylabel="held-out top-1 accuracy")
    agree.set(xlabel="exit layer", ylabel="top-1 agreement with the last layer")
    for ax in (top1, agree):
        ax.grid(alpha=0.3)
    fig.legend(*top1.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07 * rows, 1, 1))
    fig.savefig(out.with_suffix(".png"), dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a training config file (FILE or FILE:ARG)")
    parser.add_argument("--checkpoint", default=None, help="default: the config's init_from")
    parser.add_argument("--name", required=True, help="the label of this checkpoint's column")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/heldout"))
    args = parser.parse_args(argv)
    settings = train_config.TrainSettings.from_config(train_config.from_file(args.config))
    checkpoint = args.checkpoint or settings.model.init_from
    figures = heldout(settings, checkpoint)
    file = args.out.with_suffix(".json")
    results = json.loads(file.read_text()) if file.exists() else {}
    results[args.name] = {"checkpoint": str(checkpoint), **figures}
    write(results, args.out)
    last = figures["layer_perplexity"][-1]
    print(f"{args.name}: last layer perplexity {last:.3f}; agreement with the last layer by exit: "
          + " ".join(f"{a:.2f}" for a in figures["layer_agreement"]))
    print(f"wrote {args.out.with_suffix('.md')}, .json, .png")


if __name__ == "__main__":
    main()
