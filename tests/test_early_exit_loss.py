"""Early-exit scales, curricula and the chunked loss, against hand-computed tables and the unchunked loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsjax import early_exit_loss as ee
from lsjax import model
from tests.conftest import TINY, scaled


def test_exit_scales_equal_hand_computed():
    # L = 4, e_scale = 0.2: e(0) = 0, e(1) = .2 * 1, e(2) = .2 * (1 + 2), e(3) = 3 + .2 * (0 + 1 + 2)
    np.testing.assert_allclose(ee.exit_scales(4, 0.2), [0.0, 0.2, 0.6, 3.6], atol=1e-6)
    # e_scale = 0: only the last layer is trained (plain language modelling)
    np.testing.assert_allclose(ee.exit_scales(4, 0.0), [0, 0, 0, 3])


@pytest.mark.parametrize("shape,want", [
    ("sum_l", [0, 1, 3, 3 + 3]),
    ("l", [0, 1, 2, 3 + 2]),
    ("sqrt_l", [0, 1, np.sqrt(2), 3 + np.sqrt(2)]),
    ("one", [1, 1, 1, 3 + 1]),  # the shape that weighs shallow exits most: layer 0 gets a weight too
])
def test_exit_scale_shapes_equal_hand_computed(shape, want):
    np.testing.assert_allclose(ee.exit_scales(4, 1.0, shape), want, atol=1e-6)


def test_uniform_shape_gives_layer_zero_a_slot():
    sel = ee.select_layers("none", 4, step=0, total_steps=10, e_scale=0.5, shape="one")
    np.testing.assert_array_equal(sel.layers, [0, 1, 2, 3])
    np.testing.assert_allclose(sel.weights, np.asarray([0.5, 0.5, 0.5, 3.5]) / 5.0, atol=1e-6)
    with pytest.raises(ValueError, match="'cubic'"):
        ee.exit_scales(4, 1.0, "cubic")


def test_no_curriculum_normalises_over_all_layers():
    sel = ee.select_layers("none", 4, step=5, total_steps=10, e_scale=0.2)
    np.testing.assert_array_equal(sel.layers, [1, 2, 3])  # e(0) = 0: layer 0 needs no unembedding
    np.testing.assert_allclose(sel.weights, np.asarray([0.2, 0.6, 3.6]) / 4.4, atol=1e-6)


def test_zero_e_scale_selects_only_the_last_layer():
    sel = ee.select_layers("rotational", 6, step=3, total_steps=10, e_scale=0.0, rotation=2)
    np.testing.assert_array_equal(sel.layers, [5])
    np.testing.assert_allclose(sel.weights, [1.0])


@pytest.mark.parametrize("step,layers,weights", [
    # L = 5, e_scale = 1: e = [0, 1, 3, 6, 10]; R = 2 -> K = min(L - 1, ceil(5/2) + 1) = 4 slots
    (0, [2, 4, 4, 4], [3 / 13, 10 / 13, 0.0, 0.0]),  # enabled {0, 2, 4}; e(0) = 0 takes no slot
    (1, [1, 3, 4, 4], [1 / 17, 6 / 17, 10 / 17, 0.0]),
    (2, [2, 4, 4, 4], [3 / 13, 10 / 13, 0.0, 0.0]),
])
def test_rotational_curriculum_equals_hand_computed(step, layers, weights):
    sel = ee.select_layers("rotational", 5, step=step, total_steps=100, e_scale=1.0, rotation=2)
    np.testing.assert_array_equal(sel.layers, layers)
    np.testing.assert_allclose(sel.weights, weights, atol=1e-6)


@pytest.mark.parametrize("step,enabled", [
    # L = 7, R = 3: layer l is on at step t when (l - t) mod 3 == 0, and the last layer always
    (0, [1, 0, 0, 1, 0, 0, 1]), (1, [0, 1, 0, 0, 1, 0, 1]), (2, [0, 0, 1, 0, 0, 1, 1]),
    (3, [1, 0, 0, 1, 0, 0, 1]), (4, [0, 1, 0, 0, 1, 0, 1]), (11, [0, 0, 1, 0, 0, 1, 1]),
])
def test_rotational_curriculum_over_three_groups_equals_hand_computed(step, enabled):
    np.testing.assert_array_equal(ee.curriculum_mask("rotational", 7, step, 100, rotation=3), np.asarray(enabled, bool))


@pytest.mark.parametrize("step,layers,weights", [
    # L = 7, e_scale = 1: e = [0, 1, 3, 6, 10, 15, 6 + 15]; K = min(6, ceil(7/3) + 1) = 4 slots
    (0, [3, 6, 6, 6], [6 / 27, 21 / 27, 0.0, 0.0]),  # enabled {0, 3, 6}; e(0) = 0 takes no slot
    (1, [1, 4, 6, 6], [1 / 32, 10 / 32, 21 / 32, 0.0]),
    (2, [2, 5, 6, 6], [3 / 39, 15 / 39, 21 / 39, 0.0]),
])
def test_rotational_selection_over_three_groups_equals_hand_computed(step, layers, weights):
    sel = ee.select_layers("rotational", 7, step=step, total_steps=100, e_scale=1.0, rotation=3)
    np.testing.assert_array_equal(sel.layers, layers)
    np.testing.assert_allclose(sel.weights, weights, atol=1e-6)


@pytest.mark.parametrize("step,enabled", [
    (0, [0, 0, 0, 1]), (19, [0, 0, 0, 1]), (20, [0, 0, 1, 1]), (29, [0, 0, 1, 1]), (30, [0, 1, 1, 1]),
    (39, [0, 1, 1, 1]), (40, [1, 1, 1, 1]), (79, [1, 1, 1, 1]),
])
def test_gradual_curriculum_equals_hand_computed(step, enabled):
    # L = 4, T = 80: layer l joins at step (L - l) T / (2L): 20, 30, 40 for l = 2, 1, 0 (all on at T / 2)
    np.testing.assert_array_equal(ee.curriculum_mask("gradual", 4, step, 80), np.asarray(enabled, bool))


@pytest.mark.parametrize("step", [0, 3, 57])
def test_fixed_curriculum_trains_the_named_exits_and_the_last_at_every_step(step):
    # L = 7, exits E = 2 and 5: layers 1 and 4 (the exits after layers [0, 2) and [0, 5)) and the last, equal
    # weights under the "one" shape (the last layer's e is L - 1 + 1 = 7 there)
    np.testing.assert_array_equal(ee.curriculum_mask("fixed", 7, step, 100, exits=(2, 5)),
                                  np.asarray([0, 1, 0, 0, 1, 0, 1], bool))
    sel = ee.select_layers("fixed", 7, step=step, total_steps=100, e_scale=1.0, shape="one", exits=(2, 5))
    np.testing.assert_array_equal(sel.layers, [1, 4, 6])
    np.testing.assert_allclose(sel.weights, [1 / 9, 1 / 9, 7 / 9], atol=1e-6)
    assert ee.num_selected("fixed", 7, e_scale=1.0, shape="one", exits=(5, 2, 5)) == 3
    assert ee.num_selected("fixed", 7, e_scale=1.0, shape="one", exits=(7,)) == 1  # the last layer itself


@pytest.mark.parametrize("kind", ee.CURRICULA)
def test_every_curriculum_selects_the_same_layers_inside_a_traced_step(kind):
    # the train step traces the step number: the slot count must stay static (a host value) under jit
    def select(step):
        return ee.select_layers(kind, 7, step=step, total_steps=40, e_scale=1.0, rotation=3, exits=(2, 5))

    for step in (0, 7, 25):
        traced, eager = jax.jit(select)(jnp.int32(step)), select(step)
        np.testing.assert_array_equal(traced.layers, eager.layers)
        np.testing.assert_allclose(traced.weights, eager.weights, rtol=1e-6)


def test_unknown_curriculum():
    with pytest.raises(ValueError, match="'zigzag'"):
        ee.curriculum_mask("zigzag", 4, 0, 10)


def _inputs(seed=0, batch=2, length=9):
    """Params scaled so that the logits have a realistic spread (std ~3, up to ~10): near-zero logits make every
    distribution almost uniform, and a KL in either direction almost the same."""
    params = scaled(model.init(TINY, jax.random.key(seed)), 30.0)
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, TINY.vocab_size, (batch, length)))
    hidden = model.forward(TINY, params, tokens, collect_hidden=True).hidden
    targets = jnp.asarray(rng.integers(0, TINY.vocab_size, (batch, length)))
    mask = jnp.asarray(rng.random((batch, length)) > 0.2)
    return params, hidden, targets, mask


def _unchunked(params, hidden, targets, mask, selection, beta):
    """The obvious reference: all logits of all selected layers at once."""
    logits = model.unembed(TINY, params, hidden[selection.layers])  # [K, B, T, V]
    log_probs = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(log_probs, targets[None, ..., None], -1)[..., 0]
    teacher = jax.lax.stop_gradient(jax.nn.log_softmax(model.unembed(TINY, params, hidden[-1]), -1))
    kl = jnp.sum(jnp.exp(teacher) * (teacher - log_probs), -1)
    m = mask.astype(jnp.float32)
    per_layer = jnp.sum(nll * m, (1, 2)) / m.sum()
    per_kl = jnp.sum(kl * m, (1, 2)) / m.sum()
    acc = jnp.sum((logits.argmax(-1) == targets) * m, (1, 2)) / m.sum()
    return jnp.sum(selection.weights * (per_layer + beta * per_kl)), per_layer, acc, per_kl


@pytest.mark.parametrize("chunk_size", [1, 5, 18, 1024])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_chunked_loss_and_grads_equal_unchunked(chunk_size, beta):
    params, hidden, targets, mask = _inputs()
    sel = ee.select_layers("rotational", TINY.num_layers, 1, 10, e_scale=0.5, rotation=2)

    def chunked(p):
        return ee.early_exit_loss(TINY, p, hidden, targets, sel, loss_mask=mask, beta=beta,
                                  chunk_size=chunk_size).loss

    out = ee.early_exit_loss(TINY, params, hidden, targets, sel, loss_mask=mask, beta=beta, chunk_size=chunk_size)
    want, want_layers, want_acc, want_kl = _unchunked(params, hidden, targets, mask, sel, beta)
    np.testing.assert_allclose(out.loss, want, rtol=1e-5)
    np.testing.assert_allclose(out.layer_loss, want_layers, rtol=1e-5)
    np.testing.assert_allclose(out.layer_accuracy, want_acc, atol=1e-6)
    if beta:
        np.testing.assert_allclose(out.layer_kl, want_kl, rtol=1e-5, atol=1e-6)
    got_grads = jax.grad(chunked)(params)
    want_grads = jax.grad(lambda p: _unchunked(p, hidden, targets, mask, sel, beta)[0])(params)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-4)


def test_last_layer_distils_nothing_from_itself():
    params, hidden, targets, mask = _inputs(seed=1)
    sel = ee.select_layers("none", TINY.num_layers, 0, 10, e_scale=1.0)
    out = ee.early_exit_loss(TINY, params, hidden, targets, sel, beta=1.0)
    assert float(out.layer_kl[-1]) == pytest.approx(0.0, abs=1e-6)
    assert float(out.layer_kl[0]) > 1e-3
    assert float(out.layer_agreement[0]) == 0.0  # not measured unless asked
    measured = ee.early_exit_loss(TINY, params, hidden, targets, sel, measure_agreement=True)
    assert float(measured.layer_agreement[-1]) == 1.0
    exit_top1 = model.unembed(TINY, params, hidden[1]).argmax(-1)  # slot 0 is layer 1
    want = jnp.mean(exit_top1 == model.unembed(TINY, params, hidden[-1]).argmax(-1))
    assert float(measured.layer_agreement[0]) == pytest.approx(float(want), abs=1e-6)


def test_self_distillation_is_kl_from_the_last_layer_to_the_exit():
    """KL(p_last || p_exit) per layer, and visibly not KL(p_exit || p_last) on these logits."""
    params, hidden, targets, mask = _inputs(seed=2)
    sel = ee.select_layers("none", TINY.num_layers, 0, 10, e_scale=1.0)
    out = ee.early_exit_loss(TINY, params, hidden, targets, sel, loss_mask=mask, beta=1.0, chunk_size=7)
    exit_log_probs = jax.nn.log_softmax(model.unembed(TINY, params, hidden[sel.layers]), -1)
    last_log_probs = jax.nn.log_softmax(model.unembed(TINY, params, hidden[-1]), -1)
    assert float(jnp.abs(model.unembed(TINY, params, hidden[-1])).max()) > 5.0
    m = mask.astype(jnp.float32)
    mean = lambda per_token: jnp.sum(per_token * m, (1, 2)) / m.sum()
    forward = mean(jnp.sum(jnp.exp(last_log_probs) * (last_log_probs - exit_log_probs), -1))
    reverse = mean(jnp.sum(jnp.exp(exit_log_probs) * (exit_log_probs - last_log_probs), -1))
    np.testing.assert_allclose(out.layer_kl, forward, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(forward - reverse)) > 0.2 * np.max(forward), (forward, reverse)  # the two directions differ
