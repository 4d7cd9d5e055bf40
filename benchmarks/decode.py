"""Benchmark: autoregressive, early-exit and self-speculative decoding side by side on HumanEval prompts.

    python benchmarks/decode.py [--checkpoint models/embedded] [--dtype float32] [--num-prompts 20]
                                [--max-new-tokens 128] [--exit-layers 1,2,3,4] [--num-speculations 2,4,6]
                                [--confidences 0] [--ceiling-exit-layers E,..] [--ceiling-speculations 1,2,3,4,6]
                                [--ceiling-draft-vocabs K,..] [--batch-sizes 1,4,16] [--repeats 3]

Greedy decoding, compilation excluded. For every prompt every configuration runs in turn, `repeats` times (the
run of median time counts), so machine noise hits them alike; figures are medians over prompts and ratios to
autoregressive measured on the same prompt. Each configuration's speedup is given as a caller sees it
(`speedup`, the prompt's prefill included) and for the decode loop alone (`decode_speedup`: the prefill, timed
as the autoregressive loop asked for one token, taken out), with its milliseconds per round. The passes are
also timed alone (`pass_costs`), and each loop's efficiency is the round those passes predict over the round
it took. For each self-speculative (E, d, confidence threshold c): the acceptance rate, the analytic speedup
bound (docs/algorithms.md, cost model) for the measured tokens and drafts per round, (1 + accepted / rounds) /
((drafted / rounds) E / L + 1), the bound that the pass costs allow, and the loop speedup's ratio to each;
every output is checked token for token against autoregressive. Then the ceiling at the best setting's E (or
at each --ceiling-exit-layers E): the same loops on the same weights with layers [E, L) silenced (their output
projections zeroed), so every draft is accepted while every pass costs what it did; with a reduced draft
vocabulary K, the head is also confined to the K tokens (`confine_head`). It gives the loops' speed where
acceptance is no limit, each d's round time, and the per-token acceptance a model would need for --target (the
ceiling's loop speedup scaled by the cost model's tokens per round, (1 - a^(d+1)) / (1 - a), over the d + 1 it
had). Then the best setting at batch sizes 1, 4 and 16, the cost of streaming it, and XLA's memory footprint of
both loops. Writes decode.json, decode.png and ceilings.png under --out.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from jax import lax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lsjax import checkpoints, decoding, draft_vocab, kvcache, model, prompts  # noqa: E402
from lsjax.decoder import Decoder, Options, encode_prompts  # noqa: E402

PASSES = 50  # cached passes per compiled loop in `pass_costs`


def listed(cast):
    """An argparse type: comma-separated values, each read by cast."""
    def parse(text: str) -> list:
        return [cast(x) for x in text.split(",") if x]
    parse.__name__ = f"comma-separated {cast.__name__}"  # argparse names it in its error
    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=checkpoints.EMBEDDED)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="params and compute in this dtype (default: as the checkpoint stores them)")
    parser.add_argument("--num-prompts", type=int, default=20, help="the first N HumanEval prompts (164: all)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--exit-layers", type=listed(int), default=None, help="E values (default: 1 .. L/2)")
    parser.add_argument("--num-speculations", type=listed(int), default=[2, 4, 6])
    parser.add_argument("--confidences", type=listed(float), default=[0.0],
                        help="draft confidence thresholds c (0 = off): a round stops drafting below c")
    parser.add_argument("--ceiling-speculations", type=listed(int), default=[1, 2, 3, 4, 6],
                        help="d values of the ceiling run (every draft accepted)")
    parser.add_argument("--ceiling-exit-layers", type=listed(int), default=None,
                        help="E values of the ceiling run (default: the best setting's E)")
    parser.add_argument("--ceiling-draft-vocabs", type=listed(int), default=[],
                        help="K values of a reduced draft vocabulary (lsjax.draft_vocab) also run in the ceiling")
    parser.add_argument("--target", type=float, default=1.5,
                        help="the speedup whose required per-token acceptance the ceiling reports")
    parser.add_argument("--batch-sizes", type=listed(int), default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3, help="runs of every configuration per prompt (median)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return parser.parse_args(argv)


def analytic_bound(tokens_per_round: float, drafts_per_round: float, exit_layer: int, num_layers: int) -> float:
    """The cost model's bound (docs/algorithms.md, cost model): tokens per round over the round's cost in full
    forwards (each draft E/L, one verification)."""
    return tokens_per_round / (drafts_per_round * exit_layer / num_layers + 1)


def round_cost(drafts_per_round: float, costs: dict, exit_layer: int, d: int, draft_vocab: int = 0) -> float:
    """Milliseconds a self-speculative round costs by its passes timed alone (`pass_costs`): `drafts` shallow
    passes with the (full or reduced) draft head, one more without a head (the last draft's exit state) and
    one verification of d + 1 tokens."""
    draft = costs[f"draft E={exit_layer}" + (f" K={draft_vocab}" if draft_vocab else "")]
    return drafts_per_round * draft + costs[f"shallow E={exit_layer}"] + costs[f"verify E={exit_layer} d={d}"]


def cost_bound(tokens_per_round: float, drafts_per_round: float, costs: dict, exit_layer: int, d: int,
               draft_vocab: int = 0) -> float:
    """The speedup this machine's measured pass costs allow: a round as `round_cost` against one full pass
    per autoregressive token. Its gap to the measured speedup is the loops' own bookkeeping and what their
    passes cost there rather than alone (see `pass_costs`)."""
    return tokens_per_round * costs["full"] / round_cost(drafts_per_round, costs, exit_layer, d, draft_vocab)


def tokens_per_round(acceptance: float, d: int) -> float:
    """The tokens a round of d drafts yields when each draft is accepted with probability a."""
    return sum(acceptance ** i for i in range(d + 1))


def acceptance_for(tokens: float, d: int):
    """The per-token acceptance a at which a round of d drafts yields `tokens` (None: more than d + 1)."""
    if tokens > d + 1:
        return None
    low, high = 0.0, 1.0
    for _ in range(50):  # tokens_per_round rises with a: bisect
        middle = (low + high) / 2
        low, high = (middle, high) if tokens_per_round(middle, d) < tokens else (low, middle)
    return high


def silence_deep_layers(params, exit_layer: int):
    """The same weights with the output projections (attention `o`, MLP `down`) of layers [E, L) zeroed: those
    layers add nothing to the residual stream, so the full model predicts what layer E predicts and every draft
    is accepted, while every pass reads and multiplies what it did (the zeros are data, not shapes)."""
    layers = params["layers"]
    silenced = lambda w: w.at[exit_layer:].set(0)
    return {**params, "layers": {**layers, "attn": {**layers["attn"], "o": silenced(layers["attn"]["o"])},
                                 "mlp": {**layers["mlp"], "down": silenced(layers["mlp"]["down"])}}}


def confine_head(config, params, ids):
    """The same weights with the head rows of every token outside `ids` zeroed: those tokens score 0, below the
    best of the subset whenever that is positive, so the full model's greedy choice lies in the subset and a
    reduced draft vocabulary of exactly these ids loses no draft to it (the ceiling's use), while every pass
    costs what it did. With tied embeddings the zeroed rows also embed those tokens as zeros."""
    outside = jnp.ones((config.vocab_size,), bool).at[jnp.asarray(ids)].set(False)
    if config.tie_word_embeddings:
        embedding = params["embed"]["embedding"]
        return {**params, "embed": {"embedding": jnp.where(outside[:, None], 0, embedding)}}
    kernel = params["lm_head"]["kernel"]
    return {**params, "lm_head": {"kernel": jnp.where(outside[None, :], 0, kernel)}}


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4))
def _cached_passes(config, params, start: int, stop: int, head: str, cache, x, rows):
    """PASSES passes of layers [start, stop) and then `head`: "full" (the whole vocabulary), "rows" (the
    reduced draft head `rows`) or "none" (the last shallow pass of a round, whose exit state only feeds the
    verification). The head's argmax feeds the next pass, so no pass can be skipped or its head cut short."""
    def one(_, carry):
        cache, x = carry
        out, cache = kvcache.run_cached_layers(config, params, cache, x, start, stop)
        if head == "none":
            return cache, out.x
        logits = (model.unembed(config, params, out.x) if head == "full"
                  else model.unembed_rows(config, params, out.x, rows))
        return cache, x + 1e-6 * jnp.argmax(logits, axis=-1)[..., None].astype(x.dtype)
    return lax.fori_loop(0, PASSES, one, (cache, x))


def pass_costs(config, params, exit_layers, ds, cache_length: int, draft_vocabs=(), ranking=None,
               repeats: int = 7) -> dict:
    """Milliseconds of one cached pass inside a compiled loop, at batch 1 with half the cache filled: the full
    model on one token with the head ("full"); layers [0, E) on one token with the head ("draft E=e"), with
    the head of a reduced draft vocabulary ("draft E=e K=k") and without a head ("shallow E=e", a round's last
    shallow pass); layers [E, L) on d + 1 tokens with the head ("verify E=e d=d"). Medians of `repeats` loops,
    the kinds taken in turn. Each loop repeats one pass, so its weights stay in the CPU's caches as far as they
    fit; inside a decode a pass can cost more or less than alone (a draft step follows a verification that has
    streamed the deep layers' weights through those caches)."""
    params = model.per_layer(params)  # the layout the decode loops run
    cache = kvcache.init_cache(config, 1, cache_length, per_layer=True).replace(
        length=jnp.full((1,), cache_length // 2, jnp.int32))
    runs = {"full": (0, config.num_layers, 1, "full", 0)}
    for e in exit_layers:
        runs[f"draft E={e}"] = (0, e, 1, "full", 0)
        runs.update({f"draft E={e} K={k}": (0, e, 1, "rows", k) for k in draft_vocabs})
        runs[f"shallow E={e}"] = (0, e, 1, "none", 0)
        runs.update({f"verify E={e} d={d}": (e, config.num_layers, d + 1, "full", 0) for d in ds})
    calls = {}
    for name, (start, stop, width, head, k) in runs.items():
        rows = model.head_rows(config, params, jnp.asarray(ranking[:k])) if k else None
        x = jnp.full((1, width, config.hidden_size), 0.1, config.jnp_dtype)
        calls[name] = functools.partial(_cached_passes, config, params, start, stop, head, cache, x, rows)
    seconds = {name: [] for name in calls}
    for call in calls.values():
        jax.block_until_ready(call())  # compiles
    for _ in range(repeats):
        for name, call in calls.items():
            begin = time.perf_counter()
            jax.block_until_ready(call())
            seconds[name].append(time.perf_counter() - begin)
    return {name: 1000 * float(np.median(s)) / PASSES for name, s in seconds.items()}


def make_decoder(config, params, tok, max_new_tokens: int, options: dict) -> Decoder:
    options = dict(options)
    ranking = options.pop("draft_ranking", None)
    return Decoder(config, params, tok, Options(max_new_tokens=max_new_tokens, **options), draft_ranking=ranking)


def sweep(config, params, tok, texts, options: dict, max_new_tokens: int, repeats: int):
    """({name: per-prompt results}, per-prompt fixed seconds) for every configuration, prompts outermost; each
    prompt's result is the run of median time among `repeats` rounds over all configurations. A prompt's
    fixed cost is the median time of the autoregressive loop asked for one token (its prefill and the call,
    no round), which every configuration pays once per decode. Each loop runs once untimed per prompt bucket."""
    decoders = {name: make_decoder(config, params, tok, max_new_tokens, o)
                for name, o in options.items()}
    results, fixed, warm = {name: [] for name in decoders}, [], set()
    for text in tqdm(texts, desc="prompts", unit="prompt"):
        batch = encode_prompts(tok, [text])
        if batch.tokens.shape not in warm:  # a loop's first call after compiling is slower than the rest
            warm.add(batch.tokens.shape)
            for decoder in decoders.values():
                decoder.generate(batch)
        runs, prefills = {name: [] for name in decoders}, []
        for _ in range(repeats):
            prefills.append(decoders["autoregressive"].generate(batch, max_new_tokens=1).seconds)
            for name, decoder in decoders.items():
                runs[name].append(decoder.generate(batch))
        for name, rows in runs.items():
            results[name].append(sorted(rows, key=lambda r: r.seconds)[len(rows) // 2])
        fixed.append(statistics.median(prefills))
    return results, fixed


def round_ms(result, fixed: float) -> float:
    """Milliseconds a round of the decode loop took: the decode's time less its fixed cost, over its rounds."""
    return 1000 * (result.seconds - fixed) / max(result.outputs[0].rounds, 1)


def decode_rate(result, fixed: float) -> float:
    """Tokens per second of the loop alone (the first token comes from the prefill)."""
    return (result.new_tokens - 1) / (result.seconds - fixed)


def summarise(results, fixed, config, costs: dict, draft_vocab: int = 0):
    """Per configuration: tokens/s and speedup over autoregressive as a caller sees them (prefill included)
    and of the loop alone (`decode_speedup`); milliseconds per round and the loop's efficiency against its
    passes timed alone (`pass_costs`): a round's predicted cost over its measured one."""
    reference = results["autoregressive"]
    summary = {}
    for name, runs in results.items():
        first = runs[0]
        row = {"tokens_per_second": statistics.median(r.tokens_per_second for r in runs),
               "speedup": statistics.median(r.tokens_per_second / a.tokens_per_second
                                            for r, a in zip(runs, reference)),
               "decode_speedup": statistics.median(decode_rate(r, f) / decode_rate(a, f)
                                                   for r, a, f in zip(runs, reference, fixed)),
               "round_ms": statistics.median(round_ms(r, f) for r, f in zip(runs, fixed)),
               "identical_to_autoregressive": all(r.outputs[0].token_ids == a.outputs[0].token_ids
                                                  for r, a in zip(runs, reference)),
               "strategy": first.strategy, "exit_layer": first.exit_layer,
               "num_speculations": first.num_speculations}
        if first.strategy == "autoregressive":
            row["loop_efficiency"] = costs["full"] / row["round_ms"]
        elif first.strategy == "early_exit":
            row["loop_efficiency"] = costs[f"draft E={first.exit_layer}"] / row["round_ms"]
        elif first.strategy == "self_speculative":
            drafted = sum(r.outputs[0].drafted for r in runs)
            accepted = sum(r.outputs[0].accepted for r in runs)
            rounds = sum(r.outputs[0].rounds for r in runs)
            tokens_per_round, drafts_per_round = 1 + accepted / rounds, drafted / rounds
            bound = analytic_bound(tokens_per_round, drafts_per_round, first.exit_layer, config.num_layers)
            shape = (first.exit_layer, first.num_speculations, draft_vocab)
            measured = cost_bound(tokens_per_round, drafts_per_round, costs, *shape)
            predicted_round = round_cost(drafts_per_round, costs, *shape)
            row.update(confidence=first.confidence, drafted=drafted, accepted=accepted,
                       acceptance_rate=accepted / drafted,
                       tokens_per_round=tokens_per_round, drafts_per_round=drafts_per_round,
                       analytic_bound=bound, efficiency=row["decode_speedup"] / bound,
                       cost_bound=measured, cost_efficiency=row["decode_speedup"] / measured,
                       loop_efficiency=predicted_round / row["round_ms"])
        summary[name] = row
    return summary


def ceiling(config, params, tok, texts, exit_layer: int, ds, costs: dict, max_new_tokens: int, repeats: int,
            target: float, draft_vocabs=(), ranking=None) -> dict:
    """Autoregressive and self-speculative (E, d) decoding on `silence_deep_layers` weights: every draft is
    accepted, so the speedup is the most these loops give at this E and d on this machine, and its ratio to
    the cost model's bound (tokens per round d + 1) is their efficiency with acceptance out of the picture. A
    round's time does not depend on what is accepted (its passes have static widths), so the speedup at a
    per-token acceptance a is this one scaled by tokens_per_round(a, d) / (d + 1); `acceptance_for_target` is
    the a at which that reaches `target` (None: not even at a = 1).

    Each reduced draft vocabulary K runs on those weights with the head confined to its K tokens
    (`confine_head`), against its own autoregressive run on them: a trained exit mostly predicts frequent
    tokens, and an untrained one would otherwise lose most drafts to the subset rather than show its speed."""
    silenced = silence_deep_layers(params, exit_layer)
    rows, autoregressive = {}, None
    for k in (0, *draft_vocabs):
        options = {"autoregressive": {"strategy": "autoregressive"}}
        options.update({speculative_name(exit_layer, d, 0, k): {
            "strategy": "self_speculative", "exit_layer": exit_layer, "num_speculations": d, "draft_vocab": k,
            "draft_ranking": ranking if k else None} for d in ds})
        weights = confine_head(config, silenced, ranking[:k]) if k else silenced
        summary = summarise(*sweep(config, weights, tok, texts, options, max_new_tokens, repeats), config, costs, k)
        autoregressive = autoregressive or summary["autoregressive"]
        for name in (n for n in options if n != "autoregressive"):
            row = summary[name]
            needed = target * row["tokens_per_round"] / row["decode_speedup"]
            rows[name] = {**row, "draft_vocab": k,
                          "acceptance_for_target": acceptance_for(needed, row["num_speculations"])}
    return {"exit_layer": exit_layer, "target": target, "autoregressive_token_ms": autoregressive["round_ms"],
            "autoregressive_loop_efficiency": autoregressive["loop_efficiency"],
            "identical_to_autoregressive": all(row["identical_to_autoregressive"] for row in rows.values()),
            "rows": rows}


def batched(config, params, tok, texts, best: dict, batch_sizes, max_new_tokens: int):
    """tokens/s of autoregressive and the best self-speculative setting at each batch size (median of 3)."""
    rows = []
    for size in batch_sizes:
        batch = encode_prompts(tok, [texts[i % len(texts)] for i in range(size)])
        figures = {}
        for name, o in (("autoregressive", {"strategy": "autoregressive"}), ("self_speculative", best)):
            decoder = make_decoder(config, params, tok, max_new_tokens, o)
            figures[name] = statistics.median(decoder.generate(batch).tokens_per_second for _ in range(3))
        rows.append({"batch_size": size, **{f"{k}_tokens_per_second": v for k, v in figures.items()},
                     "speedup": figures["self_speculative"] / figures["autoregressive"]})
        print(f"batch {size:3d}: autoregressive {figures['autoregressive']:8.1f} tok/s, self-speculative "
              f"{figures['self_speculative']:8.1f} tok/s, speedup {rows[-1]['speedup']:.2f}x")
    return rows


def streaming_overhead(config, params, tok, texts, best: dict, max_new_tokens: int, repeats: int = 15):
    """The best setting (batch 1) decoded in one call and streamed, back to back on each prompt `repeats`
    times: medians of the seconds, and the median and quartiles of the paired ratios streamed / one call
    (pairs cancel most of the machine's drift). Both are timed as the caller waits for them, host transfers
    and the fetch of the output included (`generate`'s own seconds leave those out)."""
    decoder = make_decoder(config, params, tok, max_new_tokens, best)
    whole, streamed = [], []
    for text in texts:
        batch = encode_prompts(tok, [text])
        for _ in decoder.stream(batch):  # compiles the streaming loop for this bucket
            pass
        for _ in range(repeats):
            start = time.perf_counter()
            decoder.generate(batch)
            whole.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in decoder.stream(batch):
                pass
            streamed.append(time.perf_counter() - start)
    q1, ratio, q3 = statistics.quantiles([s / w for s, w in zip(streamed, whole)], n=4)
    return {"one_call_seconds": statistics.median(whole), "streamed_seconds": statistics.median(streamed),
            "ratio": ratio, "ratio_quartiles": [q1, q3], "pairs": len(whole)}


def memory(config, params, tok, text, best: dict, max_new_tokens: int):
    """XLA's bytes for arguments + outputs + temporaries of each compiled loop (batch 1)."""
    batch = encode_prompts(tok, [text])
    out = {}
    for name, o in (("autoregressive", {"strategy": "autoregressive"}), ("self_speculative", best)):
        decoder = make_decoder(config, params, tok, max_new_tokens, o)
        analysis = decoder.compiled(batch).memory_analysis()
        out[name] = int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
                        - analysis.alias_size_in_bytes)
    out["ratio"] = out["self_speculative"] / out["autoregressive"]
    return out


def speculative_name(exit_layer: int, d: int, confidence: float, draft_vocab: int = 0) -> str:
    return (f"self_speculative E={exit_layer} d={d}" + (f" c={confidence:g}" if confidence else "")
            + (f" K={draft_vocab}" if draft_vocab else ""))


def plot(summary, exit_layers, ds, confidences, roof: dict, path: Path):
    """Speedups of self-speculative decoding with their cost-model bounds, acceptance, lossy early exit, and the
    speedup each d would give at a per-token acceptance a (the ceiling's, scaled) with the model's."""
    fig, (ax1, ax2, ax3, ax4) = plt.subplots(1, 4, figsize=(20, 4.2))
    for c in confidences:
        for d in ds:
            names = [speculative_name(e, d, c) for e in exit_layers]
            if names[0] not in summary:
                continue
            label = f"d={d}" + (f", c={c:g}" if c else "")
            line, = ax1.plot(exit_layers, [summary[n]["decode_speedup"] for n in names], marker="o",
                             linestyle="-" if not c else ":", label=label)
            if not c:
                ax1.plot(exit_layers, [summary[n]["analytic_bound"] for n in names], linestyle="--", alpha=0.4,
                         color=line.get_color())
            ax2.plot(exit_layers, [summary[n]["acceptance_rate"] for n in names], marker="o",
                     linestyle=line.get_linestyle(), color=line.get_color(), label=label)
    ax1.axhline(1.0, color="grey", label="autoregressive")
    ax3.plot(exit_layers, [summary[f"early_exit E={e}"]["decode_speedup"] for e in exit_layers], "k--", marker="x")
    ax3.axhline(1.0, color="grey")
    ax1.set(xlabel="exit layer E", ylabel="speedup over autoregressive (median over prompts)",
            title="Self-speculative (exact); dashed: cost-model bound")
    ax2.set(xlabel="exit layer E", ylabel="accepted / drafted", ylim=(0, 1.02), title="Draft acceptance rate")
    ax3.set(xlabel="exit layer E", ylabel="speedup over autoregressive", title="Early exit (lossy)")
    for ax in (ax1, ax2, ax3):
        ax.set_xticks(exit_layers)
    exit_layer, grid = roof["exit_layer"], np.linspace(0.5, 1.0, 101)
    for name, row in roof["rows"].items():
        d = row["num_speculations"]
        scale = row["decode_speedup"] / row["tokens_per_round"]
        label = f"d={d}" + (f" K={row['draft_vocab']}" if row["draft_vocab"] else "")
        line, = ax4.plot(grid, [tokens_per_round(a, d) * scale for a in grid], label=label,
                         linestyle=":" if row["draft_vocab"] else "-")
        model_row = summary.get(name)
        if model_row is not None:  # the model's own point at this (E, d), without a confidence threshold
            ax4.plot(acceptance_for(model_row["tokens_per_round"], d), model_row["decode_speedup"], "o",
                     color=line.get_color())
    ax4.axhline(roof["target"], color="grey", linestyle="--", label=f"{roof['target']:g}x")
    ax4.axhline(1.0, color="grey")
    ax4.set(xlabel="per-token acceptance a", ylabel="speedup over autoregressive",
            title=f"E={exit_layer}: speedup at acceptance a, from the ceiling (dots: this model)")
    for ax in (ax1, ax2, ax4):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ceilings(roofs, path: Path):
    """The loop speedup of every ceiling by d: a line per (E, draft vocabulary), dotted with a reduced one."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, roof in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4, roofs):
        by_vocab = {}
        for row in roof["rows"].values():
            by_vocab.setdefault(row["draft_vocab"], []).append((row["num_speculations"], row["decode_speedup"]))
        for k, points in by_vocab.items():
            ds, speedups = zip(*sorted(points))
            ax.plot(ds, speedups, marker="o", linestyle=":" if k else "-", color=color,
                    label=f"E={roof['exit_layer']}" + (f", K={k}" if k else ", full head"))
    ax.axhline(1.0, color="grey")
    ax.set(xlabel="drafts per round d", ylabel="loop speedup over autoregressive (prefill out)",
           title="The ceiling: every draft accepted")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    config, params, tok = checkpoints.load_model(args.checkpoint, dtype=args.dtype)
    exit_layers = args.exit_layers or list(range(1, config.num_layers // 2 + 1))
    texts = list(prompts.humaneval_problems().values())[:args.num_prompts]
    options = {"autoregressive": {"strategy": "autoregressive"}}
    options.update({f"early_exit E={e}": {"strategy": "early_exit", "exit_layer": e} for e in exit_layers})
    options.update({speculative_name(e, d, c): {"strategy": "self_speculative", "exit_layer": e,
                                                 "num_speculations": d, "confidence": c}
                    for e in exit_layers for d in args.num_speculations for c in args.confidences
                    if d > 1 or not c})  # a round always keeps its first draft: a threshold cannot shorten d = 1
    all_ds = sorted(set(args.num_speculations) | set(args.ceiling_speculations))
    longest_draft = decoding.Settings(strategy="self_speculative", num_speculations=max(all_ds),
                                      output_size=args.max_new_tokens)
    cache_length = decoding.cache_length(longest_draft, encode_prompts(tok, texts[:1]).tokens.shape[1])
    ranking = draft_vocab.for_checkpoint(args.checkpoint, tok) if args.ceiling_draft_vocabs else None
    cost_exits = sorted(set(exit_layers) | set(args.ceiling_exit_layers or []))
    costs = pass_costs(config, params, cost_exits, all_ds, cache_length, args.ceiling_draft_vocabs, ranking)
    print("pass costs (ms, cached): " + ", ".join(f"{k} {v:.3f}" for k, v in costs.items()))
    summary = summarise(*sweep(config, params, tok, texts, options, args.max_new_tokens, args.repeats), config, costs)
    print(f"{'configuration':38s} {'tok/s':>8s} {'speedup':>8s} {'loop':>6s} {'round':>8s} {'loop':>6s} "
          f"{'accept':>7s} {'bound':>6s} {'effic.':>6s} {'costs':>6s} {'effic.':>6s} exact")
    print(f"{'':38s} {'':>8s} {'':>8s} {'speedup':>6s} {'ms':>8s} {'effic.':>6s}")
    for name, row in summary.items():
        extra = (f"{row['acceptance_rate']:7.3f} {row['analytic_bound']:6.2f} {row['efficiency']:6.2f} "
                 f"{row['cost_bound']:6.2f} {row['cost_efficiency']:6.2f}" if "efficiency" in row else " " * 35)
        loop = f"{row['loop_efficiency']:6.2f}" if "loop_efficiency" in row else " " * 6
        print(f"{name:38s} {row['tokens_per_second']:8.1f} {row['speedup']:7.2f}x {row['decode_speedup']:5.2f}x "
              f"{row['round_ms']:8.2f} {loop} {extra} {row['identical_to_autoregressive']}")
    speculative = {n: r for n, r in summary.items() if r["strategy"] == "self_speculative"}
    best_name = max(speculative, key=lambda n: speculative[n]["speedup"])
    best = {"strategy": "self_speculative", **{k: speculative[best_name][k]
                                               for k in ("exit_layer", "num_speculations", "confidence")}}
    print(f"best: {best_name}: speedup {speculative[best_name]['speedup']:.2f}x, "
          f"efficiency {speculative[best_name]['efficiency']:.2f}")
    roofs = [ceiling(config, params, tok, texts, e, args.ceiling_speculations, costs, args.max_new_tokens,
                     args.repeats, args.target, args.ceiling_draft_vocabs, ranking)
             for e in args.ceiling_exit_layers or [best["exit_layer"]]]
    for roof in roofs:
        print(f"ceiling (layers >= {roof['exit_layer']} silenced: every draft accepted; autoregressive "
              f"{roof['autoregressive_token_ms']:.3f} ms/token, loop efficiency "
              f"{roof['autoregressive_loop_efficiency']:.2f}; outputs identical: {roof['identical_to_autoregressive']}):")
        for name, row in roof["rows"].items():
            needed = row["acceptance_for_target"]
            print(f"  {name:36s} loop speedup {row['decode_speedup']:5.2f}x (with prefill {row['speedup']:5.2f}x)  "
                  f"tokens/round {row['tokens_per_round']:5.2f}  bound {row['analytic_bound']:5.2f}  costs "
                  f"{row['cost_bound']:5.2f}  round {row['round_ms']:7.3f} ms  loop efficiency "
                  f"{row['loop_efficiency']:5.2f}  {args.target:g}x needs per-token acceptance "
                  + (f"{needed:.3f}" if needed is not None else "> 1"))
    by_batch = batched(config, params, tok, texts, best, args.batch_sizes, args.max_new_tokens)
    streaming = streaming_overhead(config, params, tok, texts[:3], best, args.max_new_tokens)
    print(f"streaming: {streaming['streamed_seconds']:.3f} s against {streaming['one_call_seconds']:.3f} s in one "
          f"call; paired ratio {streaming['ratio']:.3f} (quartiles {streaming['ratio_quartiles'][0]:.3f} - "
          f"{streaming['ratio_quartiles'][1]:.3f}, {streaming['pairs']} pairs)")
    footprint = memory(config, params, tok, texts[0], best, args.max_new_tokens)
    print(f"memory (arguments + outputs + temporaries, batch 1): autoregressive {footprint['autoregressive'] / 2**20:.2f}"
          f" MiB, self-speculative {footprint['self_speculative'] / 2**20:.2f} MiB, ratio {footprint['ratio']:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": str(args.checkpoint), "device": jax.devices()[0].device_kind,
              "num_prompts": len(texts), "max_new_tokens": args.max_new_tokens, "num_layers": config.num_layers,
              "dtype": config.dtype, "pass_costs_ms": costs, "summary": summary, "best": best_name,
              "ceilings": roofs, "batch_sizes": by_batch,
              "memory_bytes": footprint,
              "streaming": streaming}
    (args.out / "decode.json").write_text(json.dumps(result, indent=2))
    best_roof = next((r for r in roofs if r["exit_layer"] == best["exit_layer"]), roofs[0])
    plot(summary, exit_layers, args.num_speculations, args.confidences, best_roof, args.out / "decode.png")
    plot_ceilings(roofs, args.out / "ceilings.png")
    print(f"wrote {args.out / 'decode.json'}, {args.out / 'decode.png'} and {args.out / 'ceilings.png'}")


if __name__ == "__main__":
    main()
