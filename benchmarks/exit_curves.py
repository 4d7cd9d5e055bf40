"""The early-exit curves of trained runs side by side: a markdown table and a plot, from their metrics.jsonl.

    python benchmarks/exit_curves.py workdirs/embedded workdirs/plain [--names LayerSkip,plain]
                                     [--out benchmarks/results/exit_curves]

For each run, its last held-out evaluation: top-1 accuracy, perplexity and top-1 agreement with the last
layer at every exit (the agreement at exit E is self-speculative decoding's acceptance rate with E draft
layers). Writes OUT.md, OUT.json and OUT.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lsjax import plots  # noqa: E402


def last_eval(workdir: Path) -> dict:
    evals = plots.read_events(workdir / "metrics.jsonl", "eval")
    if not evals:
        raise SystemExit(f"error: {workdir}: no evaluation in metrics.jsonl yet")
    return evals[-1]


def table(runs: dict) -> str:
    names = list(runs)
    head = "| exit after layer | " + " | ".join(f"{n} top-1 | {n} perplexity | {n} agreement" for n in names) + " |"
    rule = "|---" * (1 + 3 * len(names)) + "|"
    lines = [head, rule]
    for layer in range(len(next(iter(runs.values()))["layer_accuracy"])):
        cells = [f"{r['layer_accuracy'][layer]:.3f} | {r['layer_perplexity'][layer]:.1f} | "
                 f"{r['layer_agreement'][layer]:.3f}" for r in runs.values()]
        lines.append(f"| {layer + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", type=Path, nargs="+")
    parser.add_argument("--names", default=None, help="comma-separated labels (default: the folder names)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/exit_curves"))
    args = parser.parse_args(argv)
    names = args.names.split(",") if args.names else [w.name for w in args.workdirs]
    runs = {name: last_eval(w) for name, w in zip(names, args.workdirs)}
    markdown = table(runs)
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(runs, indent=2))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, run in runs.items():
        exits = range(1, len(run["layer_accuracy"]) + 1)
        axes[0].plot(exits, run["layer_accuracy"], marker="o", label=f"{name} (step {run['step']})")
        axes[1].plot(exits, run["layer_agreement"], marker="o", label=name)
    axes[0].set(xlabel="exit after layer", ylabel="held-out top-1 accuracy", title="Accuracy of every exit")
    axes[1].set(xlabel="exit after layer", ylabel="top-1 agreement with the last layer", ylim=(0, 1.02),
                title="Agreement with the last layer (= acceptance)")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
