"""Two-model speculative decoding against its exact references: greedy output equal to the target's
autoregressive output (every d, ragged batches, a separate or a truncated-copy draft), the same rounds as
self-speculation when the draft is the target's own first layers, sampling distributed as the target's
(and a wrong acceptance rule caught), no recompilation within a bucket."""

import dataclasses

import jax
import numpy as np
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from tests.conftest import TINY
from tests.methods_common import generate, speculative
from tests.test_decoding import (DRAWS, NEW_TOKENS, PROMPT, SAMPLING_CONFIG, _accept_every_draft,
                                 _exact_sequence_probabilities, _worst_pair_p_value, rows, scaled_random_model)
from lsjax import decoding
from lsjax.config import LlamaConfig
from lsjax.decoding import Knobs, Sampling, self_speculative
from lsjax.decoding.speculative import truncated


@hsettings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 16), d=st.sampled_from([1, 2, 4, 8]),
       lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3), separate=st.booleans())
def test_speculative_greedy_equals_the_targets_autoregressive_output(seed, d, lengths, separate):
    config = LlamaConfig(vocab_size=37, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
                         num_kv_heads=2, tie_word_embeddings=bool(seed % 2))
    params = scaled_random_model(config, seed)
    # a separately initialised draft (rarely right) or the target's first layer (often right)
    draft = ((dataclasses.replace(config, num_layers=1), scaled_random_model(
        dataclasses.replace(config, num_layers=1), seed + 1)) if separate else truncated(config, params, 1))
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in lengths]
    out = speculative(config, params, draft, prompts, 12, d)
    assert rows(out) == rows(generate(config, params, prompts, 12))
    kinds = np.asarray(out.kinds)
    np.testing.assert_array_equal((kinds == decoding.ACCEPTED_DRAFT).sum(1), out.accepted)


def test_a_truncated_copy_as_draft_accepts_what_self_speculation_accepts():
    """Same proposals, same rule: the two-model loop with the first E layers as its draft reproduces the
    self-speculative loop's tokens and statistics for every d."""
    params = scaled_random_model(TINY, 42)
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, TINY.vocab_size, n).tolist() for n in (5, 2, 8)]
    for d in (1, 8):
        two = speculative(TINY, params, truncated(TINY, params, 2), prompts, 16, d)
        self = generate(TINY, params, prompts, 16, strategy="self_speculative", exit_layer=2, num_speculations=d)
        assert rows(two) == rows(self), d
        np.testing.assert_array_equal(two.accepted, self.accepted)
        np.testing.assert_array_equal(two.rounds, self.rounds)
        assert 0 < int(np.sum(two.accepted)) < int(np.sum(two.drafted))


def _sampled(params, draft, knobs, sampling):
    out = speculative(SAMPLING_CONFIG, params, draft, [PROMPT] * DRAWS, NEW_TOKENS, 2, key=11, knobs=knobs,
                      sampling=sampling)
    assert np.all(np.asarray(out.num_tokens) == NEW_TOKENS)
    return np.asarray(out.tokens[:, :NEW_TOKENS]), out


def test_speculative_sampling_matches_the_target_and_a_wrong_rule_does_not(monkeypatch):
    sampling, knobs = Sampling(greedy=False), Knobs.make(temperature=1.0)
    params = scaled_random_model(SAMPLING_CONFIG, 5)
    draft_config = dataclasses.replace(SAMPLING_CONFIG, num_layers=1)
    draft = (draft_config, scaled_random_model(draft_config, 9))
    exact = _exact_sequence_probabilities(SAMPLING_CONFIG, params, knobs, sampling, NEW_TOKENS)
    sequences, out = _sampled(params, draft, knobs, sampling)
    assert np.all(np.asarray(out.rounds) >= 2)
    assert 0 < int(np.sum(out.accepted)) < int(np.sum(out.drafted))
    assert _worst_pair_p_value(sequences, exact) > 1e-3
    monkeypatch.setattr(self_speculative, "_accept_sampled", _accept_every_draft)
    jax.clear_caches()
    try:
        wrong, _ = _sampled(params, draft, knobs, sampling)
    finally:
        jax.clear_caches()
    assert _worst_pair_p_value(wrong, exact) < 1e-6


def test_speculative_does_not_recompile_within_a_bucket():
    params = scaled_random_model(TINY, 1)
    draft = truncated(TINY, params, 1)
    speculative(TINY, params, draft, [[1, 2, 3], [4]], 8, 2)
    size = decoding.generate._cache_size()
    speculative(TINY, params, draft, [[5, 6, 7], [8, 9]], 8, 2, key=3, knobs=Knobs.make(threshold=0.5))
    assert decoding.generate._cache_size() == size
