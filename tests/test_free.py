"""FREE against its references: synchronized parallel decoding at threshold 1 is autoregressive and at 0 is
early exit at S; the deep K/V it fills for skipped tokens equal a full forward's; batched rows equal single
rows; the Beta-mixture threshold recovers known mixtures; the shallow-deep objective is the stated formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import TINY
from tests.methods_common import batched_equals_single, fed_tokens, generate, run_loop
from tests.test_decoding import rows, scaled_random_model
from lsjax import kvcache, model, shallow_deep
from lsjax.decoding import Knobs, Settings, free, threshold


def test_free_at_threshold_one_is_autoregressive_and_at_zero_is_early_exit(tiny_model):
    config, params = tiny_model
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in (6, 1, 9)]
    exit_layer = 2
    never = generate(config, params, prompts, 12, strategy="free", exit_layer=exit_layer, stack=3,
                     knobs=Knobs.make(threshold=1.0))
    assert rows(never) == rows(generate(config, params, prompts, 12))
    always = generate(config, params, prompts, 12, strategy="free", exit_layer=exit_layer, stack=3,
                      knobs=Knobs.make(threshold=0.0))
    assert rows(always) == rows(generate(config, params, prompts, 12, strategy="early_exit", exit_layer=exit_layer))
    assert np.all(np.asarray(always.accepted) == np.asarray(always.num_tokens))


@pytest.mark.parametrize("limit", [0.0, 0.005])
def test_free_deep_cache_of_skipped_tokens_equals_a_full_forward(limit):
    config, params = TINY, scaled_random_model(TINY, 42)
    prompts = [[3, 1, 4, 1, 5], [9, 2], [7, 7, 7, 1]]
    settings = Settings(strategy="free", exit_layer=2, stack=3, output_size=14)
    state = run_loop(config, params, settings, prompts, Knobs.make(threshold=limit), prepare=free.prepare)
    assert int(np.sum(state.accepted)) > 0
    for b in range(len(prompts)):
        fed = fed_tokens(state, prompts, b)
        cache = kvcache.init_cache(config, 1, len(fed))
        _, cache = kvcache.prefill(config, params, cache, jnp.asarray([fed]), jnp.asarray([len(fed)]))
        deep_done = int(state.cache.length[b] - state.extra["kept"][b])
        assert len(prompts[b]) < deep_done <= len(fed)
        for layer in range(settings.exit_layer, config.num_layers):
            np.testing.assert_allclose(state.cache.k[layer][b, :deep_done], cache.k[layer][0, :deep_done], atol=1e-5)
            np.testing.assert_allclose(state.cache.v[layer][b, :deep_done], cache.v[layer][0, :deep_done], atol=1e-5)


def test_free_batched_rows_equal_single_rows_and_record_their_pairs():
    out = batched_equals_single(strategy="free", exit_layer=2, stack=3, knobs=Knobs.make(threshold=0.01))
    accepted, tokens = np.asarray(out.accepted), np.asarray(out.num_tokens)
    assert np.any(accepted > 0) and np.all(accepted < tokens)  # both exits happened
    confidence, agreed = (np.asarray(a) for a in out.extra)
    judged = agreed >= 0
    assert judged[:, 0].all() and judged.sum() > tokens.sum() // 2
    assert set(np.unique(agreed[judged])) <= {0, 1}


# --- the adaptive threshold ------------------------------------------------------------------------------------

@pytest.mark.parametrize("agree,disagree", [((6, 2), (2, 6)), ((8, 1.5), (1.5, 3)), ((3, 3), (1, 8))])
def test_the_beta_mixture_recovers_the_threshold_of_known_betas(agree, disagree):
    """Synthetic confidences from two known Betas: the fit's threshold is the grid point the true densities
    give (the smallest with P(agree | c) > zeta), or next to it."""
    from scipy import stats
    rng = np.random.default_rng(0)
    confidences = np.concatenate([rng.beta(*agree, 4000), rng.beta(*disagree, 4000)])
    agreed = np.repeat([True, False], 4000)
    truth = stats.beta.pdf(threshold.GRID, *agree) / (stats.beta.pdf(threshold.GRID, *agree)
                                                       + stats.beta.pdf(threshold.GRID, *disagree))
    count = int(np.sum(truth > threshold.ZETA))
    want = threshold.GRID[min(len(threshold.GRID) - count, len(threshold.GRID) - 1)]
    assert abs(threshold.fit(confidences, agreed) - want) <= 0.07


def test_the_adaptive_threshold_starts_at_0_9_and_freezes():
    adaptive = threshold.Adaptive(freeze_after=4)
    assert adaptive.threshold() == threshold.INITIAL
    rng = np.random.default_rng(1)
    confidences = np.concatenate([rng.beta(6, 2, (2, 50)), rng.beta(2, 6, (2, 50))], axis=1)
    agreed = np.concatenate([np.ones((2, 50)), np.zeros((2, 50))], axis=1).astype(np.int8)
    agreed[:, -5:] = -1  # not judged: ignored
    adaptive.add(confidences, agreed)
    fitted = adaptive.threshold()
    assert fitted < threshold.INITIAL
    adaptive.add(np.zeros((2, 100)), np.zeros((2, 100), np.int8))  # 4 sequences seen: frozen
    assert adaptive.threshold() == fitted


# --- the shallow-deep objective -------------------------------------------------------------------------------

def _objective_batch(config, seed=0):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, (2, 9)), jnp.int32)
    return tokens[:, :-1], tokens[:, 1:]


def test_the_shallow_deep_loss_is_the_weighted_cross_entropy_of_its_two_exits_plus_alpha_kd():
    config, params = TINY, scaled_random_model(TINY, 3)
    inputs, targets = _objective_batch(config)
    hidden = model.forward(config, params, inputs, collect_hidden=True).hidden
    mask = jnp.ones(targets.shape, jnp.float32)
    s, total = 1, config.num_layers
    ce = lambda layer: float(jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(
        model.unembed(config, params, hidden[layer]), axis=-1), targets[..., None], axis=-1)))
    want = (s * ce(s - 1) + total * ce(total - 1)) / (s + total)
    value, out, layers = shallow_deep.loss(config, params, hidden, targets, mask, s, 0.0, "uniform", 64)
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    assert layers.tolist() == [0, total - 1]
    assert shallow_deep.teachers(2, 8) == [3, 7] and shallow_deep.teachers(1, 4) == [3]
    for mapping in shallow_deep.MAPPINGS:
        kd = shallow_deep.distillation(config, params, hidden, 2, mapping, mask)
        with_kd, *_ = shallow_deep.loss(config, params, hidden, targets, mask, 2, 0.5, mapping, 64)
        without, *_ = shallow_deep.loss(config, params, hidden, targets, mask, 2, 0.0, mapping, 64)
        np.testing.assert_allclose(float(with_kd - without), 0.5 * float(kd), rtol=1e-4)
        assert float(kd) > 0


@pytest.mark.parametrize("mapping", shallow_deep.MAPPINGS)
def test_distillation_teaches_only_the_shallow_layers(mapping):
    """The deep states are detached teachers: KD moves no layer past the shallow exit."""
    config, params = TINY, scaled_random_model(TINY, 4)
    inputs, _ = _objective_batch(config, 1)
    mask = jnp.ones(inputs.shape, jnp.float32)
    kd = lambda p: shallow_deep.distillation(config, p, model.forward(config, p, inputs, collect_hidden=True).hidden,
                                             2, mapping, mask)
    grads = jax.grad(kd)(params)["layers"]
    norm = lambda layer: sum(float(jnp.sum(g[layer] ** 2)) for g in jax.tree.leaves(grads))
    assert norm(0) > 0 and norm(1) > 0
    assert norm(2) == 0 and norm(3) == 0


@pytest.mark.parametrize("key,value,needle", [("objective", "calm", "train.objective='calm'"),
                                              ("free_mapping", "first", "train.free_mapping='first'"),
                                              ("free_alpha", -1.0, "train.free_alpha=-1.0")])
def test_bad_free_objective_settings_are_one_line_config_errors(key, value, needle):
    from configs import embedded_free
    from lsjax import train_config
    from lsjax.config import ConfigError
    cfg = embedded_free.get_config()
    train_config.validate_train_config(cfg)
    cfg.train[key] = value
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        train_config.validate_train_config(cfg)
