"""Benchmark: every decoding method side by side on HumanEval prompts, speed against quality.

    python benchmarks/methods.py [--checkpoint models/embedded] [--draft-checkpoint DIR] [--num-prompts 8]
                                 [--max-new-tokens 64] [--exit-layer 2] [--num-speculations 4]
                                 [--free-thresholds 0.1,0.3,0.5,0.7,0.9] [--calm-thresholds ...]
                                 [--repeats 3] [--out benchmarks/results/methods]

Methods: autoregressive (the reference), early exit at E, self-speculative (E, d), two-model speculative
(a draft of the same cost as the E exit: --draft-checkpoint, or by default the model's own first E layers as
a separate model, `lsjax.decoding.speculative.truncated`), FREE at fixed thresholds and with the adaptive
one (refitted between batches over the first passes), CALM with each confidence measure over its thresholds.
Each is decoded greedily as one batch of the prompts; after every loop is compiled, the methods take turns
`repeats` times (so machine noise hits them alike) and each one's fastest run counts.
Per method: tokens/s, speedup over autoregressive, the fraction of the layers run in sequence per token (CALM,
FREE; E/L for early exit), and against the full model's greedy output the share of positions with the same
token and the edit similarity of the texts (difflib's ratio). The oracle FREE threshold is the fastest fixed
one with >= 0.9 positional agreement; the adaptive threshold is reported beside it. Writes OUT.md, OUT.json
and OUT.png (quality against speedup, a line per method over its threshold).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lsjax import checkpoints, prompts  # noqa: E402
from lsjax.decoder import Decoder, Options, encode_prompts  # noqa: E402
from lsjax.decoding import speculative  # noqa: E402

AGREEMENT_TARGET = 0.9


def floats(text: str):
    return [float(x) for x in text.split(",") if x]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=checkpoints.EMBEDDED)
    parser.add_argument("--draft-checkpoint", type=Path, default=None)
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--exit-layer", type=int, default=2)
    parser.add_argument("--num-speculations", type=int, default=4)
    parser.add_argument("--free-thresholds", type=floats, default=floats("0.05,0.1,0.2,0.3,0.5,0.7,0.9"))
    parser.add_argument("--calm-thresholds", type=floats, default=floats("0.3,0.5,0.7,0.9"))
    parser.add_argument("--state-thresholds", type=floats, default=floats("0.9,0.95,0.98"))
    parser.add_argument("--adaptive-batches", type=int, default=3, help="batches that refit the FREE threshold")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/methods"))
    return parser.parse_args(argv)


def quality(rows, reference, tok):
    """(share of reference positions with the same token, mean edit similarity of the texts)."""
    same = sum(sum(a == b for a, b in zip(r.token_ids, ref.token_ids)) for r, ref in zip(rows, reference))
    positions = sum(len(ref.token_ids) for ref in reference)
    similarity = np.mean([difflib.SequenceMatcher(None, r.text, ref.text).ratio()
                          for r, ref in zip(rows, reference)])
    return same / max(positions, 1), float(similarity)


def measure(decoders, batch, repeats):
    """Each decoder's fastest of `repeats` decodes, taken in turns after one compiling (and warming) decode."""
    best = [decoder.generate(batch) for decoder in decoders]
    for _ in range(repeats):
        for i, decoder in enumerate(decoders):
            result = decoder.generate(batch)
            best[i] = min(best[i], result, key=lambda r: r.seconds)
    return best


