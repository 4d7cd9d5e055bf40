"""FREE against its references: synchronized parallel decoding at threshold 1 is autoregressive and at 0 is
early exit at S; the deep K/V it fills for skipped tokens equal a full forward's; batched rows equal single
rows; the Beta-mixture threshold recovers known mixtures; the shallow-deep objective is the stated formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import TINY
from tests.methods_common import batched_equals_single, fed_tokens, run_loop, tiny, tiny_params
from tests.test_decoding import right_pad, rows, scaled_random_model
from lsjax import kvcache, model, shallow_deep
from lsjax.decoding import ACCEPTED_DRAFT, FROM_MODEL, Knobs, Settings, free, threshold

FREE = dict(strategy="free", exit_layer=2, stack=3)  # one compiled loop for every threshold and rollback


def test_free_at_threshold_one_is_autoregressive_and_at_zero_is_early_exit():
    never = tiny(Knobs.make(threshold=1.0), **FREE)
    assert rows(never) == rows(tiny())
    always = tiny(Knobs.make(threshold=0.0), **FREE)
    assert rows(always) == rows(tiny(strategy="early_exit", exit_layer=2))
    assert np.all(np.asarray(always.accepted) == np.asarray(always.num_tokens))


def test_free_rollback_at_zero_is_autoregressive_and_unreachable_changes_nothing():
    """Rollback 0 rewrites every skipped token, so the output is the full model's although most steps exit
    early (the rewinds show as more rounds than tokens); an unreachable rollback keeps FREE's tokens."""
    lossy = tiny(Knobs.make(threshold=0.01), **FREE)
    assert rows(lossy) != rows(tiny())  # the exits changed the output: there is something to roll back
    exact = tiny(Knobs.make(threshold=0.01, rollback=0.0), **FREE)
    assert rows(exact) == rows(tiny())
    assert np.all(np.asarray(exact.kinds)[np.asarray(exact.kinds) > 0] == FROM_MODEL)
    assert np.all(np.asarray(exact.accepted) == 0)
    assert np.sum(exact.rounds) > np.sum(exact.num_tokens)
    unreachable = tiny(Knobs.make(threshold=0.01, rollback=1e9), **FREE)
    assert rows(unreachable) == rows(lossy)
    np.testing.assert_array_equal(unreachable.kinds, lossy.kinds)
    np.testing.assert_array_equal(unreachable.accepted, lossy.accepted)


def test_free_deep_cache_of_skipped_tokens_equals_a_full_forward():
    """At thresholds where tokens skip the deep layers (with and without rollback rewinds), the deep K/V of
    every token a deep pass covered equal those of a full forward over the row's final tokens."""
    config, params = TINY, tiny_params()
    prompts = [[3, 1, 4, 1, 5], [9, 2], [7, 7, 7, 1]]
    settings = Settings(output_size=14, **FREE)
    for knobs in (Knobs.make(threshold=0.0), Knobs.make(threshold=0.005), Knobs.make(threshold=0.005, rollback=3.0)):
        state = run_loop(config, params, settings, prompts, knobs, prepare=free.prepare)
        assert int(np.sum(state.accepted)) > 0
        fed = [fed_tokens(state, prompts, b) for b in range(len(prompts))]
        tokens, lengths = right_pad(fed)
        _, cache = kvcache.prefill(config, params, kvcache.init_cache(config, len(fed), tokens.shape[1]),
                                   jnp.asarray(tokens), jnp.asarray(lengths))
        for b in range(len(prompts)):
            deep_done = int(state.cache.length[b] - state.extra["kept"][b])
            assert len(prompts[b]) < deep_done <= len(fed[b]) == int(state.cache.length[b])
            for layer in range(settings.exit_layer, config.num_layers):
                for got, want in ((state.cache.k, cache.k), (state.cache.v, cache.v)):
                    np.testing.assert_allclose(got[layer][b, :deep_done], want[layer][b, :deep_done], atol=1e-5)


