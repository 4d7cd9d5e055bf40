"""benchmarks/methods.py end to end on a random model without a separate draft (no timing is asserted)."""

import json

from lsjax import hf
from tests.conftest import load_benchmark
from tests.random_model import random_model


def test_methods_benchmark_runs_each_method_and_scores_the_lossless_ones_exact(tmp_path):
    methods = load_benchmark("methods")
    config, params, tok = random_model()
    directory = tmp_path / "ckpt"
    hf.save(directory, config.replace(max_position_embeddings=1024), params, tokenizer=tok)
    out = tmp_path / "methods"
    methods.main(["--checkpoint", str(directory), "--draft-checkpoint", "none", "--num-prompts", "2",
                  "--max-new-tokens", "6", "--exit-layer", "1", "--num-speculations", "2", "--batch-size", "1",
                  "--free-thresholds", "0,1",
                  "--rollbacks", "1", "--calm-thresholds", "0.5", "--state-thresholds", "0.9",
                  "--adaptive-batches", "1", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {(row["method"], str(row["setting"])): row for row in result["rows"]}
    assert "speculative" not in {method for method, _ in rows}  # --draft-checkpoint none
    assert {"calm_top2", "calm_softmax", "calm_state", "free_rollback", "free_adaptive"} <= {m for m, _ in rows}
    for lossless in (("autoregressive", ""), ("self_speculative", "E=1 d=2"),
                     ("speculative_copy", "first 1 layers copied d=2"), ("free", "1.0")):
        assert rows[lossless]["agreement"] == 1.0 and rows[lossless]["similarity"] == 1.0, lossless
    assert rows[("free", "0.0")]["layers_per_token"] < 1.0  # threshold 0: every token exits shallow
    assert all(row["tokens_per_second"] > 0 for row in rows.values())
    assert out.with_suffix(".png").stat().st_size > 0 and "| free | 1.0 |" in out.with_suffix(".md").read_text()
