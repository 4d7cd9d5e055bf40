"""Benchmark: autoregressive, early-exit and self-speculative decoding side by side on HumanEval prompts.

    python benchmarks/decode.py [--checkpoint models/embedded] [--num-prompts 20] [--max-new-tokens 128]
                                [--exit-layers 1,2,3,4] [--num-speculations 2,4,6] [--batch-sizes 1,4,16]
                                [--repeats 3]

Greedy decoding, compilation excluded. For every prompt every configuration runs in turn, `repeats` times
(the run of median time counts), so machine noise hits them alike; figures are medians over prompts and
ratios to autoregressive measured on the same prompt. For each self-speculative (E, d): the acceptance rate, the analytic speedup bound of SPEC 2.2
for the measured tokens per round, (1 + accepted / rounds) / (d E / L + 1), and the efficiency = measured
speedup / bound; every output is checked token for token against autoregressive. Then the best (E, d) at
batch sizes 1, 4 and 16, and XLA's memory footprint of both loops. Writes decode.json and decode.png under
--out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import decode  # noqa: E402
from lsjax import generation, prompts  # noqa: E402


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=decode.DEFAULT_CHECKPOINT)
    parser.add_argument("--num-prompts", type=int, default=20, help="the first N HumanEval prompts (164: all)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--exit-layers", type=ints, default=None, help="E values (default: 1 .. L/2)")
    parser.add_argument("--num-speculations", type=ints, default=[2, 4, 6])
    parser.add_argument("--batch-sizes", type=ints, default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3, help="runs of every configuration per prompt (median)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return parser.parse_args(argv)


def analytic_bound(tokens_per_round: float, d: int, exit_layer: int, num_layers: int) -> float:
    """SPEC 2.2: tokens per round over the round's cost in full forwards (d drafts at E/L, one verification)."""
    return tokens_per_round / (d * exit_layer / num_layers + 1)


def make_decoder(config, params, tok, max_new_tokens: int, options: dict) -> generation.Decoder:
    return generation.Decoder(config, params, tok, generation.Options(max_new_tokens=max_new_tokens, **options))


