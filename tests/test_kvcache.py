"""Cached decoding against the teacher-forced forward pass (the slow obvious reference)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lsjax import kvcache, model
from tests.conftest import TINY, TINY_LLAMA3

TOL = 1e-5
MAX_LEN = 32

prefill = jax.jit(kvcache.prefill, static_argnums=0, static_argnames="padding")
extend = jax.jit(kvcache.extend, static_argnums=0)


class Rows:
    """The reference: each row's full token list, checked against a teacher-forced forward."""

    def __init__(self, config, params, rows):
        self.config, self.params, self.rows = config, params, [list(r) for r in rows]

    def reference_logits(self):
        longest = max(len(r) for r in self.rows)
        padded = np.zeros((len(self.rows), longest), np.int32)
        for i, row in enumerate(self.rows):
            padded[i, :len(row)] = row  # right padding cannot affect earlier positions (causal)
        return np.asarray(model.logits(self.config, self.params, jnp.asarray(padded)))

    def check(self, cached_logits, first_new):
        """cached_logits [B, T, V] are the logits of row tokens first_new[b] .. first_new[b] + T - 1."""
        reference = self.reference_logits()
        for b, start in enumerate(first_new):
            got = np.asarray(cached_logits[b])
            want = reference[b, start:start + got.shape[0]]
            np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=f"row {b}")


def _prefill(config, params, prompts, padding, per_layer=False):
    """per_layer: the decoding layout (`model.per_layer` params, one cache buffer per layer); the caller
    passes params in that layout too."""
    t = max(len(p) for p in prompts)
    tokens = np.zeros((len(prompts), t), np.int32)
    for i, p in enumerate(prompts):
        if padding == "right":
            tokens[i, :len(p)] = p
        else:
            tokens[i, t - len(p):] = p
    lengths = jnp.asarray([len(p) for p in prompts])
    cache = kvcache.init_cache(config, len(prompts), MAX_LEN, per_layer=per_layer)
    logits, cache = prefill(config, params, cache, jnp.asarray(tokens), lengths, padding=padding)
    return logits, cache, tokens


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("per_layer", [False, True], ids=["stacked", "per_layer"])
def test_prefill_steps_extensions_rollback(tiny_model, padding, per_layer):
    """Both layouts: stacked params and cache (a scan over layers), and the decoding layout (per-layer arrays,
    layers unrolled, each layer's buffer updated in place)."""
    config, params = tiny_model
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in (5, 2, 8)]
    rows = Rows(config, params, prompts)
    params = model.per_layer(params) if per_layer else params

    last, cache, tokens = _prefill(config, params, prompts, padding, per_layer)
    # the next-token logits of each row; the prompt's K/V are checked by every step below
    np.testing.assert_allclose(last, rows.reference_logits()[np.arange(3), [len(p) - 1 for p in prompts]],
                               atol=TOL)

    def step(new_tokens):
        nonlocal cache
        first_new = [len(r) for r in rows.rows]
        for r, new in zip(rows.rows, new_tokens):
            r.extend(new)
        out, cache = extend(config, params, cache, jnp.asarray(new_tokens))
        rows.check(out, first_new)

    for _ in range(3):  # one-token steps
        step(rng.integers(0, config.vocab_size, (3, 1)).tolist())
    step(rng.integers(0, config.vocab_size, (3, 4)).tolist())  # a multi-token extension (verification)
    # roll rows back by different amounts, then re-extend with different tokens
    drop = [3, 0, 5]
    cache = cache.rollback(cache.length - jnp.asarray(drop))
    rows.rows = [r[:len(r) - d] for r, d in zip(rows.rows, drop)]
    step(rng.integers(0, config.vocab_size, (3, 3)).tolist())
    step(rng.integers(0, config.vocab_size, (3, 1)).tolist())
    np.testing.assert_array_equal(cache.length - cache.start, [len(r) for r in rows.rows])


