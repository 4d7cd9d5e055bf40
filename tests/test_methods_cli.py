"""decode.py with the compared methods: each strategy end to end as JSON, and their flags' one-line errors."""

import json

import pytest

from lsjax import checkpoints, hf
from lsjax.decoding.speculative import truncated
from tests.test_decode_cli import decode


@pytest.fixture(scope="module")
def draft(checkpoint, tmp_path_factory):
    """The checkpoint's first layer as a draft model of its own, with the same tokenizer."""
    config, params, tok = checkpoints.load_model(checkpoint)
    directory = tmp_path_factory.mktemp("draft")
    hf.save(directory, *truncated(config, params, 1), tokenizer=tok)
    return directory


@pytest.mark.parametrize("argv", [["--strategy", "speculative", "--num-speculations", "3"],
                                  ["--strategy", "calm", "--threshold", "0.5", "--measure", "softmax",
                                   "--exit-layer", "2"],
                                  ["--strategy", "free", "--exit-layer", "2", "--stack", "2", "--rollback", "0.5"]])
def test_each_method_decodes_as_json(checkpoint, draft, capsys, argv):
    extra = ["--draft-checkpoint", str(draft)] if "speculative" in argv else []
    assert decode.main(["--checkpoint", str(checkpoint), "--prompt", "def add(a, b):", "--max-new-tokens", "8",
                        "--json", *argv, *extra]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["strategy"] == argv[1] and result["outputs"][0]["new_tokens"] == 8 and "speedup" in result
    if argv[1] in ("calm", "free"):
        assert 0 < result["layers_per_token"] <= 1 and result["threshold"] is not None
    if argv[1] == "free":  # no --threshold: the adaptive one, at its initial value for the first batch
        assert result["threshold"] == pytest.approx(0.9)


@pytest.mark.parametrize("argv,needle", [
    (["--strategy", "speculative"], "--draft-checkpoint DIR goes with --strategy speculative"),
    (["--strategy", "autoregressive", "--exit-layer", "2"], "--exit-layer 2: applies to early_exit and"),
    (["--strategy", "calm", "--exit-layer", "9"], "exit layer E=9: expected 1 <= E <="),
    (["--strategy", "free", "--measure", "state"], "measure='state'"),
    (["--strategy", "calm", "--measure", "entropy"], "measure='entropy'"),
    (["--strategy", "free", "--stack", "0"], "stack=0"),
    (["--strategy", "self_speculative", "--threshold", "0.5"], "threshold=0.5 applies to the calm and free"),
    (["--strategy", "free", "--decay"], "decay applies to the calm strategy only"),
    (["--strategy", "calm", "--rollback", "1"], "rollback=1.0 applies to the free strategy only"),
    (["--strategy", "free", "--rollback", "-1"], "rollback=-1.0: expected a loss >= 0"),
])
def test_bad_method_flags_are_one_line_and_exit_2(checkpoint, capsys, argv, needle):
    assert decode.main(["--checkpoint", str(checkpoint), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err
