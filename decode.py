"""Decode with an lsjax model: self-speculative by default, streaming the text, then timing it.

    python decode.py [--checkpoint DIR] [--prompt TEXT | --prompt-file F | --humaneval IDS]
                     [--strategy autoregressive|early_exit|self_speculative|speculative|calm|free]
                     [--exit-layer E] [--num-speculations D] [--draft-checkpoint DIR]
                     [--threshold X --measure softmax|top2|state --decay --stack K --rollback R]
                     [--max-new-tokens N] [--batch-size B]
                     [--temperature T --top-k K --top-p P --seed S] [--dtype bfloat16|float32|float16]
                     [--mesh D,F,T] [--show-drafts] [--json]

DIR is a Hugging Face Llama directory (config.json, safetensors, tokenizer.json) or an lsjax training
workdir (its latest checkpoint); the default is the embedded model at models/embedded. The two-model
`speculative` strategy drafts with the model at --draft-checkpoint (same tokenizer); `calm` exits each token
after the first confident layer; `free` is FREE's synchronized parallel decoding with a shallow exit at
--exit-layer (its threshold adapts between batches unless --threshold is given); docs/methods.md. Without --json the
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
                        help="Hugging Face Llama directory, GGUF file or lsjax training workdir (default: models/embedded)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="prompt text")
    source.add_argument("--prompt-file", type=Path, help="file whose text is the prompt")
    source.add_argument("--humaneval", default="HumanEval/0",
                        help="comma-separated HumanEval task ids or indices (default: HumanEval/0)")
    parser.add_argument("--strategy", default="self_speculative",
                        help="autoregressive, early_exit, self_speculative (default), speculative, calm or free")
    parser.add_argument("--exit-layer", type=int, default=None,
                        help="E (default: a quarter of the layers); calm: the earliest exit (default 1)")
    parser.add_argument("--num-speculations", type=int, default=2, help="d, drafts per round (default 2)")
    parser.add_argument("--draft-checkpoint", type=Path, default=None, metavar="DIR",
                        help="the draft model of --strategy speculative (HF Llama directory or lsjax workdir)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="calm and free: exit past this confidence (default: 0.9 for calm, adaptive for free)")
    parser.add_argument("--measure", default="top2", help="calm and free: softmax, top2 (default) or state (calm)")
    parser.add_argument("--decay", action="store_true", help="calm: the threshold decays with the position")
    parser.add_argument("--stack", type=int, default=8, help="free: most tokens that skip the deep layers (8)")
    parser.add_argument("--rollback", type=float, default=None,
                        help="free: rewrite from the first skipped token whose deep loss reaches this (default off)")
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
    parser.add_argument("--draft-vocab", type=int, default=0, metavar="K",
                        help="draft over the K most frequent tokens only, verify over all (default 0: all)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32", "float16"], default=None,
                        help="params and compute in this dtype (default: the checkpoint's)")
    parser.add_argument("--mesh", default=None,
                        help="data,fsdp,tensor device counts, -1 = the rest (default: all devices on data)")
    parser.add_argument("--show-drafts", action="store_true",
                        help="colour accepted draft tokens green (on a terminal)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser.parse_args(_joined_mesh(sys.argv[1:] if argv is None else argv))


def _joined_mesh(argv: list[str]) -> list[str]:
    """`--mesh -1,1,1` as `--mesh=-1,1,1`: argparse takes a value that starts with '-' (and is not a plain
    negative number) for a flag."""
    out, rest = [], iter(argv)
    for arg in rest:
        out.append(f"--mesh={next(rest, '')}" if arg == "--mesh" else arg)
    return out


def check_flags(args) -> None:
    """Flags that contradict each other, or that JAX would not take, as one-line InputErrors."""
    from lsjax.config import SEED_LIMIT
    from lsjax.errors import InputError
    if args.exit_layer is not None and args.strategy in ("autoregressive", "speculative"):
        raise InputError(f"--exit-layer {args.exit_layer}: applies to early_exit and self_speculative (and free's "
                         f"shallow exit, calm's earliest exit), not --strategy {args.strategy}")
    if (args.draft_checkpoint is None) == (args.strategy == "speculative"):
        raise InputError("--draft-checkpoint DIR goes with --strategy speculative, and that strategy needs one")
    if not 0 <= args.seed < SEED_LIMIT:
        raise InputError(f"--seed={args.seed}: expected 0 <= seed < 2**32 (jax.random.key keeps 32 bits)")


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


def check_resources(decoder, texts: list[str]) -> None:
    """--num-speculations and --batch-size against the model and this machine, before the prompts are encoded
    and anything compiles: a round drafts d tokens into the model's context, and every row's KV cache and
    logits must fit in the memory left once the params are loaded."""
    import jax
    import numpy as np
    from lsjax.config import require_memory
    from lsjax.decoder import encode_prompts
    from lsjax.errors import InputError
    config, d = decoder.config, decoder.options.num_speculations
    if decoder.options.strategy in ("self_speculative", "speculative") and d >= config.max_position_embeddings:
        raise InputError(f"--num-speculations d={d}: expected d < max_position_embeddings="
                         f"{config.max_position_embeddings} (a round drafts d tokens into the model's context)")
    width = encode_prompts(decoder.tok, sorted(set(texts))).tokens.shape[1]
    length = decoder.cache_length(width)
    cache = (2 * config.num_layers * len(texts) * length * config.num_kv_heads * config.head_dim
             * np.dtype(config.jnp_dtype).itemsize)
    logits = 2 * len(texts) * max(width, d + 1) * config.vocab_size * 4  # float32 logits and probabilities
    devices = jax.devices()[:1] if decoder.mesh is None else list(decoder.mesh.devices.flat)
    require_memory(f"--batch-size {len(texts)}: {len(texts)} rows of a {length}-position KV cache and logits",
                   cache + logits, devices)


def options_from(args):
    from lsjax.decoder import Options
    return Options(strategy=args.strategy, exit_layer=args.exit_layer, num_speculations=args.num_speculations,
                   schedule=args.schedule, confidence=args.confidence, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                   draft_vocab=args.draft_vocab, threshold=args.threshold, measure=args.measure, decay=args.decay,
                   stack=args.stack, rollback=args.rollback)


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
    from lsjax import checkpoints, draft_vocab, sharding
    from lsjax.decoder import Decoder
    from lsjax.errors import InputError
    try:
        check_flags(args)
        texts = read_prompts(args)
        mesh = sharding.mesh_from_flag(args.mesh)
        config, params, tok = checkpoints.load_model(args.checkpoint, dtype=args.dtype, mesh=mesh)
        options = options_from(args)
        ranking = draft_vocab.for_checkpoint(args.checkpoint, tok) if options.draft_vocab else None
        draft = None
        if args.draft_checkpoint is not None:
            draft_config, draft_params, draft_tok = checkpoints.load_model(args.draft_checkpoint, dtype=args.dtype,
                                                                           mesh=mesh)
            if draft_tok.vocab_size != tok.vocab_size:
                raise InputError(f"--draft-checkpoint {args.draft_checkpoint}: its tokenizer has {draft_tok.vocab_size}"
                                 f" tokens, the model's {tok.vocab_size}: the draft must share the tokenizer")
            draft = (draft_config, draft_params)
        decoder = Decoder(config, params, tok, options, mesh=mesh, draft_ranking=ranking, draft=draft)
        check_resources(decoder, texts)
        batch = decoder.encode(texts)
    except InputError as err:  # bad checkpoint, tokenizer, config, prompt or flag
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.json:
        stream_text(decoder, batch, texts[0], colour=args.show_drafts and sys.stdout.isatty())
    result = decoder.generate(batch)
    baseline = None
    if options.strategy != "autoregressive":
        baseline = Decoder(config, params, tok, dataclasses.replace(
            options, strategy="autoregressive", draft_vocab=0, threshold=None, decay=False, rollback=None),
            mesh=mesh).generate(batch).tokens_per_second
    if args.json:  # with the ids each row was fed (BOS only where the checkpoint's tokenizer adds one)
        payload = dataclasses.asdict(result)
        if baseline is not None:
            payload.update(autoregressive_tokens_per_second=baseline, speedup=result.tokens_per_second / baseline)
        for row, ids, n in zip(payload["outputs"], batch.tokens.tolist(), batch.lengths.tolist()):
            row["prompt_token_ids"] = ids[:n]
        print(json.dumps(payload))
        return 0
    summary = f"-- {result.new_tokens} tokens in {result.seconds:.2f} s: {result.tokens_per_second:.1f} tokens/s"
    drafted = sum(row.drafted for row in result.outputs)
    if result.layers_per_token is not None:
        summary += f", {result.layers_per_token:.2f} of the layers per token at threshold {result.threshold:.2f}"
    if drafted and options.strategy in ("self_speculative", "speculative"):
        accepted = sum(row.accepted for row in result.outputs)
        summary += f", acceptance {accepted / drafted:.2f} ({accepted}/{drafted} drafts)"
    if baseline is not None:
        summary += f"; autoregressive {baseline:.1f} tokens/s, speedup {result.tokens_per_second / baseline:.2f}x"
    print(summary + " (compilation excluded)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
