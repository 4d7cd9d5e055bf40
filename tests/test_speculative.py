"""Two-model speculative decoding against its exact references: greedy output equal to the target's
autoregressive output (every d, ragged batches, a separate or a truncated-copy draft), the same rounds as
self-speculation when the draft is the target's own first layers, sampling distributed as the target's
(and a wrong acceptance rule caught), no recompilation within a bucket."""

import dataclasses

import numpy as np
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from tests.conftest import TINY
from tests.methods_common import NEW_TOKENS, PROMPTS, generate, speculative, tiny_params
from tests.test_decoding import (DRAWS, NEW_TOKENS as SAMPLED_TOKENS, PROMPT, SAMPLING_CONFIG, _accept_every_draft,
                                 _exact_sequence_probabilities, _worst_pair_p_value, rows, scaled_random_model)
from lsjax import decoding
from lsjax.decoding import Knobs, Sampling, self_speculative
from lsjax.decoding.speculative import truncated

# Every example shares the target shape of the other methods' tests (TINY, 4 prompts padded to one width, 16
# new tokens) and one draft shape (two layers): a compiled loop per d, whatever the weights and prompts.
DRAFT_LAYERS, OUT = 2, NEW_TOKENS
DRAFT_CONFIG = dataclasses.replace(TINY, num_layers=DRAFT_LAYERS)


@hsettings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 16), lengths=st.lists(st.integers(1, 9), min_size=4, max_size=4),
       separate=st.booleans())
def test_speculative_greedy_equals_the_targets_autoregressive_output(seed, lengths, separate):
    params = scaled_random_model(TINY, seed)
    # a separately initialised draft (rarely right) or the target's first layers (often right)
    draft = (DRAFT_CONFIG, scaled_random_model(DRAFT_CONFIG, seed + 1)) if separate else truncated(TINY, params,
                                                                                                   DRAFT_LAYERS)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, TINY.vocab_size, n).tolist() for n in lengths]
    want = rows(generate(TINY, params, prompts, OUT))
    for d in (1, 2, 4, 8):
        out = speculative(TINY, params, draft, prompts, OUT, d)
        assert rows(out) == want, d
        kinds = np.asarray(out.kinds)
        np.testing.assert_array_equal((kinds == decoding.ACCEPTED_DRAFT).sum(1), out.accepted)


def test_a_truncated_copy_as_draft_accepts_what_self_speculation_accepts():
    """Same proposals, same rule: the two-model loop with the first E layers as its draft reproduces the
    self-speculative loop's tokens and statistics."""
    params = tiny_params()
    two = speculative(TINY, params, truncated(TINY, params, DRAFT_LAYERS), PROMPTS, OUT, 4)
    self = generate(TINY, params, PROMPTS, OUT, strategy="self_speculative", exit_layer=DRAFT_LAYERS,
                    num_speculations=4)
    assert rows(two) == rows(self)
    for field in ("accepted", "drafted", "rounds"):
        np.testing.assert_array_equal(getattr(two, field), getattr(self, field))
    assert 0 < int(np.sum(two.accepted)) < int(np.sum(two.drafted))


def test_speculative_does_not_recompile_within_a_bucket():
    params = tiny_params()
    draft = truncated(TINY, params, DRAFT_LAYERS)
    speculative(TINY, params, draft, PROMPTS, OUT, 2)
    size = decoding.generate._cache_size()
    other = (DRAFT_CONFIG, scaled_random_model(DRAFT_CONFIG, 3))
    speculative(TINY, scaled_random_model(TINY, 3), other, [[5, 6, 7], [8, 9], [1] * 9, [4]], OUT, 2, key=3,
                knobs=Knobs.make(threshold=0.5, temperature=0.7))
    assert decoding.generate._cache_size() == size


def _sampled(params, draft, knobs, sampling):
    out = speculative(SAMPLING_CONFIG, params, draft, [PROMPT] * DRAWS, SAMPLED_TOKENS, 2, key=11, knobs=knobs,
                      sampling=sampling)
    assert np.all(np.asarray(out.num_tokens) == SAMPLED_TOKENS)
    return np.asarray(out.tokens[:, :SAMPLED_TOKENS]), out


def test_speculative_sampling_matches_the_target_and_a_wrong_rule_does_not(monkeypatch):
    sampling, knobs = Sampling(greedy=False), Knobs.make(temperature=1.0)
    params = scaled_random_model(SAMPLING_CONFIG, 5)
    draft_config = dataclasses.replace(SAMPLING_CONFIG, num_layers=1)
    draft = (draft_config, scaled_random_model(draft_config, 9))
    exact = _exact_sequence_probabilities(SAMPLING_CONFIG, params, knobs, sampling, SAMPLED_TOKENS)
    sequences, out = _sampled(params, draft, knobs, sampling)
    assert np.all(np.asarray(out.rounds) >= 2)
    assert 0 < int(np.sum(out.accepted)) < int(np.sum(out.drafted))
    assert _worst_pair_p_value(sequences, exact) > 1e-3
    monkeypatch.setattr(self_speculative, "_accept_sampled", _accept_every_draft)
    decoding.generate.clear_cache()  # the loop is traced again with the wrong rule (other programs are kept)
    try:
        wrong, _ = _sampled(params, draft, knobs, sampling)
    finally:
        decoding.generate.clear_cache()
    assert _worst_pair_p_value(wrong, exact) < 1e-6
