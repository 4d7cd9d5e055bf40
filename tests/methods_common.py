"""What the tests of the compared methods share: the decode loop at one padded width, a loop run to its final
state, and the check that batched rows decode as they would alone."""

import functools

import jax
import numpy as np

from tests.conftest import TINY
from tests.test_decoding import right_pad, rows, scaled_random_model
from lsjax import decoding, model
from lsjax.decoding import Knobs, Settings, state as state_lib

WIDTH = 10  # every prompt batch is padded to this, so examples of one setting share a compiled loop


def generate(config, params, prompts, max_new_tokens, key=0, knobs=None, draft=None, **settings):
    """The decode loop in the decoding layout; draft: (config, params) of the two-model strategy's draft."""
    settings = Settings(**{"output_size": max_new_tokens, **settings})
    tokens, lengths = right_pad(prompts, width=max(WIDTH, max(len(p) for p in prompts)))
    draft_config, draft_params = draft or (None, None)
    return decoding.generate(config, model.per_layer(params), settings, tokens, lengths, max_new_tokens,
                             jax.random.key(key), knobs or Knobs.make(),
                             max_length=decoding.cache_length(settings, tokens.shape[1]), draft_config=draft_config,
                             draft_params=None if draft is None else model.per_layer(draft_params))


def speculative(config, params, draft, prompts, max_new_tokens, d, **options):
    return generate(config, params, prompts, max_new_tokens, draft=draft, strategy="speculative",
                    num_speculations=d, **options)


def run_loop(config, params, settings, prompts, knobs, prepare=None):
    """The loop of a strategy run to the end, returning its final state (the cache included)."""
    tokens, lengths = right_pad(prompts)
    params = model.per_layer(params)

    @jax.jit
    def go(tokens, lengths):
        state = state_lib.start(config, params, settings, tokens, lengths, settings.output_size, jax.random.key(0),
                                knobs, max_length=decoding.cache_length(settings, tokens.shape[1]),
                                depth=config.num_layers, cache_layers=config.num_layers)
        if prepare is not None:
            state = prepare(config, params, settings, knobs, state, tokens, lengths)
        return state_lib.loop(functools.partial(decoding._ROUNDS[settings.strategy], config, params, settings,
                                                knobs), state)

    return go(tokens, lengths)


def fed_tokens(state, prompts, b):
    """Row b's tokens that went through the model: its prompt and all generated tokens but the newest."""
    n = int(state.count[b])
    return list(prompts[b]) + np.asarray(state.tokens[b, :n - 1]).tolist()


def batched_equals_single(**options):
    params = scaled_random_model(TINY, 42)
    rng = np.random.default_rng(11)
    prompts = [rng.integers(0, TINY.vocab_size, n).tolist() for n in (7, 2, 5, 9)]
    batched = generate(TINY, params, prompts, 16, **options)
    singles = [generate(TINY, params, [p], 16, **options) for p in prompts]
    assert rows(batched) == [rows(s)[0] for s in singles]
    np.testing.assert_array_equal(batched.layers, [int(s.layers[0]) for s in singles])
    return batched