def main(argv=None):
    args = parse_args(argv)
    config, params, tok = checkpoints.load_model(args.checkpoint)
    if args.draft_checkpoint is not None:
        draft_config, draft_params, _ = checkpoints.load_model(args.draft_checkpoint)
        draft_name = str(args.draft_checkpoint)
    else:
        draft_config, draft_params = speculative.truncated(config, params, args.exit_layer)
        draft_name = f"first {args.exit_layer} layers as a separate model"
    texts = prompts.humaneval([str(i) for i in range(args.num_prompts)])
    batch = encode_prompts(tok, texts)
    base = Options(max_new_tokens=args.max_new_tokens)
    e, d, layers = args.exit_layer, args.num_speculations, config.num_layers

    def run(method, setting, draft=None, **options):
        decoder = Decoder(config, params, tok, dataclasses.replace(base, **options), draft=draft)
        return dict(method=method, setting=setting, decoder=decoder)

    records = [run("autoregressive", "", strategy="autoregressive"),
               run("early_exit", f"E={e}", strategy="early_exit", exit_layer=e),
               run("self_speculative", f"E={e} d={d}", strategy="self_speculative", exit_layer=e, num_speculations=d),
               run("speculative", f"d={d}", draft=(draft_config, draft_params), strategy="speculative",
                   num_speculations=d)]
    for limit in args.free_thresholds:
        records.append(run("free", limit, strategy="free", exit_layer=e, threshold=limit))
    for measure_name, limits in (("top2", args.calm_thresholds), ("softmax", args.calm_thresholds),
                                 ("state", args.state_thresholds)):
        for limit in limits:
            records.append(run(f"calm_{measure_name}", limit, strategy="calm", measure=measure_name, threshold=limit))
    adaptive = Decoder(config, params, tok, dataclasses.replace(base, strategy="free", exit_layer=e))
    for _ in range(args.adaptive_batches):  # each batch's pairs refit the threshold for the next
        adaptive.generate(batch)
    records.append(dict(method="free_adaptive", setting=round(adaptive.adaptive.threshold(), 3), decoder=adaptive))
    for record, result in zip(records, measure([r.pop("decoder") for r in records], batch, args.repeats)):
        record["result"] = result
        print(f"{record['method']:>16} {record['setting']!s:>14}: {result.tokens_per_second:8.1f} tokens/s")

    reference = records[0]["result"]
    table = []
    for record in records:
        result = record["result"]
        agreement, similarity = quality(result.outputs, reference.outputs, tok)
        fraction = result.layers_per_token
        if record["method"] == "early_exit":
            fraction = e / layers
        elif record["method"] == "autoregressive":
            fraction = 1.0
        table.append(dict(method=record["method"], setting=record["setting"],
                          tokens_per_second=result.tokens_per_second,
                          speedup=result.tokens_per_second / reference.tokens_per_second,
                          layers_per_token=fraction, agreement=agreement, similarity=similarity,
                          threshold=result.threshold))
    fixed = [row for row in table if row["method"] == "free" and row["agreement"] >= AGREEMENT_TARGET]
    oracle = max(fixed, key=lambda row: row["speedup"])["setting"] if fixed else None
    adaptive_threshold = next(row["setting"] for row in table if row["method"] == "free_adaptive")
    good = [row for row in table if row["agreement"] >= AGREEMENT_TARGET and row["method"] != "autoregressive"]
    fastest = max(good, key=lambda row: row["speedup"]) if good else None
    markdown = render(table, oracle, adaptive_threshold, fastest, draft_name, args)
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(dict(
        rows=table, oracle_free_threshold=oracle, adaptive_free_threshold=adaptive_threshold, draft=draft_name,
        args={k: str(v) for k, v in vars(args).items()}), indent=2))
    plot(table, args.out.with_suffix(".png"))


def render(table, oracle, adaptive_threshold, fastest, draft_name, args) -> str:
    lines = [f"{args.num_prompts} HumanEval prompts as one batch, {args.max_new_tokens} new tokens, greedy; "
             f"two-model draft: {draft_name}.", "",
             "| method | setting | tokens/s | speedup | layers/token | agreement | edit similarity |",
             "|---|---|---|---|---|---|---|"]
    for row in table:
        fraction = "" if row["layers_per_token"] is None else f"{row['layers_per_token']:.2f}"
        lines.append(f"| {row['method']} | {row['setting']} | {row['tokens_per_second']:.1f} | {row['speedup']:.2f} | "
                     f"{fraction} | {row['agreement']:.3f} | {row['similarity']:.3f} |")
    lines += ["", f"FREE threshold: oracle (fastest fixed one with agreement >= {AGREEMENT_TARGET}) {oracle}, "
              f"adaptive {adaptive_threshold}."]
    if fastest:
        lines.append(f"Fastest at agreement >= {AGREEMENT_TARGET}: {fastest['method']} {fastest['setting']} "
                     f"({fastest['speedup']:.2f}x).")
    return "\n".join(lines)


def plot(table, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(row["method"] for row in table):
        rows = [row for row in table if row["method"] == method]
        ax.plot([r["speedup"] for r in rows], [r["agreement"] for r in rows], marker="o",
                linestyle="-" if len(rows) > 1 else "none", label=method)
    ax.axhline(AGREEMENT_TARGET, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("speedup over autoregressive")
    ax.set_ylabel("share of positions equal to full greedy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
