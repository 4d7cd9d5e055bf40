"""decode.py end to end on checkpoints exported by lsjax, its one-line errors, and compiling once per bucket."""

import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lsjax import checkpoints, decoding, draft_vocab, hf, model, tokenizer
from lsjax.decoder import Decoder, Options, encode_prompts
from lsjax.errors import InputError

from tests.conftest import load_benchmark
from tests.random_model import random_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import decode  # noqa: E402


@pytest.mark.parametrize("strategy", ["autoregressive", "early_exit", "self_speculative"])
def test_decodes_a_prompt_as_json(checkpoint, capsys, strategy):
    assert decode.main(["--checkpoint", str(checkpoint), "--prompt", "def add(a, b):", "--max-new-tokens", "6",
                        "--strategy", strategy, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    row = result["outputs"][0]
    assert result["strategy"] == strategy and result["tokens_per_second"] > 0
    assert row["new_tokens"] == len(row["token_ids"]) <= 6
    assert row["text"] == tokenizer.load(checkpoint).decode(row["token_ids"])
    assert (row["drafted"] > 0) == (strategy == "self_speculative")
    assert ("speedup" in result) == (strategy != "autoregressive")


def test_dtype_flag_casts_the_params_once_on_load(checkpoint, capsys):
    config, params, _ = checkpoints.load_model(checkpoint, dtype="bfloat16")
    assert config.param_dtype == config.dtype == "bfloat16"
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    assert decode.main(["--checkpoint", str(checkpoint), "--prompt", "def f(x):", "--max-new-tokens", "4",
                        "--dtype", "bfloat16", "--exit-layer", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"][0]["new_tokens"] == 4


def test_streams_the_same_text_it_reports(checkpoint, capsys):
    assert decode.main(["--checkpoint", str(checkpoint), "--prompt", "x = ", "--max-new-tokens", "12",
                        "--exit-layer", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("x = ") and "tokens/s" in captured.err and "speedup" in captured.err
    decode.main(["--checkpoint", str(checkpoint), "--prompt", "x = ", "--max-new-tokens", "12", "--exit-layer", "2",
                 "--json"])
    assert captured.out == "x = " + json.loads(capsys.readouterr().out)["outputs"][0]["text"] + "\n"


def test_mesh_flag_decodes_the_same_tokens_as_one_device(checkpoint, capsys):
    outputs = []
    for mesh in ("1,1,1", "2,1,4"):
        assert decode.main(["--checkpoint", str(checkpoint), "--prompt", "def f(x):", "--batch-size", "2",
                            "--max-new-tokens", "8", "--exit-layer", "2", "--mesh", mesh, "--json"]) == 0
        outputs.append([row["token_ids"] for row in json.loads(capsys.readouterr().out)["outputs"]])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 2


def test_stream_yields_every_token_in_chunks_while_the_loop_runs(checkpoint):
    config, params, tok = checkpoints.load_model(checkpoint)
    decoder = Decoder(config, params, tok, Options(strategy="autoregressive", max_new_tokens=40))
    batch = encode_prompts(tok, ["def add(a, b):"])
    chunks = list(decoder.stream(batch))
    # the first token comes from the prefill, then 39 one-token rounds; the host hears after every
    # STREAM_EVERY rounds and after the last
    every = decoding.loop.STREAM_EVERY
    heard = [1 + r for r in range(every, 39, every)] + [40]
    assert [len(ids) for ids, _ in chunks] == np.diff([0] + heard).tolist() and len(chunks) >= 3
    streamed = [int(t) for ids, _ in chunks for t in ids]
    assert streamed == decoder.generate(batch).outputs[0].token_ids
    assert all((kinds == decoding.FROM_MODEL).all() for _, kinds in chunks)


@pytest.mark.parametrize("argv,needle", [
    (["--max-new-tokens", "0"], "max_new_tokens=0"),
    (["--humaneval", "HumanEval/999"], "HumanEval/999"),
    (["--prompt", ""], "empty prompt"),
    (["--prompt", "x" * 400], "max_position_embeddings=128"),
    (["--exit-layer", "4"], "exit layer E=4: expected 1 <= E <= 3"),
    (["--exit-layer", "0", "--strategy", "early_exit"], "exit layer E=0"),
    (["--num-speculations", "0"], "num_speculations d=0"),
    (["--temperature", "-1"], "temperature=-1.0"),
    (["--top-p", "0"], "top_p=0.0"),
    (["--top-p", "1.5"], "top_p=1.5"),
    (["--strategy", "beam"], "strategy='beam'"),
    (["--mesh", "2,2"], "--mesh='2,2'"),
    (["--mesh", "4,1,4"], "needs 16 devices but 8 are present"),
    (["--batch-size", "0"], "--batch-size=0"),
    (["--num-speculations", "100000"], "--num-speculations d=100000: expected d < max_position_embeddings=128"),
    (["--batch-size", "1000000"], "--batch-size 1000000: "),
    (["--seed", str(10 ** 23)], f"--seed={10 ** 23}: expected 0 <= seed < 2**32"),
    (["--seed", "-1"], "--seed=-1"),
    (["--prompt-file", "/dev/zero"], "--prompt-file /dev/zero: not a regular file"),
    (["--prompt-file", "/"], "--prompt-file /: not a regular file"),
    (["--exit-layer", "2", "--strategy", "autoregressive"], "--exit-layer 2: applies to early_exit and"),
    (["--mesh", "-1,1"], "--mesh='-1,1'"),
])
def test_bad_input_is_one_line_and_exit_2(checkpoint, capsys, argv, needle):
    assert decode.main(["--checkpoint", str(checkpoint), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err


def test_mesh_values_may_start_with_a_minus():
    assert decode.parse_args(["--mesh", "-1,1,1", "--prompt", "x"]).mesh == "-1,1,1"
    assert decode.parse_args(["--mesh=-1,2,1"]).mesh == "-1,2,1"


def _edit_config(key, value):
    def edit(directory):
        raw = json.loads((directory / "config.json").read_text())
        raw[key] = value
        (directory / "config.json").write_text(json.dumps(raw))
    return edit


def _poison_a_weight(directory):
    from safetensors.numpy import load_file, save_file
    tensors = load_file(directory / hf.WEIGHTS_NAME)
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan
    save_file(tensors, directory / hf.WEIGHTS_NAME)


@pytest.mark.parametrize("edit,needle", [
    (lambda d: (d / "config.json").write_text("[1, 2]"), "expected a JSON object of model fields, got a list"),
    (_edit_config("max_position_embeddings", "abc"), "max_position_embeddings='abc': expected an integer"),
    (_edit_config("rope_scaling", "llama3"), "rope_scaling='llama3': expected an object"),
    (_edit_config("eos_token_id", "2"), "eos_token_id='2': expected a token id or a list of token ids"),
    (_edit_config("vocab_size", 300), "the tokenizer has 1024 tokens but the model's embedding has 300 rows"),
    (_poison_a_weight, "non-finite weights in ['layers']['mlp']['up']"),
])
def test_a_bad_checkpoint_is_one_line_and_exit_2(checkpoint, tmp_path, capsys, edit, needle):
    directory = tmp_path / "ckpt"
    shutil.copytree(checkpoint, directory)
    edit(directory)
    assert decode.main(["--checkpoint", str(directory), "--prompt", "x", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err


@pytest.mark.parametrize("config_json,needle", [
    (None, "no tokenizer"),  # a blank tokenizer path and no workdir tokenizer: an error, never a tokenizer trained
    ("[]", "not an lsjax training config"),
])
def test_a_workdir_without_a_usable_config_or_tokenizer_is_one_line_and_untouched(tmp_path, capsys, config_json,
                                                                                   needle):
    from tests.test_train import tiny_config
    (tmp_path / checkpoints.WORKDIR_CHECKPOINTS).mkdir()
    (tmp_path / "config.json").write_text(config_json or tiny_config().to_json())
    before = sorted(tmp_path.rglob("*"))
    assert decode.main(["--checkpoint", str(tmp_path), "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err
    assert sorted(tmp_path.rglob("*")) == before


def test_not_a_checkpoint(tmp_path, capsys):
    assert decode.main(["--checkpoint", str(tmp_path)]) == 2
    assert "not a checkpoint" in capsys.readouterr().err


def test_a_new_prompt_in_the_same_bucket_does_not_recompile(checkpoint):
    config, params = hf.load(checkpoint)
    tok = tokenizer.load(checkpoint)
    decoder = Decoder(config, params, tok, Options(max_new_tokens=8, exit_layer=2))
    jax.clear_caches()  # the same program may have been compiled by an earlier test
    compiles = []

    def count(name, secs, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(secs)

    first = encode_prompts(tok, ["def f(x):"])
    second = encode_prompts(tok, ["import os\nclass Parser(object):\n    pass"])
    assert first.tokens.shape == second.tokens.shape and first.lengths[0] != second.lengths[0]
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        decoder.generate(first)
        after_first = len(compiles)
        result = decoder.generate(second)
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert after_first >= 1 and len(compiles) == after_first
    assert result.outputs[0].new_tokens == 8


def test_a_smaller_budget_for_one_call_reuses_the_loop_and_cuts_the_same_tokens(checkpoint):
    """generate(batch, max_new_tokens=n): the first n tokens of the full decode, from the same compiled loop
    (the budget is traced); a budget outside [1, Options.max_new_tokens] is one clear error."""
    config, params = hf.load(checkpoint)
    tok = tokenizer.load(checkpoint)
    decoder = Decoder(config.replace(eos_token_ids=()), params, tok, Options(max_new_tokens=12, exit_layer=2))
    batch = decoder.encode(["def f(x):"])
    full = decoder.generate(batch).outputs[0].token_ids
    for n in (1, 5):
        assert decoder.generate(batch, max_new_tokens=n).outputs[0].token_ids == full[:n]
    assert len(decoder._compiled) == 1
    for bad in (0, 13):
        with pytest.raises(InputError, match=rf"max_new_tokens={bad}: expected an integer in \[1, 12\]"):
            decoder.generate(batch, max_new_tokens=bad)


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("decode")


def test_silenced_deep_layers_make_the_full_model_predict_what_layer_e_does(bench):
    """The ceiling's weights: layers [E, L) add nothing, so the full model's logits are exactly the exit's."""
    config, params, _ = random_model()
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, config.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
    for exit_layer in range(1, config.num_layers):
        silenced = bench.silence_deep_layers(params, exit_layer)
        x = model.run_layers(config, silenced, model.embed(config, silenced, tokens), 0, exit_layer,
                             positions=positions, mask=model.causal_mask(2, 9)).x
        np.testing.assert_array_equal(model.logits(config, silenced, tokens), model.unembed(config, silenced, x))
        assert not np.array_equal(model.logits(config, params, tokens), model.unembed(config, params, x))


def test_confined_head_keeps_every_greedy_choice_in_the_subset(bench):
    """The ceiling's weights for a draft vocabulary: outside the K ids the head scores 0, so the full model's
    greedy token is one of the K whenever the best of them scores above 0."""
    config, params, _ = random_model()
    ids = jnp.arange(0, config.vocab_size, 3)
    tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, config.vocab_size)
    logits = model.logits(config, bench.confine_head(config, params, ids), tokens)
    outside = np.ones(config.vocab_size, bool)
    outside[np.asarray(ids)] = False
    np.testing.assert_array_equal(np.asarray(logits)[..., outside], 0)
    positive = np.asarray(jnp.max(logits[..., ids], axis=-1)) > 0
    assert positive.mean() > 0.9
    assert np.isin(np.asarray(jnp.argmax(logits, axis=-1))[positive], np.asarray(ids)).all()


@settings(deadline=None, max_examples=50)
@given(acceptance=st.floats(0.0, 1.0), d=st.integers(1, 8))
def test_acceptance_for_inverts_spec_tokens_per_round(bench, acceptance, d):
    tokens = bench.tokens_per_round(acceptance, d)
    assert 1 <= tokens <= d + 1
    assert bench.acceptance_for(tokens, d) == pytest.approx(acceptance, abs=1e-6)
    assert bench.acceptance_for(d + 1.01, d) is None


def test_benchmark_sweeps_checks_every_output_and_writes_json_and_plot(bench, tmp_path, capsys):
    """benchmarks/decode.py end to end on a random model (no timing is asserted: speed lives in the benchmark)."""
    config, params, tok = random_model()
    directory = tmp_path / "ckpt"
    hf.save(directory, config.replace(max_position_embeddings=1024), params, tokenizer=tok)
    draft_vocab.save(directory, np.arange(config.vocab_size)[::-1], source="test")
    bench.main(["--checkpoint", str(directory), "--num-prompts", "2", "--max-new-tokens", "8", "--exit-layers", "2",
                "--num-speculations", "1,3", "--confidences", "0,0.5", "--ceiling-speculations", "1,2",
                "--ceiling-exit-layers", "1", "--ceiling-draft-vocabs", "40", "--batch-sizes", "1,2",
                "--repeats", "1", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "decode.json").read_text())
    speculative = {k: v for k, v in result["summary"].items() if v["strategy"] == "self_speculative"}
    assert sorted(speculative) == sorted(f"self_speculative E=2 {dc}" for dc in ("d=1", "d=3", "d=3 c=0.5"))
    assert all(row["identical_to_autoregressive"] for row in speculative.values())
    for row in speculative.values():
        assert 0 <= row["acceptance_rate"] <= 1 and 1 <= row["drafts_per_round"] <= row["num_speculations"]
        assert row["efficiency"] == pytest.approx(row["decode_speedup"] / row["analytic_bound"])
        assert row["cost_efficiency"] == pytest.approx(row["decode_speedup"] / row["cost_bound"])
    assert all("loop_efficiency" in row and "round_ms" in row for name, row in result["summary"].items()
               if not name.startswith("early_exit"))
    assert sorted(result["pass_costs_ms"]) == sorted(
        ["full"] + [f"{kind} E={e}" for kind in ("draft", "shallow") for e in (1, 2)]
        + [f"draft E={e} K=40" for e in (1, 2)] + [f"verify E={e} d={d}" for e in (1, 2) for d in (1, 2, 3)])
    assert all(ms > 0 for ms in result["pass_costs_ms"].values())
    # A round of 2 drafts: 2 draft passes of 0.25, a headless shallow pass of 0.125 and a verification of 1.0
    # full steps yield 2.5 tokens; with a cheaper draft head the same round costs less.
    costs = {"full": 2.0, "draft E=2": 0.5, "draft E=2 K=4": 0.3, "shallow E=2": 0.25, "verify E=2 d=2": 2.0}
    assert bench.cost_bound(2.5, 2.0, costs, 2, 2) == pytest.approx(2.5 * 2.0 / 3.25)
    assert bench.cost_bound(2.5, 2.0, costs, 2, 2, draft_vocab=4) == pytest.approx(2.5 * 2.0 / 2.85)
    # the ceiling at an E the sweep did not run: its passes are timed too (pass_costs above holds both E)
    assert [roof["exit_layer"] for roof in result["ceilings"]] == [1]
    for roof in result["ceilings"]:
        assert roof["identical_to_autoregressive"]
        assert sorted((row["num_speculations"], row["draft_vocab"]) for row in roof["rows"].values()) == [
            (1, 0), (1, 40), (2, 0), (2, 40)]
        for row in roof["rows"].values():  # every draft accepted (the K rows too: the head is confined to
            # them), but for what the budget or an end of sequence cuts from a decode's last round (at most
            # d - 1 drafts, one decode per prompt)
            # (round_ms is a decode's time less its prefill's, timed apart: on this tiny model noise can make it
            # negative, so only its presence is checked)
            assert 0 <= row["drafted"] - row["accepted"] <= 2 * (row["num_speculations"] - 1) and "round_ms" in row
            assert row["efficiency"] == pytest.approx(row["decode_speedup"] / row["analytic_bound"])
    assert [row["batch_size"] for row in result["batch_sizes"]] == [1, 2]
    assert (tmp_path / "decode.png").stat().st_size > 0 and (tmp_path / "ceilings.png").stat().st_size > 0
    assert "best:" in capsys.readouterr().out


def test_draft_vocab_flag_keeps_the_greedy_tokens_and_reports_the_fed_ids(checkpoint, capsys, tmp_path):
    """--draft-vocab K drafts from the K most frequent tokens of the checkpoint's draft_vocab.json (written
    here from a tiny corpus); greedy output is unchanged, and --json says which ids each row was fed."""
    from lsjax import draft_vocab
    tok = tokenizer.load(checkpoint)
    ranked = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ranked)
    draft_vocab.save(ranked, draft_vocab.ranking(tok, ["def f(x):\n    return x + 1\n"] * 3), source="test")
    outputs = []
    for flags in ([], ["--draft-vocab", "16"]):
        assert decode.main(["--checkpoint", str(ranked), "--prompt", "def f(x):", "--max-new-tokens", "8",
                            "--exit-layer", "2", "--json", *flags]) == 0
        outputs.append(json.loads(capsys.readouterr().out)["outputs"][0])
    assert outputs[0]["token_ids"] == outputs[1]["token_ids"]
    assert outputs[1]["prompt_token_ids"] == tok.encode("def f(x):")
    assert decode.main(["--checkpoint", str(ranked), "--prompt", "x", "--draft-vocab", "16",
                        "--strategy", "early_exit", "--exit-layer", "2"]) == 2
    assert "self-speculative drafting only" in capsys.readouterr().err


def test_draft_vocab_ranking_orders_tokens_by_frequency():
    from lsjax import draft_vocab
    _, _, tok = random_model()
    text = "aaaa b"
    ids = draft_vocab.ranking(tok, [text])
    counts = {}
    for i in tok.encode(text, add_bos=False):
        counts[i] = counts.get(i, 0) + 1
    most = max(counts, key=lambda i: (counts[i], -i))
    assert ids[0] == most and sorted(ids.tolist()) == list(range(tok.vocab_size))


def test_the_library_checks_that_prompts_fit_before_compiling(checkpoint):
    """generate and stream take any PromptBatch (not only Decoder.encode's), so each checks the fit itself."""
    config, params, tok = checkpoints.load_model(checkpoint)
    decoder = Decoder(config, params, tok, Options(strategy="autoregressive", max_new_tokens=8))
    batch = encode_prompts(tok, ["x" * 400])
    for call in (decoder.generate, lambda b: list(decoder.stream(b))):
        with pytest.raises(InputError, match=r"exceeds the model's max_position_embeddings=128$"):
            call(batch)
    assert decoder._compiled == {}  # refused before anything compiled
