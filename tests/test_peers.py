"""benchmarks/peers.py end to end on a random model (no timing is asserted: speed lives in the benchmark)."""

import json

import pytest

from lsjax import hf
from tests.conftest import load_benchmark
from tests.random_model import random_model

pytest.importorskip("torch", reason="the peer benchmark needs the CPU build of torch")
pytest.importorskip("transformers", reason="the peer benchmark needs transformers")


@pytest.fixture(scope="module")
def peers():
    return load_benchmark("peers")


def test_peers_runs_every_method_on_the_same_weights_and_checks_lsjax_against_transformers(peers, tmp_path):
    config, params, tok = random_model()
    directory = tmp_path / "ckpt"
    hf.save(directory, config.replace(max_position_embeddings=1024), params, tokenizer=tok)
    out = tmp_path / "peers"
    peers.main(["--checkpoint", str(directory), "--num-prompts", "2", "--max-new-tokens", "6", "--exit-layer", "2",
                "--num-speculations", "2", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    assert sorted(result["rows"]) == sorted(["transformers generate", "transformers assistant_early_exit=2",
                                             "lsjax autoregressive", "lsjax self-speculative E=2 d=2"])
    assert all(len(row["seconds"]) == 2 and row["tokens_per_second"] > 0 for row in result["rows"].values())
    # lossless methods on the same float32 weights: lsjax's greedy tokens are transformers'
    assert result["exact"] == {"lsjax autoregressive": True, "lsjax self-speculative E=2 d=2": True}
    assert "| lsjax autoregressive |" in out.with_suffix(".md").read_text()
