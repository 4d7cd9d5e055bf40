"""PNG plots of a training run, drawn from its metrics.jsonl (so they can be redrawn for any finished run).

Figures are drawn with matplotlib's object API (no pyplot), so importing lsjax leaves matplotlib's global
backend alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure


def read_events(metrics_path: Path, event: str):
    with Path(metrics_path).open() as f:
        return [row for row in map(json.loads, f) if row["event"] == event]


def training_curves(metrics_path: Path, out_dir: Path) -> None:
    """layer_loss.png: held-out loss of every exit over training; exit_curve.png: the latest early-exit curve
    (top-1 accuracy and agreement with the last layer against the exit layer)."""
    evals = read_events(metrics_path, "eval")
    if not evals:
        return
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = [row["step"] for row in evals]
    num_layers = len(evals[-1]["layer_loss"])
    colors = matplotlib.colormaps["viridis"]([i / max(num_layers - 1, 1) for i in range(num_layers)])

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for layer in range(num_layers):
        ax.plot(steps, [row["layer_loss"][layer] for row in evals], color=colors[layer], label=f"exit {layer + 1}")
    ax.set(xlabel="step", ylabel="held-out cross-entropy", title="Loss of every early exit over training")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / "layer_loss.png", dpi=110)

    last = evals[-1]
    exits = list(range(1, num_layers + 1))
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    ax.plot(exits, last["layer_accuracy"], marker="o", label="top-1 accuracy")
    ax.plot(exits, last["layer_agreement"], marker="s", label="agreement with the last layer")
    ax.set(xlabel="exit after layer", ylabel="fraction of tokens", ylim=(0, 1.02),
           title=f"Early-exit curve at step {last['step']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "exit_curve.png", dpi=110)
