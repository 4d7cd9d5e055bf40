"""decode.py end to end on a checkpoint exported by lsjax, and its one-line errors."""

import json
import sys
from pathlib import Path

import pytest

from lsjax import demo, hf, tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import decode  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config, params, tok = demo.random_model()
    directory = tmp_path_factory.mktemp("ckpt")
    hf.save(directory, config.replace(max_position_embeddings=128), params, tokenizer=tok)
    return directory


def test_decodes_a_prompt_as_json(checkpoint, capsys):
    assert decode.main(["--checkpoint", str(checkpoint), "--prompt", "def add(a, b):", "--max-new-tokens", "6",
                        "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    row = result["outputs"][0]
    assert row["new_tokens"] == len(row["token_ids"]) <= 6 and row["tokens_per_second"] > 0
    assert row["text"] == tokenizer.load(checkpoint).decode(row["token_ids"])


@pytest.mark.parametrize("argv,needle", [
    (["--max-new-tokens", "0"], "--max-new-tokens=0"),
    (["--humaneval", "HumanEval/999"], "HumanEval/999"),
    (["--prompt", ""], "empty prompt"),
    (["--prompt", "x" * 400], "max_position_embeddings=128"),
])
def test_bad_input_is_one_line_and_exit_2(checkpoint, capsys, argv, needle):
    assert decode.main(["--checkpoint", str(checkpoint), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err


def test_not_a_checkpoint(tmp_path, capsys):
    assert decode.main(["--checkpoint", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