def test_free_batched_rows_equal_single_rows_and_record_their_pairs():
    out = batched_equals_single(Knobs.make(threshold=0.01), **FREE)
    accepted, tokens = np.asarray(out.accepted), np.asarray(out.num_tokens)
    assert np.any(accepted > 0) and np.all(accepted < tokens)  # both exits happened
    # pairs come from the parallel passes (deep passes over tokens the shallow exit was sure of), replayed
    # here from who chose each token: a pass runs at a token the shallow exit was not sure of or on a full stack
    confidence, agreed = (np.asarray(a) for a in out.extra)
    for b, n in enumerate(tokens):
        skipped = np.asarray(out.kinds[b, :n]) == ACCEPTED_DRAFT
        want, pending = [bool(skipped[0])] + [False] * (n - 1), []  # the first: judged by the prefill's logits
        for i in range(1, n):
            if not skipped[i] or len(pending) >= FREE["stack"]:
                for j in pending + [i] if pending or skipped[i] else []:
                    want[j] = True
                pending = []
            else:
                pending.append(i)
        np.testing.assert_array_equal(agreed[b, :n] >= 0, want)
        np.testing.assert_array_equal(confidence[b, :n][want] > 0.01, skipped[want])  # each token's own confidence
    assert set(np.unique(agreed[agreed >= 0])) == {0, 1}
    # rollback rewinds rows independently: some rows rewind, the batch still equals its rows alone
    rolled = batched_equals_single(Knobs.make(threshold=0.01, rollback=3.0), **FREE)
    assert rows(rolled) != rows(out) and np.sum(rolled.rounds) > np.sum(rolled.num_tokens)


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


@jax.jit
def _objective_values(params, inputs, targets):
    """Everything the objective test compares, in one compiled program: per-layer CE, the loss at S = 1
    without KD, and per mapping at S = 2: KD, the loss with alpha 0.5 and without KD."""
    config = TINY
    hidden = model.forward(config, params, inputs, collect_hidden=True).hidden
    mask = jnp.ones(targets.shape, jnp.float32)
    log_probs = jax.nn.log_softmax(model.unembed(config, params, hidden), axis=-1)  # [L, B, T, V]
    ce = jnp.mean(-jnp.take_along_axis(log_probs, jnp.broadcast_to(targets[..., None], log_probs.shape[:-1] + (1,)),
                                       axis=-1)[..., 0], axis=(1, 2))
    value, _, layers = shallow_deep.loss(config, params, hidden, targets, mask, 1, 0.0, "uniform", 64)
    per_mapping = {mapping: (shallow_deep.distillation(config, params, hidden, 2, mapping, mask),
                             shallow_deep.loss(config, params, hidden, targets, mask, 2, 0.5, mapping, 64)[0],
                             shallow_deep.loss(config, params, hidden, targets, mask, 2, 0.0, mapping, 64)[0])
                   for mapping in shallow_deep.MAPPINGS}
    return ce, value, layers, per_mapping


def test_the_shallow_deep_loss_is_the_weighted_cross_entropy_of_its_two_exits_plus_alpha_kd():
    inputs, targets = _objective_batch(TINY)
    ce, value, layers, per_mapping = _objective_values(scaled_random_model(TINY, 3), inputs, targets)
    total = TINY.num_layers
    np.testing.assert_allclose(float(value), (1 * ce[0] + total * ce[total - 1]) / (1 + total), rtol=1e-5)
    assert layers.tolist() == [0, total - 1]
    assert shallow_deep.teachers(2, 8) == [3, 7] and shallow_deep.teachers(1, 4) == [3]
    for mapping, (kd, with_kd, without) in per_mapping.items():
        np.testing.assert_allclose(float(with_kd - without), 0.5 * float(kd), rtol=1e-4)
        assert float(kd) > 0, mapping


def test_distillation_teaches_only_the_shallow_layers():
    """The deep states are detached teachers: KD moves no layer past the shallow exit, for every mapping."""
    config, params = TINY, scaled_random_model(TINY, 4)
    inputs, _ = _objective_batch(config, 1)
    mask = jnp.ones(inputs.shape, jnp.float32)

    @jax.jit
    def grads(params):
        kd = lambda p, mapping: shallow_deep.distillation(
            config, p, model.forward(config, p, inputs, collect_hidden=True).hidden, 2, mapping, mask)
        return {mapping: jax.grad(kd)(params, mapping)["layers"] for mapping in shallow_deep.MAPPINGS}

    for mapping, layers in grads(params).items():
        norm = lambda layer: sum(float(jnp.sum(g[layer] ** 2)) for g in jax.tree.leaves(layers))
        assert norm(0) > 0 and norm(1) > 0, mapping
        assert norm(2) == 0 and norm(3) == 0, mapping


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
