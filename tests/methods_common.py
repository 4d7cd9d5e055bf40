"""What the tests of the compared methods share: one tiny model, one ragged prompt batch and one padded width
(so the tests of a strategy reuse one compiled loop: thresholds and rollback are traced knobs), a loop run to
its final state, and the check that batched rows decode as they would alone."""

import functools

import jax
import numpy as np

from tests.conftest import TINY
from tests.test_decoding import right_pad, rows, scaled_random_model
from lsjax import decoding, model
from lsjax.decoding import Knobs, Settings, loop

WIDTH = 10  # every prompt batch is padded to this, so examples of one setting share a compiled loop
NEW_TOKENS = 16
PROMPTS = [np.random.default_rng(11).integers(0, TINY.vocab_size, n).tolist() for n in (7, 2, 5, 9)]


@functools.cache
def tiny_params():
    """TINY with weights large enough that exits disagree (one copy for every test of the methods)."""
    return scaled_random_model(TINY, 42)


def generate(config, params, prompts, max_new_tokens, key=0, knobs=None, draft=None, **settings):
    """The decode loop in the decoding layout; draft: (config, params) of the two-model strategy's draft."""
    settings = Settings(**{"output_size": max_new_tokens, **settings})
    tokens, lengths = right_pad(prompts, width=max(WIDTH, max(len(p) for p in prompts)))
    draft_config, draft_params = draft or (None, None)
    return decoding.generate(config, model.per_layer(params), settings, tokens, lengths, max_new_tokens,
                             jax.random.key(key), knobs or Knobs.make(),
                             max_length=decoding.cache_length(settings, tokens.shape[1]), draft_config=draft_config,
                             draft_params=None if draft is None else model.per_layer(draft_params))


def tiny(knobs=None, prompts=None, **settings):
    """`generate` on TINY over PROMPTS (or prompts), NEW_TOKENS new tokens."""
    return generate(TINY, tiny_params(), PROMPTS if prompts is None else prompts, NEW_TOKENS, knobs=knobs, **settings)


def speculative(config, params, draft, prompts, max_new_tokens, d, **options):
    return generate(config, params, prompts, max_new_tokens, draft=draft, strategy="speculative",
                    num_speculations=d, **options)


@functools.partial(jax.jit, static_argnames=("config", "settings", "prepare"))
def _loop(config, params, settings, tokens, lengths, knobs, prepare):
    state = loop.start(config, params, settings, tokens, lengths, settings.output_size, jax.random.key(0), knobs,
                       max_length=decoding.cache_length(settings, tokens.shape[1]), depth=config.num_layers,
                       cache_layers=config.num_layers)
    if prepare is not None:
        state = prepare(config, params, settings, knobs, state, tokens, lengths)
    return loop.run_rounds(functools.partial(decoding._ROUNDS[settings.strategy], config, params, settings, knobs),
                           state)


def run_loop(config, params, settings, prompts, knobs, prepare=None, per_layer=True):
    """The loop of a strategy run to the end, returning its final state (the cache included); knobs are
    traced, so one settings' loop compiles once. per_layer: the decoding layout, else the stacked one."""
    tokens, lengths = right_pad(prompts)
    return _loop(config, model.per_layer(params) if per_layer else params, settings, tokens, lengths, knobs, prepare)


def fed_tokens(state, prompts, b):
    """Row b's tokens that went through the model: its prompt and all generated tokens but the newest."""
    n = int(state.count[b])
    return list(prompts[b]) + np.asarray(state.tokens[b, :n - 1]).tolist()


def batched_equals_single(knobs, **settings):
    """The PROMPTS batch against each prompt alone: the same tokens, kinds and layer counts. Returns the batch."""
    batched = tiny(knobs, **settings)
    singles = [tiny(knobs, prompts=[p], **settings) for p in PROMPTS]
    assert rows(batched) == [rows(s)[0] for s in singles]
    for field in ("layers", "accepted", "rounds"):
        np.testing.assert_array_equal(getattr(batched, field), [int(getattr(s, field)[0]) for s in singles])
    np.testing.assert_array_equal(batched.kinds, np.concatenate([s.kinds for s in singles]))
    return batched
