"""Decode with an lsjax model: self-speculative by default, streaming the text, then timing it.

    python decode.py [--checkpoint DIR] [--prompt TEXT | --prompt-file F | --humaneval IDS]
                     [--strategy autoregressive|early_exit|self_speculative] [--exit-layer E]
                     [--num-speculations D] [--max-new-tokens N] [--batch-size B]
                     [--temperature T --top-k K --top-p P --seed S] [--dtype bfloat16|float32|float16]
                     [--mesh D,F,T] [--show-drafts] [--json]

DIR is a Hugging Face Llama directory (config.json, safetensors, tokenizer.json) or an lsjax training
workdir (its latest checkpoint); the default is the embedded model at models/embedded. Without --json the
first prompt's text streams as it is generated, then the tokens/s of the strategy and of autoregressive
decoding on the same prompts are printed (compilation excluded). With several devices the decode is
sharded over a (data, fsdp, tensor) mesh: prompt rows over data, heads and the KV cache's heads over tensor;
by default every local device is on the data axis. Bad input: one line, exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from lsjax import xla_cpu

xla_cpu.configure()  # before JAX starts: simulated CPU devices must not deadlock in collectives

from lsjax.checkpoints import EMBEDDED  # noqa: E402

COLOURS = {1: "\033[32m", 2: "\033[0m"}  # accepted draft tokens green, the full model's tokens plain


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=EMBEDDED,
                        help="Hugging Face Llama directory or lsjax training workdir (default: models/embedded)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="prompt text")
    source.add_argument("--prompt-file", type=Path, help="file whose text is the prompt")
    source.add_argument("--humaneval", default="HumanEval/0",
                        help="comma-separated HumanEval task ids or indices (default: HumanEval/0)")
    parser.add_argument("--strategy", default="self_speculative",
                        help="autoregressive, early_exit or self_speculative (default)")
    parser.add_argument("--exit-layer", type=int, default=None, help="E (default: a quarter of the layers)")
    parser.add_argument("--num-speculations", type=int, default=2, help="d, drafts per round (default 2)")
    parser.add_argument("--schedule", default="fixed", help="fixed, or heuristic (d +2 / -1 per round)")
    parser.add_argument("--confidence", type=float, default=0.0,
                        help="end a round's drafting when the draft's top probability falls below this")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="decode this many rows, cycling through the prompts (default: one per prompt)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["bfloat16", "float32", "float16"], default=None,
                        help="params and compute in this dtype (default: the checkpoint's)")
    parser.add_argument("--mesh", default=None,
                        help="data,fsdp,tensor device counts, -1 = the rest (default: all devices on data)")
    parser.add_argument("--show-drafts", action="store_true",
                        help="colour accepted draft tokens green (on a terminal)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser.parse_args(argv)


def read_prompts(args) -> list[str]:
    from lsjax import prompts
    from lsjax.errors import InputError
    if args.prompt is not None:
        texts = [args.prompt]
    elif args.prompt_file is not None:
        texts = [prompts.read_text_file(args.prompt_file)]
    else:
        texts = prompts.humaneval(args.humaneval.split(","))
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise InputError(f"--batch-size={args.batch_size}: expected a positive integer")
        texts = [texts[i % len(texts)] for i in range(args.batch_size)]
    return texts


def options_from(args):
    from lsjax.generation import Options
    return Options(strategy=args.strategy, exit_layer=args.exit_layer, num_speculations=args.num_speculations,
                   schedule=args.schedule, confidence=args.confidence, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def stream_text(decoder, batch, prompt: str, colour: bool) -> None:
    """Prints the first prompt and its continuation as the device produces it."""
    sys.stdout.write(prompt)
    ids = []
    for new_ids, kinds in decoder.stream(batch):
        for token, kind in zip(new_ids.tolist(), kinds.tolist()):
            before = decoder.tok.decode(ids)
            ids.append(token)
            piece = decoder.tok.decode(ids)[len(before):]
            sys.stdout.write(f"{COLOURS[kind]}{piece}\033[0m" if colour else piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    from lsjax import checkpoints, generation, sharding
    from lsjax.errors import InputError
    try:
        texts = read_prompts(args)
        mesh = sharding.mesh_from_flag(args.mesh)
        config, params, tok = checkpoints.load_model(args.checkpoint, dtype=args.dtype, mesh=mesh)
        options = options_from(args)
        decoder = generation.Decoder(config, params, tok, options, mesh=mesh)
        batch = generation.encode_prompts(tok, texts)
        generation.check_fits(config, batch, options.max_new_tokens)
    except InputError as err:  # bad checkpoint, tokenizer, config, prompt or flag
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.json:
        stream_text(decoder, batch, texts[0], colour=args.show_drafts and sys.stdout.isatty())
    result = decoder.generate(batch)
    if options.strategy != "autoregressive":
        baseline = generation.Decoder(config, params, tok, dataclasses.replace(options, strategy="autoregressive"),
                                      mesh=mesh)
        reference = baseline.generate(batch)
        result["autoregressive_tokens_per_second"] = reference["tokens_per_second"]
        result["speedup"] = result["tokens_per_second"] / reference["tokens_per_second"]
    if args.json:
        print(json.dumps(result))
        return 0
    summary = f"-- {result['new_tokens']} tokens in {result['seconds']:.2f} s: {result['tokens_per_second']:.1f} tokens/s"
    drafted = sum(row["drafted"] for row in result["outputs"])
    if drafted:
        accepted = sum(row["accepted"] for row in result["outputs"])
        summary += f", acceptance {accepted / drafted:.2f} ({accepted}/{drafted} drafts)"
    if "speedup" in result:
        summary += (f"; autoregressive {result['autoregressive_tokens_per_second']:.1f} tokens/s, "
                    f"speedup {result['speedup']:.2f}x")
    print(summary + " (compilation excluded)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
