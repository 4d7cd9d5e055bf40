"""Layer dropout against hand-computed tables, and the empirical drop rate against p_{l,t}."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from lsjax import layer_dropout as ld

# L = 5, l = 0..4; hand-computed.
HAND = {
    "exp": [0.0, 2 ** 0.25 - 1, 2 ** 0.5 - 1, 2 ** 0.75 - 1, 1.0],  # 0, .18921, .41421, .68179, 1
    "linear": [0.0, 0.25, 0.5, 0.75, 1.0],
    "uniform": [1.0] * 5,
    "log": [0.0, math.log(2) / math.log(5), math.log(3) / math.log(5), math.log(4) / math.log(5), 1.0],
    "sine": [0.0, math.sin(math.pi / 8), math.sin(math.pi / 4), math.sin(3 * math.pi / 8), 1.0],
    "sigmoid": [1 / (1 + math.exp(5)), 1 / (1 + math.exp(2.5)), 0.5, 1 / (1 + math.exp(-2.5)),
                1 / (1 + math.exp(-5))],
}


@pytest.mark.parametrize("kind", sorted(HAND))
def test_layer_scales_equal_hand_computed(kind):
    np.testing.assert_allclose(ld.layer_scale(kind, 5), HAND[kind], atol=1e-6)


def test_time_scales_equal_hand_computed():
    # T = 5: S(t) = 2^(t/4) - 1 from scratch; 1 otherwise.
    for t, want in enumerate([0.0, 2 ** 0.25 - 1, 2 ** 0.5 - 1, 2 ** 0.75 - 1, 1.0]):
        assert float(ld.time_scale("exp", t, 5)) == pytest.approx(want, abs=1e-6)
        assert float(ld.time_scale("constant", t, 5)) == 1.0


def test_drop_rates_are_the_product():
    rates = ld.drop_rates(0.2, 5, step=2, total_steps=5, layer_kind="exp", time_kind="exp")
    np.testing.assert_allclose(rates, 0.2 * (2 ** 0.5 - 1) * np.asarray(HAND["exp"]), atol=1e-6)


def test_empirical_drop_rate_matches_p():
    rates = jnp.asarray([0.0, 0.1, 0.3, 0.5, 0.9])
    n = 20000
    keep = np.asarray(ld.keep_mask(seed=3, step=11, sample_index=np.arange(n), rates=rates))
    dropped = 1.0 - keep.mean(axis=0)
    # 4 standard errors of a Bernoulli mean over n draws
    tolerance = 4 * np.sqrt(np.asarray(rates) * (1 - np.asarray(rates)) / n) + 1e-9
    assert np.all(np.abs(dropped - np.asarray(rates)) <= tolerance), dropped
    assert dropped[0] == 0.0


def test_masks_depend_only_on_seed_step_and_global_index():
    rates = jnp.full((6,), 0.5)
    whole = ld.keep_mask(0, 7, np.arange(16), rates)
    # the same samples split across two "devices" in another order draw the same masks
    part = ld.keep_mask(0, 7, np.asarray([9, 3, 12]), rates)
    np.testing.assert_array_equal(part, whole[np.asarray([9, 3, 12])])
    assert not np.array_equal(ld.keep_mask(0, 8, np.arange(16), rates), whole)
    assert not np.array_equal(ld.keep_mask(1, 7, np.arange(16), rates), whole)


@pytest.mark.parametrize("call,needle", [
    (lambda: ld.layer_scale("cubic", 4), "'cubic'"),
    (lambda: ld.time_scale("linear", 0, 10), "'linear'"),
])
def test_unknown_scale_names(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()
