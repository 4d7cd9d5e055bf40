"""Decode with an lsjax model.

    python decode.py [--checkpoint DIR] [--prompt TEXT | --prompt-file F | --humaneval IDS]
                     [--max-new-tokens N] [--json]

DIR is a Hugging Face Llama directory (config.json, safetensors, tokenizer.json); the default is the
embedded model at models/embedded. Bad input ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "models" / "embedded"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                        help="Hugging Face Llama directory (default: models/embedded)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="prompt text")
    source.add_argument("--prompt-file", type=Path, help="file whose text is the prompt")
    source.add_argument("--humaneval", default="HumanEval/0",
                        help="comma-separated HumanEval task ids or indices (default: HumanEval/0)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser.parse_args(argv)


def read_prompts(args) -> list[str]:
    from lsjax import prompts
    if args.prompt is not None:
        return [args.prompt]
    if args.prompt_file is not None:
        return [prompts.read_text_file(args.prompt_file)]
    return prompts.humaneval(args.humaneval.split(","))


def load_model(checkpoint: Path):
    from lsjax import demo, hf, tokenizer
    if checkpoint == DEFAULT_CHECKPOINT and not checkpoint.exists():
        print(f"note: {checkpoint} is not trained yet (configs/embedded.py, issue 3); decoding with a random "
              "untrained model, so the text is noise: this run shows the pipeline, not a model.", file=sys.stderr)
        return demo.random_model()
    config, params = hf.load(checkpoint)
    return config, params, tokenizer.load(checkpoint)


def main(argv=None) -> int:
    args = parse_args(argv)
    from lsjax import generation
    from lsjax.errors import InputError
    try:
        if args.max_new_tokens < 1:
            raise InputError(f"--max-new-tokens={args.max_new_tokens}: expected a positive integer")
        texts = read_prompts(args)
        config, params, tok = load_model(args.checkpoint)
        batch = generation.encode_prompts(tok, texts)
        generation.check_fits(config, batch, args.max_new_tokens)
    except InputError as err:  # bad checkpoint, tokenizer, config, prompt or flag
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = generation.run_greedy(config, params, tok, batch, args.max_new_tokens)
    if args.json:
        print(json.dumps(result))
    else:
        for text, row in zip(texts, result["outputs"]):
            print(text + row["text"])
            print(f"-- {row['new_tokens']} tokens in {row['seconds']:.2f} s "
                  f"({row['tokens_per_second']:.1f} tokens/s, compilation excluded)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
