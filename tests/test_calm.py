"""CALM-style confidence exits against their references: an unreachable threshold is autoregressive decoding;
state copying writes each skipped layer's own K/V projections of the exited state; batched rows exit and
decode as they would alone; the confidence measures are the stated formulas."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import TINY
from tests.methods_common import PROMPTS, batched_equals_single, fed_tokens, run_loop, tiny, tiny_params
from tests.test_decoding import rows
from lsjax import kvcache, model
from lsjax.decoding import Knobs, Settings, calm, confidence

def test_calm_unreachable_is_autoregressive_and_batched_rows_equal_single_rows():
    """One loop (state saturation, decaying threshold: the measure that reads the hidden states and the
    schedule that reads the position); the logit measures differ from it only in the formula, tested below."""
    options = dict(strategy="calm", confidence="state", decay=True)
    never = tiny(Knobs.make(threshold=2.0), **options)
    assert rows(never) == rows(tiny())
    np.testing.assert_array_equal(never.layers, TINY.num_layers * (np.asarray(never.num_tokens) - 1))
    out = batched_equals_single(Knobs.make(threshold=0.78), **options)
    layers, tokens = np.asarray(out.layers), np.asarray(out.num_tokens) - 1
    # rows exited at different depths: some tokens early, not all, and not alike across rows
    assert np.all(layers >= tokens) and np.any(layers < TINY.num_layers * tokens), layers
    assert len(set((layers / tokens).tolist())) > 1, layers


@pytest.mark.parametrize("exit_layer", [2, 3])
def test_calm_exits_no_earlier_than_its_earliest_exit_layer(exit_layer):
    """Always confident (threshold -1): every fed token exits right after layer E - 1 and runs exactly E
    layers, so after the first token (the prefill's, from the full model) the tokens are early exit's at E
    over the prompt and that first token (the copied deeper K/V are never read: no token goes past E)."""
    out = tiny(Knobs.make(threshold=-1.0), strategy="calm", exit_layer=exit_layer)
    np.testing.assert_array_equal(out.layers, exit_layer * (np.asarray(out.num_tokens) - 1))
    calm_rows = rows(out)
    extended = [prompt + row[:1] for prompt, row in zip(PROMPTS, calm_rows)]
    early = rows(tiny(prompts=extended, strategy="early_exit", exit_layer=exit_layer))
    for calm_row, early_row in zip(calm_rows, early):
        assert calm_row[1:] == early_row[:len(calm_row) - 1]


def test_calm_state_copying_writes_each_skipped_layers_own_projections():
    """Every token exits after layer 0 (threshold -1): layers 1.. hold, at each generated token's slot, what
    that layer's own attention block projects from the token's x_1 (computed here by the layer itself). In
    the stacked cache layout, whose copies are written in place at (layer, row, slot)."""
    config, params = TINY, tiny_params()
    prompts = [[3, 1, 4, 1, 5], [9, 2]]
    settings = Settings(strategy="calm", output_size=8)
    state = run_loop(config, params, settings, prompts, Knobs.make(threshold=-1.0), per_layer=False)
    assert np.all(np.asarray(state.layers) == np.asarray(state.count) - 1)
    for b, prompt in enumerate(prompts):
        fed = fed_tokens(state, prompts, b)
        tokens = jnp.asarray([fed])
        cache = kvcache.init_cache(config, 1, len(fed))
        x1, cache = kvcache.run_cached_layers(config, params, cache, model.embed(config, params, tokens), 0, 1,
                                              write_index=jnp.zeros((1,), jnp.int32))
        for layer in range(1, config.num_layers):
            _, cache = kvcache.run_cached_layers(config, params, cache, x1.x, layer, layer + 1,
                                                 write_index=jnp.zeros((1,), jnp.int32))
        new = slice(len(prompt), len(fed))
        for layer in range(1, config.num_layers):
            np.testing.assert_allclose(state.cache.k[layer, b, new], cache.k[layer][0, new], atol=1e-5)
            np.testing.assert_allclose(state.cache.v[layer, b, new], cache.v[layer][0, new], atol=1e-5)


def test_confidence_measures_are_the_stated_formulas():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 11)).astype(np.float32) * 3
    probs = np.sort(np.asarray(jax.nn.softmax(logits)), axis=-1)
    np.testing.assert_allclose(confidence.measure("softmax", logits), probs[:, -1], rtol=1e-6)
    np.testing.assert_allclose(confidence.measure("top2", logits), probs[:, -1] - probs[:, -2], rtol=1e-5)
    x, previous = rng.normal(size=(2, 5, 7))
    cosine = np.sum(x * previous, -1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(previous, axis=-1)
    np.testing.assert_allclose(confidence.measure("state", None, x, previous), cosine, rtol=1e-5)


def test_the_decaying_threshold_is_calms_schedule():
    """lambda e^(-4 t / N) / 10 + 9 lambda / 10 at generated position t of N; lambda itself without decay."""
    state = SimpleNamespace(count=jnp.asarray([0, 8, 16]), budget=jnp.int32(16))
    knobs = Knobs.make(threshold=0.9)
    want = 0.9 * np.exp(-4 * np.asarray([0, 0.5, 1])) / 10 + 0.81
    np.testing.assert_allclose(calm.threshold(Settings(decay=True), knobs, state), want, rtol=1e-6)
    np.testing.assert_allclose(calm.threshold(Settings(), knobs, state), [0.9] * 3, rtol=1e-6)