@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_random_operation_sequences_match_teacher_forcing(data):
    config = data.draw(st.sampled_from([TINY, TINY_LLAMA3]))
    params = _params(config)
    batch = data.draw(st.integers(1, 3))
    padding = data.draw(st.sampled_from(["right", "left"]))
    token = st.integers(0, config.vocab_size - 1)
    prompts = [data.draw(st.lists(token, min_size=1, max_size=6)) for _ in range(batch)]
    rows = Rows(config, params, prompts)
    _, cache, _ = _prefill(config, params, prompts, padding)
    for _ in range(data.draw(st.integers(1, 4))):
        if data.draw(st.booleans()):  # roll back each row by its own amount (keeping >= 1 token)
            drop = [data.draw(st.integers(0, len(r) - 1)) for r in rows.rows]
            cache = cache.rollback(cache.length - jnp.asarray(drop))
            rows.rows = [r[:len(r) - d] for r, d in zip(rows.rows, drop)]
        width = data.draw(st.integers(1, 4))
        new = [[data.draw(token) for _ in range(width)] for _ in range(batch)]
        first_new = [len(r) for r in rows.rows]
        for r, n in zip(rows.rows, new):
            r.extend(n)
        out, cache = extend(config, params, cache, jnp.asarray(new))
        rows.check(out, first_new)


@functools.cache
def _params(config):
    return model.init(config, jax.random.key(7))


def test_cached_layer_ranges_write_only_their_layers():
    """Drafting runs layers [0, E) ahead of the deep layers; each range must touch only its own buffers."""
    config, params = TINY, _params(TINY)
    cache = kvcache.init_cache(config, 2, 8)
    x = model.embed(config, params, jnp.ones((2, 3), jnp.int32))
    _, after = kvcache.run_cached_layers(config, params, cache, x, 0, 2)
    assert float(jnp.abs(after.k[:2, :, :3]).max()) > 0
    assert float(jnp.abs(after.k[2:]).max()) == 0.0 and float(jnp.abs(after.k[:, :, 3:]).max()) == 0.0
    np.testing.assert_array_equal(after.length, cache.length)


def test_errors_for_prompt_longer_than_cache_and_overflow():
    config, params = TINY, _params(TINY)
    cache = kvcache.init_cache(config, 1, 4)
    with pytest.raises(ValueError, match="longer than the cache"):
        kvcache.prefill(config, params, cache, jnp.ones((1, 5), jnp.int32), jnp.asarray([5]))
    _, cache = kvcache.prefill(config, params, cache, jnp.ones((1, 3), jnp.int32), jnp.asarray([3]))
    with pytest.raises(ValueError, match="cache overflow"):
        kvcache.extend(config, params, cache, jnp.ones((1, 2), jnp.int32))
    with pytest.raises(ValueError, match="padding='middle'"):
        kvcache.prefill(config, params, cache, jnp.ones((1, 3), jnp.int32), jnp.asarray([3]), padding="middle")


@pytest.mark.parametrize("per_layer", [True, False], ids=["per_layer", "stacked"])
def test_decode_loop_writes_only_the_new_tokens_into_the_cache(tiny_model, per_layer):
    """Inside the decoding loops the cache only takes in-place updates of the new tokens: no computation but
    the entry (which fills the buffers once) copies or slices a whole buffer, and in the stacked layout no
    layer's slice [B, S, KV, hd] is ever materialised (the write goes straight into the stack; attention
    reads the slice where it lies)."""
    import re
    from lsjax import decoding
    config, params = tiny_model
    settings = decoding.Settings(strategy="self_speculative", exit_layer=1, num_speculations=2, output_size=16)
    tokens, lengths = jnp.zeros((2, 8), jnp.int32), jnp.asarray([8, 3], jnp.int32)
    max_length = decoding.cache_length(settings, 8)
    params = model.per_layer(params) if per_layer else params
    hlo = decoding.generate.lower(config, params, settings, tokens, lengths, 16, jax.random.key(0),
                                  decoding.Knobs.make(), max_length=max_length).compile().as_text()
    layer_shape = rf"\[2,{max_length},{config.num_kv_heads},{config.head_dim}\]"
    stack_shape = rf"\[{config.num_layers},2,{max_length},{config.num_kv_heads},{config.head_dim}\]"
    buffer = layer_shape if per_layer else stack_shape
    computation, loops_carry_buffers, offending = None, False, []
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            computation = line.split()[0] if not line.startswith("ENTRY") else "ENTRY"
            continue
        if computation == "ENTRY":
            continue
        loops_carry_buffers |= bool(re.search(buffer, line))
        whole_buffer = re.search(buffer + r"\{[^}]*\} (copy|dynamic-slice)\(", line)
        layer_slice = not per_layer and re.search(
            layer_shape + r"\{[^}]*\} (?!bitcast|parameter|get-tuple-element)[a-z-]+\(", line)
        if whole_buffer or layer_slice:
            offending.append((computation, line.strip()[:120]))
    assert offending == []
    assert loops_carry_buffers
