"""Breaks lsjax on purpose, one fault at a time, and checks that the fast tests catch every one.

    python -m tests.mutants            # every mutant (21 minutes on 2 cores)
    python -m tests.mutants --list
    python -m tests.mutants greedy-stale-slot kl-direction
    python -m tests.mutants rotation-plus --tests tests/test_early_exit_loss.py::test_rotational_curriculum_over_three_groups_equals_hand_computed

Each mutant is a small wrong version of a core rule (acceptance, rollback, the draft schedule, layer-dropout
masks, curricula, the KL term, attention grouping, the exported weights' layout), the kind of bug a refactor
introduces without any test noticing. It is applied to a copy of the repository, never to the working tree,
and the tests that guard the rule run against the copy; a mutant that no test catches "survives" and the
command exits 1. A mutant whose code no longer exists (the rule was rewritten) is reported "stale": rewrite
the mutant for the new code, since `tests/test_mutants.py` fails until every mutant applies.

When you change a core rule, add its mutant here and watch it get caught before trusting the suite.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Mutant(NamedTuple):
    what: str  # the fault, in words
    file: str  # relative to the repository root
    old: str  # the right code, exactly once in the file
    new: str  # the wrong code
    tests: str  # the test files (or node ids) that must catch it, space-separated


MUTANTS: dict[str, Mutant] = {
    "greedy-stale-slot": Mutant(
        "greedy acceptance counts a draft slot the row never filled this round",
        "lsjax/decoding/self_speculative.py",
        "match = (drafts == target[:, :d]) & (jnp.arange(d)[None, :] < n[:, None])",
        "match = drafts == target[:, :d]",
        "tests/test_decoding.py"),
    "sampled-stale-slot": Mutant(
        "sampled acceptance can keep a draft slot the row never filled this round",
        "lsjax/decoding/self_speculative.py",
        "keep = (jax.random.uniform(uniform_key, (batch, d)) * q_draft < p_draft) & (jnp.arange(d)[None, :] < n[:, None])",
        "keep = jax.random.uniform(uniform_key, (batch, d)) * q_draft < p_draft",
        "tests/test_decoding.py"),
    "bonus-from-last-draft": Mutant(
        "after every draft is accepted, the bonus token is drawn from p at the last draft's position",
        "lsjax/decoding/self_speculative.py",
        "final = jnp.where(rejected, residual / jnp.where(residual_mass > 0, residual_mass, 1.0), p_next)",
        "final = jnp.where(rejected, residual / jnp.where(residual_mass > 0, residual_mass, 1.0), "
        "p[rows, jnp.maximum(accepted - 1, 0)])",
        "tests/test_decoding.py"),
    "bonus-from-position-d": Mutant(
        "the bonus token is drawn from p at position d, whatever the row's draft count n",
        "lsjax/decoding/self_speculative.py",
        "final = jnp.where(rejected, residual / jnp.where(residual_mass > 0, residual_mass, 1.0), p_next)",
        "final = jnp.where(rejected, residual / jnp.where(residual_mass > 0, residual_mass, 1.0), "
        "p[rows, jnp.full_like(accepted, d)])",
        "tests/test_decoding.py"),
    "residual-wrong-position": Mutant(
        "the residual at the first rejection subtracts the draft distribution of the position before",
        "lsjax/decoding/self_speculative.py",
        "residual = jnp.maximum(p_next - q[rows, jnp.minimum(accepted, d - 1)], 0.0)",
        "residual = jnp.maximum(p_next - q[rows, jnp.maximum(accepted - 1, 0)], 0.0)",
        "tests/test_decoding.py"),
    "rollback-short": Mutant(
        "under sampling, a round rolls the cache back one slot too far",
        "lsjax/decoding/self_speculative.py",
        "state = state.replace(cache=cache.replace(length=jnp.where(active, base + accepted + 1, base)),",
        "state = state.replace(cache=cache.replace(length=jnp.where(active, base + accepted + int("
        "settings.sampling.greedy), base)),",
        "tests/test_decoding.py"),
    "schedule-plus-one": Mutant(
        "the heuristic schedule adds 1 draft after a full acceptance (instead of 2)",
        "lsjax/decoding/self_speculative.py",
        "jnp.where(accepted >= n, want + 2, want - 1)", "jnp.where(accepted >= n, want + 1, want - 1)",
        "tests/test_decoding.py"),
    "schedule-minus-two": Mutant(
        "the heuristic schedule removes 2 drafts after a rejection (instead of 1)",
        "lsjax/decoding/self_speculative.py",
        "jnp.where(accepted >= n, want + 2, want - 1)", "jnp.where(accepted >= n, want + 2, want - 2)",
        "tests/test_decoding.py"),
    "micro-batch-local-index": Mutant(
        "layer-dropout masks drawn from micro-batch-local sample indices instead of global ones",
        "lsjax/train.py",
        '        (loss, (out, layers)), g = grad_fn(state["params"], micro_batch, step)',
        '        micro_batch = {**micro_batch, "sample_index": jnp.arange(micro_batch["sample_index"].shape[0])}\n'
        '        (loss, (out, layers)), g = grad_fn(state["params"], micro_batch, step)',
        "tests/test_objective.py tests/test_layer_dropout.py"),
    "depth-scale-reversed": Mutant(
        "D(l) reversed: the first layer is dropped most",
        "lsjax/layer_dropout.py",
        "return time_scale(time_kind, step, total_steps) * jnp.asarray(layer_scale(layer_kind, num_layers)) * p_max",
        "return time_scale(time_kind, step, total_steps) * jnp.asarray(layer_scale(layer_kind, num_layers)[::-1]) "
        "* p_max",
        "tests/test_objective.py tests/test_layer_dropout.py"),
    "rotation-plus": Mutant(
        "the rotational curriculum enables (l + t) mod R == 0 instead of (l - t) mod R == 0",
        "lsjax/early_exit_loss.py",
        "return ((layers - step) % rotation == 0) | last", "return ((layers + step) % rotation == 0) | last",
        "tests/test_early_exit_loss.py"),
    "kl-direction": Mutant(
        "self-distillation computes KL(exit || last) instead of KL(last || exit)",
        "lsjax/early_exit_loss.py",
        "kl = jnp.sum(jnp.exp(teacher)[None] * (teacher[None] - log_probs), axis=-1)",
        "kl = jnp.sum(jnp.exp(log_probs) * (log_probs - teacher[None]), axis=-1)",
        "tests/test_early_exit_loss.py"),
    "gqa-interleaved": Mutant(
        "grouped-query attention gives query head h the KV head h mod KV (instead of h // (H / KV))",
        "lsjax/attention.py",
        "    return q.reshape(b, t, kv_heads, h // kv_heads, hd)\n",
        "    return q.reshape(b, t, h // kv_heads, kv_heads, hd).swapaxes(2, 3)\n",
        "tests/test_model.py"),
    "activations-follow-weights": Mutant(
        "activation constraints never apply (as when a step is not traced under its mesh): the residual "
        "stream follows FSDP's split of the weights",
        "lsjax/sharding.py",
        "    if mesh.empty or set(MESH_AXES) - set(mesh.axis_names):\n        return x",
        "    if True:\n        return x",
        "tests/test_memory.py"),
    "remat-ignored": Mutant(
        "the remat policy is never applied to the layer scan",
        "lsjax/model.py",
        '    if config.remat != "none":\n        body = jax.checkpoint(',
        '    if config.remat == "never":\n        body = jax.checkpoint(',
        "tests/test_memory.py"),
    "blockwise-no-rescale": Mutant(
        "blockwise attention forgets to rescale the running output when a later block raises the maximum",
        "lsjax/attention.py",
        "        acc = acc * correction[..., None] + jnp.einsum(",
        "        acc = acc + jnp.einsum(",
        "tests/test_model.py"),
    "cache-write-shifted": Mutant(
        "the KV cache writes the new tokens one slot late",
        "lsjax/model.py",
        "slots = write_index[:, None] + jnp.arange(t, dtype=write_index.dtype)[None, :]",
        "slots = write_index[:, None] + 1 + jnp.arange(t, dtype=write_index.dtype)[None, :]",
        "tests/test_kvcache.py"),
    "prefill-wrong-position": Mutant(
        "the prefill unembeds the position after each right-padded row's last prompt token",
        "lsjax/kvcache.py",
        "        new_length, last = prompt_lengths, prompt_lengths - 1",
        "        new_length, last = prompt_lengths, jnp.minimum(prompt_lengths, t - 1)",
        "tests/test_kvcache.py"),
    "unrolled-previous-buffer": Mutant(
        "the unrolled decoding layout attends over the previous layer's K/V buffer",
        "lsjax/model.py",
        "buffers=(k_buffers[index], v_buffers[index]), write_index=write_index,",
        "buffers=(k_buffers[index - 1], v_buffers[index]), write_index=write_index,",
        "tests/test_kvcache.py"),
    "stacked-cache-wrong-layer": Mutant(
        "the stacked decoding layout writes each layer's new keys into the next layer's slice of the stack",
        "lsjax/model.py",
        "index = (rows, slots) if layer is None else (layer, rows, slots)",
        "index = (rows, slots) if layer is None else ((layer + 1) % buffer.shape[0], rows, slots)",
        "tests/test_kvcache.py"),
    "draft-vocab-leaks": Mutant(
        "a reduced draft vocabulary gives the tokens outside it logit 0 instead of -inf",
        "lsjax/decoding/self_speculative.py",
        "return jnp.full((x.shape[0], config.vocab_size), -jnp.inf, jnp.float32).at[:, knobs.draft_ids].set(subset)",
        "return jnp.full((x.shape[0], config.vocab_size), 0.0, jnp.float32).at[:, knobs.draft_ids].set(subset)",
        "tests/test_decoding.py::test_draft_logits_over_a_subset_are_the_heads_and_minus_infinity_elsewhere "
        "tests/test_decoding.py::test_a_reduced_draft_vocabulary_keeps_greedy_output"),
    "free-rollback-at-current": Mutant(
        "FREE's rollback rewrites only the current token: skipped tokens past the rollback loss stay",
        "lsjax/decoding/free.py",
        "at = jnp.where(rewrite, jnp.argmax(bad, axis=1), kept)",
        "at = kept",
        "tests/test_free.py::test_free_rollback_at_zero_is_autoregressive_and_unreachable_changes_nothing"),
    "free-rollback-keeps-cache": Mutant(
        "FREE's rollback rewinds the output but not the cache: the dropped tokens' K/V stay visible",
        "lsjax/decoding/free.py",
        "cache=cache.replace(length=jnp.where(active, base + 1 - rewind, base))",
        "cache=cache.replace(length=jnp.where(active, base + 1, base))",
        "tests/test_free.py::test_free_rollback_at_zero_is_autoregressive_and_unreachable_changes_nothing "
        "tests/test_free.py::test_free_deep_cache_of_skipped_tokens_equals_a_full_forward"),
    "tied-exports-head": Mutant(
        "a tied model exports lm_head.weight beside the embedding",
        "lsjax/hf.py",
        '    if not config.tie_word_embeddings:\n        kernel = params["lm_head"]["kernel"]\n'
        '        sources.append(("lm_head.weight", kernel, _fetch(kernel, None, lambda w, c: w.T, config)))',
        '    kernel = params["lm_head"]["kernel"].T if not config.tie_word_embeddings else embedding\n'
        '    sources.append(("lm_head.weight", kernel, _fetch(kernel, None, _same, config)))',
        "tests/test_hf.py"),
}


def stale(root: Path = ROOT) -> dict[str, str]:
    """{name: why} for the mutants whose right code is not exactly once in its file."""
    out = {}
    for name, m in MUTANTS.items():
        count = (root / m.file).read_text().count(m.old)
        if count != 1:
            out[name] = f"{m.file}: the code it breaks occurs {count} times (expected once)"
    return out


def _copy_of_repository(destination: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def run(name: str, copy: Path, tests: str | None = None) -> tuple:
    """(caught, the first failing test or pytest's last line, seconds) for one mutant applied to `copy`,
    running its own tests or `tests` (space-separated files or node ids)."""
    m = MUTANTS[name]
    path = copy / m.file
    right = path.read_text()
    path.write_text(right.replace(m.old, m.new))
    start = time.perf_counter()
    try:
        # -m puts the copy first on sys.path, so its lsjax is imported, not the installed one
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider",
                               "--hypothesis-profile=mutants", *(tests or m.tests).split()], cwd=copy, capture_output=True,
                              text=True)
    finally:
        path.write_text(right)
    lines = proc.stdout.strip().splitlines()
    failed = [line.split(" - ")[0].removeprefix("FAILED ") for line in lines if line.startswith("FAILED")]
    caught = proc.returncode == 1 and bool(failed)
    return caught, failed[0] if failed else (lines[-1] if lines else proc.stderr.strip()[-200:]), \
        time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--tests", help="run these tests (files or node ids, space-separated) instead of each "
                                        "mutant's own: does this test alone catch the fault?")
    args = parser.parse_args(argv)
    if args.list:
        for name, m in MUTANTS.items():
            print(f"{name:26s} {m.what}  [{m.tests}]")
        return 0
    unknown = [n for n in args.names if n not in MUTANTS]
    if unknown:
        print(f"error: unknown mutant {unknown[0]!r}; expected one of {sorted(MUTANTS)}", file=sys.stderr)
        return 2
    names = args.names or list(MUTANTS)
    broken = stale()
    survivors = []
    with tempfile.TemporaryDirectory(prefix="lsjax-mutants-") as tmp:
        copy = _copy_of_repository(Path(tmp))
        for name in names:
            if name in broken:
                print(f"STALE     {name}: {broken[name]}", flush=True)
                survivors.append(name)
                continue
            caught, detail, seconds = run(name, copy, args.tests)
            print(f"{'caught' if caught else 'SURVIVED':9s} {name} ({seconds:.0f} s): {detail}", flush=True)
            if not caught:
                survivors.append(name)
    print(f"{len(names) - len(survivors)} of {len(names)} mutants caught" +
          (f"; not caught: {', '.join(survivors)}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
