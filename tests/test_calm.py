"""CALM-style confidence exits against their references: an unreachable threshold is autoregressive decoding;
state copying writes each skipped layer's own K/V projections of the exited state; batched rows exit and
decode as they would alone."""

import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import TINY
from tests.methods_common import batched_equals_single, fed_tokens, generate, run_loop
from tests.test_decoding import rows, scaled_random_model
from lsjax import kvcache, model
from lsjax.config import LlamaConfig
from lsjax.decoding import Knobs, Settings, calm


@pytest.mark.parametrize("seed", [1])
def test_calm_with_an_unreachable_threshold_is_autoregressive(seed):
    config = LlamaConfig(vocab_size=37, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
                         num_kv_heads=1, tie_word_embeddings=bool(seed), rope_theta=500000.0)
    params = scaled_random_model(config, seed)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in (6, 1, 9)]
    want = rows(generate(config, params, prompts, 10))
    for measure in calm.confidence.MEASURES:
        out = generate(config, params, prompts, 10, strategy="calm", confidence=measure,
                       knobs=Knobs.make(threshold=2.0))
        assert rows(out) == want, measure
        assert np.all(np.asarray(out.layers) == config.num_layers * (np.asarray(out.num_tokens) - 1))


def test_calm_state_copying_writes_each_skipped_layers_own_projections():
    """Every token exits after layer 0 (threshold -1): layers 1.. hold, at each generated token's slot, what
    that layer's own attention block projects from the token's x_1 (computed here by the layer itself)."""
    config, params = TINY, scaled_random_model(TINY, 42)
    prompts = [[3, 1, 4, 1, 5], [9, 2]]
    settings = Settings(strategy="calm", output_size=8)
    state = run_loop(config, params, settings, prompts, Knobs.make(threshold=-1.0))
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
            np.testing.assert_allclose(state.cache.k[layer][b, new], cache.k[layer][0, new], atol=1e-5)
            np.testing.assert_allclose(state.cache.v[layer][b, new], cache.v[layer][0, new], atol=1e-5)


@pytest.mark.parametrize("measure,limit,decay", [("top2", 0.02, False), ("softmax", 0.06, True),
                                                 ("state", 0.78, False)])
def test_calm_batched_rows_equal_single_rows(measure, limit, decay):
    out = batched_equals_single(strategy="calm", confidence=measure, decay=decay, knobs=Knobs.make(threshold=limit))
    layers, tokens = np.asarray(out.layers), np.asarray(out.num_tokens) - 1
    # rows exited at different depths: some tokens early, not all
    assert np.all(layers >= tokens) and np.any(layers < TINY.num_layers * tokens), layers