def sweep(config, params, tok, texts, options: dict, max_new_tokens: int, repeats: int):
    """{name: per-prompt results} for every configuration, prompts outermost; each prompt's result is the
    run of median time among `repeats` rounds over all configurations."""
    decoders = {name: make_decoder(config, params, tok, max_new_tokens, o)
                for name, o in options.items()}
    results = {name: [] for name in decoders}
    for text in tqdm(texts, desc="prompts", unit="prompt"):
        batch = generation.encode_prompts(tok, [text])
        runs = {name: [] for name in decoders}
        for _ in range(repeats):
            for name, decoder in decoders.items():
                runs[name].append(decoder.generate(batch))
        for name, rows in runs.items():
            results[name].append(sorted(rows, key=lambda r: r["seconds"])[len(rows) // 2])
    return results


def summarise(results, config):
    reference = results["autoregressive"]
    summary = {}
    for name, runs in results.items():
        row = {"tokens_per_second": statistics.median(r["tokens_per_second"] for r in runs),
               "speedup": statistics.median(r["tokens_per_second"] / a["tokens_per_second"]
                                            for r, a in zip(runs, reference)),
               "identical_to_autoregressive": all(r["outputs"][0]["token_ids"] == a["outputs"][0]["token_ids"]
                                                  for r, a in zip(runs, reference))}
        first = runs[0]
        row.update(strategy=first["strategy"], exit_layer=first["exit_layer"], num_speculations=first["num_speculations"])
        if first["strategy"] == "self_speculative":
            drafted = sum(r["outputs"][0]["drafted"] for r in runs)
            accepted = sum(r["outputs"][0]["accepted"] for r in runs)
            rounds = sum(r["outputs"][0]["rounds"] for r in runs)
            bound = analytic_bound(1 + accepted / rounds, first["num_speculations"], first["exit_layer"],
                                   config.num_layers)
            row.update(acceptance_rate=accepted / drafted, tokens_per_round=1 + accepted / rounds,
                       analytic_bound=bound, efficiency=row["speedup"] / bound)
        summary[name] = row
    return summary


def batched(config, params, tok, texts, best: dict, batch_sizes, max_new_tokens: int):
    """tokens/s of autoregressive and the best self-speculative setting at each batch size (median of 3)."""
    rows = []
    for size in batch_sizes:
        batch = generation.encode_prompts(tok, [texts[i % len(texts)] for i in range(size)])
        figures = {}
        for name, o in (("autoregressive", {"strategy": "autoregressive"}), ("self_speculative", best)):
            decoder = make_decoder(config, params, tok, max_new_tokens, o)
            figures[name] = statistics.median(decoder.generate(batch)["tokens_per_second"] for _ in range(3))
        rows.append({"batch_size": size, **{f"{k}_tokens_per_second": v for k, v in figures.items()},
                     "speedup": figures["self_speculative"] / figures["autoregressive"]})
        print(f"batch {size:3d}: autoregressive {figures['autoregressive']:8.1f} tok/s, self-speculative "
              f"{figures['self_speculative']:8.1f} tok/s, speedup {rows[-1]['speedup']:.2f}x")
    return rows


def streaming_overhead(config, params, tok, text, best: dict, max_new_tokens: int, repeats: int = 15):
    """Median seconds of the best setting decoded in one call and streamed in chunks of rounds (batch 1)."""
    batch = generation.encode_prompts(tok, [text])
    decoder = make_decoder(config, params, tok, max_new_tokens, best)
    for _ in decoder.stream(batch):  # compiles the streaming loop
        pass
    whole, streamed = [], []
    for _ in range(repeats):
        whole.append(decoder.generate(batch)["seconds"])
        start = time.perf_counter()
        for _ in decoder.stream(batch):
            pass
        streamed.append(time.perf_counter() - start)
    return {"one_call_seconds": statistics.median(whole), "streamed_seconds": statistics.median(streamed),
            "ratio": statistics.median(streamed) / statistics.median(whole)}


def memory(config, params, tok, text, best: dict, max_new_tokens: int):
    """XLA's bytes for arguments + outputs + temporaries of each compiled loop (batch 1)."""
    batch = generation.encode_prompts(tok, [text])
    out = {}
    for name, o in (("autoregressive", {"strategy": "autoregressive"}), ("self_speculative", best)):
        decoder = make_decoder(config, params, tok, max_new_tokens, o)
        analysis = decoder.compiled(batch).memory_analysis()
        out[name] = int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
                        - analysis.alias_size_in_bytes)
    out["ratio"] = out["self_speculative"] / out["autoregressive"]
    return out


def plot(summary, exit_layers, ds, path: Path):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    reference = summary["autoregressive"]["tokens_per_second"]
    for d in ds:
        names = [f"self_speculative E={e} d={d}" for e in exit_layers]
        ax1.plot(exit_layers, [summary[n]["tokens_per_second"] for n in names], marker="o", label=f"self-spec d={d}")
        ax2.plot(exit_layers, [summary[n]["acceptance_rate"] for n in names], marker="o", label=f"d={d}")
    ax1.plot(exit_layers, [summary[f"early_exit E={e}"]["tokens_per_second"] for e in exit_layers], "k--",
             marker="x", label="early exit (lossy)")
    ax1.axhline(reference, color="grey", label="autoregressive")
    ax1.set(xlabel="exit layer E", ylabel="tokens/s (median over prompts)", title="Decoding speed, batch 1, greedy")
    ax2.set(xlabel="exit layer E", ylabel="accepted / drafted", ylim=(0, 1.02), title="Draft acceptance rate")
    for ax in (ax1, ax2):
        ax.set_xticks(exit_layers)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    config, params, tok = decode.load_model(args.checkpoint)
    exit_layers = args.exit_layers or list(range(1, config.num_layers // 2 + 1))
    texts = list(prompts.humaneval_problems().values())[:args.num_prompts]
    options = {"autoregressive": {"strategy": "autoregressive"}}
    options.update({f"early_exit E={e}": {"strategy": "early_exit", "exit_layer": e} for e in exit_layers})
    options.update({f"self_speculative E={e} d={d}": {"strategy": "self_speculative", "exit_layer": e,
                                                       "num_speculations": d}
                    for e in exit_layers for d in args.num_speculations})
    summary = summarise(sweep(config, params, tok, texts, options, args.max_new_tokens, args.repeats), config)
    print(f"{'configuration':32s} {'tok/s':>8s} {'speedup':>8s} {'accept':>7s} {'bound':>6s} {'effic.':>6s} exact")
    for name, row in summary.items():
        extra = (f"{row['acceptance_rate']:7.3f} {row['analytic_bound']:6.2f} {row['efficiency']:6.2f}"
                 if "efficiency" in row else " " * 21)
        print(f"{name:32s} {row['tokens_per_second']:8.1f} {row['speedup']:7.2f}x {extra} "
              f"{row['identical_to_autoregressive']}")
    speculative = {n: r for n, r in summary.items() if r["strategy"] == "self_speculative"}
    best_name = max(speculative, key=lambda n: speculative[n]["speedup"])
    best = {"strategy": "self_speculative", "exit_layer": speculative[best_name]["exit_layer"],
            "num_speculations": speculative[best_name]["num_speculations"]}
    print(f"best: {best_name}: speedup {speculative[best_name]['speedup']:.2f}x, "
          f"efficiency {speculative[best_name]['efficiency']:.2f}")
    by_batch = batched(config, params, tok, texts, best, args.batch_sizes, args.max_new_tokens)
    streaming = streaming_overhead(config, params, tok, texts[0], best, args.max_new_tokens)
    print(f"streaming: {streaming['streamed_seconds']:.3f} s against {streaming['one_call_seconds']:.3f} s in one "
          f"call (ratio {streaming['ratio']:.3f})")
    footprint = memory(config, params, tok, texts[0], best, args.max_new_tokens)
    print(f"memory (arguments + outputs + temporaries, batch 1): autoregressive {footprint['autoregressive'] / 2**20:.2f}"
          f" MiB, self-speculative {footprint['self_speculative'] / 2**20:.2f} MiB, ratio {footprint['ratio']:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": str(args.checkpoint), "device": jax.devices()[0].device_kind,
              "num_prompts": len(texts), "max_new_tokens": args.max_new_tokens, "num_layers": config.num_layers,
              "summary": summary, "best": best_name, "batch_sizes": by_batch, "memory_bytes": footprint,
              "streaming": streaming}
    (args.out / "decode.json").write_text(json.dumps(result, indent=2))
    plot(summary, exit_layers, args.num_speculations, args.out / "decode.png")
    print(f"wrote {args.out / 'decode.json'} and {args.out / 'decode.png'}")


if __name__ == "__main__":
    main()
