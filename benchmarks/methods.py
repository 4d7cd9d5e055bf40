"""Benchmark: every decoding method side by side on HumanEval prompts, speed against quality.

    python benchmarks/methods.py [--checkpoint models/embedded] [--draft-checkpoint models/embedded_draft]
                                 [--num-prompts 8] [--max-new-tokens 64] [--exit-layer 2] [--num-speculations 4]
                                 [--batch-size 0]
                                 [--free-thresholds 0.1,0.3,0.5,0.7,0.9] [--rollbacks 1,2,4 --rollback-exit 0.2]
                                 [--calm-thresholds ...] [--calm-exit-layer 1]
                                 [--repeats 5] [--out benchmarks/results/methods]

Methods: autoregressive (the reference), early exit at E, self-speculative (E, d), two-model speculative
twice at the draft cost of the E exit: with the trained separate draft (--draft-checkpoint,
configs/embedded_draft.py; `none` where no small model shares the tokenizer, as for SmolLM2) and with the
model's own first E layers copied into a separate model
(`lsjax.decoding.speculative.truncated`: self-speculation's proposals, but separate weights and cache), FREE
at fixed thresholds, with rollback at one threshold over the rollback losses, and with the adaptive threshold
(refitted between batches, as in deployment), CALM with each confidence measure over its thresholds.
Each is decoded greedily over the prompts in batches of --batch-size (default: one batch of them all; 1 is the
FREE paper's setting, where a row that exits skips the deep layers outright instead of waiting for the rows that
do not); after every loop is compiled, the methods take turns
`repeats` times (so machine noise hits them alike) and each one's median time counts. Per method: tokens/s,
speedup over autoregressive, the fraction of the layers run in sequence per token (CALM, FREE; E/L for early
exit), the draft acceptance (speculative methods), and against the full model's greedy output the share of
positions with the same token and the edit similarity of the texts (difflib's ratio). The oracle FREE
threshold is the fixed one with >= 0.9 positional agreement that is fastest (measured) and that runs the
fewest layers per token (the compute, free of timing noise); the adaptive threshold is reported beside them.
Writes OUT.md, OUT.json and OUT.png (quality against speedup, a line per method over its threshold).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lsjax import checkpoints, prompts  # noqa: E402
from lsjax.decoder import Decoder, Options, encode_prompts  # noqa: E402
from lsjax.decoding import speculative  # noqa: E402

AGREEMENT_TARGET = 0.9
DRAFT = checkpoints.EMBEDDED.parent / "embedded_draft"  # configs/embedded_draft.py, trained and exported


def floats(text: str):
    return [float(x) for x in text.split(",") if x]


def draft_path(text: str) -> Path | None:
    return None if text.lower() == "none" else Path(text)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=checkpoints.EMBEDDED)
    parser.add_argument("--draft-checkpoint", type=draft_path, default=DRAFT,
                        help="a separate draft model with the same tokenizer, or 'none' (only the copied layers)")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--exit-layer", type=int, default=2)
    parser.add_argument("--num-speculations", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=0, help="prompts per decoded batch (0: all in one)")
    parser.add_argument("--free-thresholds", type=floats,
                        default=floats("0.1,0.2,0.25,0.3,0.35,0.4,0.45,0.5,0.6,0.7,0.8,0.9"))
    parser.add_argument("--rollbacks", type=floats, default=floats("1,2,4"),
                        help="FREE with rollback at these deep losses, at exit threshold --rollback-exit")
    parser.add_argument("--rollback-exit", type=float, default=0.2)
    parser.add_argument("--calm-thresholds", type=floats, default=floats("0.3,0.5,0.7,0.9"))
    parser.add_argument("--state-thresholds", type=floats, default=floats("0.9,0.95,0.98"))
    parser.add_argument("--calm-exit-layer", type=int, default=1, help="CALM's earliest exit (decode.py --exit-layer)")
    parser.add_argument("--adaptive-batches", type=int, default=3,
                        help="passes over the prompts before timing (each batch refits FREE's threshold for the next)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/methods"))
    return parser.parse_args(argv)


def quality(rows, reference, tok):
    """(share of reference positions with the same token, mean edit similarity of the texts)."""
    same = sum(sum(a == b for a, b in zip(r.token_ids, ref.token_ids)) for r, ref in zip(rows, reference))
    positions = sum(len(ref.token_ids) for ref in reference)
    similarity = np.mean([difflib.SequenceMatcher(None, r.text, ref.text).ratio()
                          for r, ref in zip(rows, reference)])
    return same / max(positions, 1), float(similarity)


def acceptance(method, result):
    """The share of drafts the verifier accepted, for the speculative methods (None for the others)."""
    if "speculative" not in method:
        return None
    drafted = sum(row.drafted for row in result.outputs)
    return sum(row.accepted for row in result.outputs) / max(drafted, 1)


def decode_all(decoder, batches):
    """One DecodeResult for the prompts of every batch, decoded in turn: rows concatenated, times summed, the
    layer share weighted by the tokens each batch ran, the threshold the last batch ran at (FREE's adaptive one
    refits between batches)."""
    results = [decoder.generate(batch) for batch in batches]
    seconds = sum(r.seconds for r in results)
    tokens = sum(r.new_tokens for r in results)
    layers = None
    if results[0].layers_per_token is not None:
        fed = [sum(max(row.new_tokens - 1, 0) for row in r.outputs) for r in results]
        layers = sum(r.layers_per_token * n for r, n in zip(results, fed)) / max(sum(fed), 1)
    return dataclasses.replace(results[-1], seconds=seconds, new_tokens=tokens, tokens_per_second=tokens / seconds,
                               layers_per_token=layers, outputs=sum((r.outputs for r in results), ()))


def measure(decoders, batches, repeats):
    """Each decoder's decode of every batch, of median time among `repeats` (a DecodeResult), taken in turns
    after one compiling (and warming) decode."""
    for decoder in decoders:
        decode_all(decoder, batches)
    runs = [[] for _ in decoders]
    for _ in range(repeats):
        for i, decoder in enumerate(decoders):
            runs[i].append(decode_all(decoder, batches))
    return [sorted(results, key=lambda r: r.seconds)[len(results) // 2] for results in runs]


def main(argv=None):
    args = parse_args(argv)
    config, params, tok = checkpoints.load_model(args.checkpoint)
    copied = speculative.truncated(config, params, args.exit_layer)
    texts = prompts.humaneval([str(i) for i in range(args.num_prompts)])
    size = args.batch_size or len(texts)
    batches = [encode_prompts(tok, texts[i:i + size]) for i in range(0, len(texts), size)]
    base = Options(max_new_tokens=args.max_new_tokens)
    e, d, layers = args.exit_layer, args.num_speculations, config.num_layers

    def run(method, setting, draft=None, **options):
        decoder = Decoder(config, params, tok, dataclasses.replace(base, **options), draft=draft)
        return dict(method=method, setting=setting, decoder=decoder)

    records = [run("autoregressive", "", strategy="autoregressive"),
               run("early_exit", f"E={e}", strategy="early_exit", exit_layer=e),
               run("self_speculative", f"E={e} d={d}", strategy="self_speculative", exit_layer=e, num_speculations=d)]
    if args.draft_checkpoint is not None:
        draft_config, draft_params, _ = checkpoints.load_model(args.draft_checkpoint)
        records.append(run("speculative", f"trained {draft_config.num_layers}-layer draft d={d}",
                           draft=(draft_config, draft_params), strategy="speculative", num_speculations=d))
    records.append(run("speculative_copy", f"first {e} layers copied d={d}", draft=copied, strategy="speculative",
                       num_speculations=d))
    for limit in args.free_thresholds:
        records.append(run("free", limit, strategy="free", exit_layer=e, threshold=limit))
    for loss in args.rollbacks:
        records.append(run("free_rollback", f"{args.rollback_exit} R={loss}", strategy="free", exit_layer=e,
                           threshold=args.rollback_exit, rollback=loss))
    for measure_name, limits in (("top2", args.calm_thresholds), ("softmax", args.calm_thresholds),
                                 ("state", args.state_thresholds)):
        for limit in limits:
            records.append(run(f"calm_{measure_name}", limit, strategy="calm", measure=measure_name, threshold=limit,
                               exit_layer=args.calm_exit_layer))
    adaptive = Decoder(config, params, tok, dataclasses.replace(base, strategy="free", exit_layer=e))
    calibration = []
    for _ in range(args.adaptive_batches):  # each batch's pairs refit the threshold for the next
        calibration.append(decode_all(adaptive, batches).threshold)
    records.append(dict(method="free_adaptive", setting="", decoder=adaptive))
    for record, result in zip(records, measure([r.pop("decoder") for r in records], batches, args.repeats)):
        record["result"] = result
        if record["method"] == "free_adaptive":  # still refitted between the timed batches: the one it ran at
            record["setting"] = round(result.threshold, 3)
        print(f"{record['method']:>16} {record['setting']!s:>30}: {result.tokens_per_second:8.1f} tokens/s")

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
                          threshold=result.threshold, acceptance=acceptance(record["method"], result)))
    fixed = [row for row in table if row["method"] == "free" and row["agreement"] >= AGREEMENT_TARGET]
    oracle = dict(speed=max(fixed, key=lambda row: row["speedup"])["setting"] if fixed else None,
                  compute=min(fixed, key=lambda row: row["layers_per_token"])["setting"] if fixed else None)
    adaptive_threshold = dict(calibration=calibration, timed=next(row["setting"] for row in table
                                                                 if row["method"] == "free_adaptive"))
    good = [row for row in table if row["agreement"] >= AGREEMENT_TARGET and row["method"] != "autoregressive"]
    fastest = max(good, key=lambda row: row["speedup"]) if good else None
    markdown = render(table, oracle, adaptive_threshold, fastest, args)
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(dict(
        rows=table, oracle_free_threshold=oracle, adaptive_free_threshold=adaptive_threshold,
        args={k: str(v) for k, v in vars(args).items()}), indent=2))
    plot(table, args.out.with_suffix(".png"))


def render(table, oracle, adaptive_threshold, fastest, args) -> str:
    size = f"in batches of {args.batch_size}" if args.batch_size else "as one batch"
    lines = [f"{args.num_prompts} HumanEval prompts {size}, {args.max_new_tokens} new tokens, greedy; "
             f"median of {args.repeats} interleaved runs.", "",
             "| method | setting | tokens/s | speedup | layers/token | draft acceptance | agreement | edit similarity"
             " |",
             "|---|---|---|---|---|---|---|---|"]
    for row in table:
        fraction = "" if row["layers_per_token"] is None else f"{row['layers_per_token']:.2f}"
        accepted = "" if row["acceptance"] is None else f"{row['acceptance']:.2f}"
        lines.append(f"| {row['method']} | {row['setting']} | {row['tokens_per_second']:.1f} | {row['speedup']:.2f} | "
                     f"{fraction} | {accepted} | {row['agreement']:.3f} | {row['similarity']:.3f} |")
    lines += ["", f"FREE threshold at agreement >= {AGREEMENT_TARGET}: oracle {oracle['speed']} by measured speed, "
              f"{oracle['compute']} by layers per token; adaptive {adaptive_threshold['timed']} (after the "
              f"calibration batches at {', '.join(f'{t:.3f}' for t in adaptive_threshold['calibration'])})."]
    if fastest:
        lines.append(f"Fastest at agreement >= {AGREEMENT_TARGET}: {fastest['method']} {fastest['setting']} "
                     f"({fastest['speedup']:.2f}x).")
    return "\n".join(lines)


def plot(table, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^vP*Xhp<>"
    for i, method in enumerate(dict.fromkeys(row["method"] for row in table)):
        rows = [row for row in table if row["method"] == method]
        ax.plot([r["speedup"] for r in rows], [r["agreement"] for r in rows], marker=markers[i % len(markers)],
                linestyle="-" if len(rows) > 1 else "none", label=method, alpha=0.85)
    ax.axhline(AGREEMENT_TARGET, color="grey", linewidth=0.8, linestyle=":")
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")  # early exit's speedup would squeeze every other method into one column
    for axis_formatter in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        axis_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
    ax.set_xlabel("speedup over autoregressive (log scale)")
    ax.set_ylabel("share of positions equal to full greedy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
