"""The decoder's own contracts: layer ranges, per-layer states, residual masks, packing, dtypes, axes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from lsjax import attention, model, sharding
from lsjax.config import ConfigError, LlamaConfig
from tests.conftest import TINY


def _tokens(config, batch=3, length=11, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, config.vocab_size, (batch, length)))


def _range_logits(config, params, tokens, cut):
    b, t = tokens.shape
    kwargs = dict(positions=jnp.broadcast_to(jnp.arange(t), (b, t)), mask=model.causal_mask(b, t))
    x = model.embed(config, params, tokens)
    x = model.run_layers(config, params, x, 0, cut, **kwargs).x
    x = model.run_layers(config, params, x, cut, config.num_layers, **kwargs).x
    return model.unembed(config, params, x)


def test_split_at_every_exit_layer_equals_full_forward(tiny_model):
    config, params = tiny_model
    tokens = _tokens(config)
    full = model.logits(config, params, tokens)
    for cut in range(1, config.num_layers):
        np.testing.assert_allclose(_range_logits(config, params, tokens, cut), full, atol=1e-5, rtol=0)


def _attention_inputs(b=2, t=5, s=7, h=8, kv=2, hd=4, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=shape).astype(np.float32) for shape in ((b, t, h, hd), (b, s, kv, hd), (b, s, kv, hd)))
    mask = rng.random((b, t, s)) > 0.4
    return q, k, v, mask


@pytest.mark.parametrize("kind", ["xla", "blockwise"])
def test_grouped_query_attention_equals_a_per_head_reference(kind):
    """Query head h reads KV head h // (H / KV), as transformers' repeat_kv lays them out; softmax per head."""
    q, k, v, mask = _attention_inputs()
    mask[..., 0] = True  # every query sees at least one key
    h, kv, hd = q.shape[2], k.shape[2], q.shape[3]
    got = np.asarray(attention.attend(kind, *map(jnp.asarray, (q, k, v, mask))))
    for head in range(h):
        group = head // (h // kv)
        scores = np.einsum("btd,bsd->bts", q[:, :, head], k[:, :, group]) / np.sqrt(hd)
        scores = np.where(mask, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        np.testing.assert_allclose(got[:, :, head], np.einsum("bts,bsd->btd", probs, v[:, :, group]),
                                   atol=1e-5, err_msg=f"head {head}")


@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_blockwise_attention_and_its_gradients_equal_the_reference(block):
    """Blocks that do and do not divide the keys, and queries that see no key at all (padding rows)."""
    q, k, v, mask = map(jnp.asarray, _attention_inputs(t=6, s=11, seed=block))
    mask = mask.at[0, 2].set(False)  # row 0, query 2 sees nothing: uniform over the real keys in both
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
    loss = lambda f: lambda *a: jnp.sum(f(*a, mask) * cotangent)
    blockwise = lambda q, k, v, m: attention.blockwise(q, k, v, m, block=block)
    np.testing.assert_allclose(blockwise(q, k, v, mask), attention.reference(q, k, v, mask), rtol=1e-5, atol=1e-6)
    got = jax.grad(loss(blockwise), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(attention.reference), argnums=(0, 1, 2))(q, k, v)
    for g, w, name in zip(got, want, "qkv"):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=name)


def _packed_self_attention_inputs(t=128, h=4, kv=2, hd=8, seed=0):
    """Two rows of float32 self-attention over whole rows: row 0 packs three documents, row 1 is one."""
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(2, t, n, hd)), jnp.float32) for n in (h, kv, kv))
    segments = jnp.asarray([[0] * 40 + [1] * 50 + [2] * (t - 90), [0] * t], jnp.int32)
    return q, k, v, segments, model.causal_mask(2, t, segments)


def _assert_same_attention_and_gradients(f, q, k, v, mask, rtol=1e-5, atol=1e-5):
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
    loss = lambda g: lambda *a: jnp.sum(g(*a) * cotangent)
    ref = lambda q, k, v: attention.reference(q, k, v, mask)
    np.testing.assert_allclose(f(q, k, v), ref(q, k, v), rtol=rtol, atol=atol)
    for got, want, name in zip(jax.grad(loss(f), argnums=(0, 1, 2))(q, k, v),
                               jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v), "qkv"):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


def test_fused_gpu_attention_call_equals_the_reference():
    """The cuDNN call's arguments (layout, GQA, mask broadcast), run through its portable XLA twin: the
    same output and gradients wherever a query sees a key; queries that see none give zeros."""
    q, k, v, mask = map(jnp.asarray, _attention_inputs(t=6, s=11, seed=4))
    mask = mask.at[:, :, 0].set(True)
    fused = lambda q, k, v: attention.fused_gpu(q, k, v, mask, implementation="xla")
    _assert_same_attention_and_gradients(fused, q, k, v, mask)
    blind = mask.at[1, 3].set(False)
    np.testing.assert_array_equal(attention.fused_gpu(q, k, v, blind, implementation="xla")[1, 3], 0)


def test_splash_attention_kernel_equals_the_reference():
    """The TPU Pallas kernel, run by its interpreter on CPU: packed documents, GQA, output and gradients."""
    q, k, v, segments, mask = _packed_self_attention_inputs()
    _assert_same_attention_and_gradients(lambda q, k, v: attention.splash(q, k, v, segments, interpret=True),
                                         q, k, v, mask)


def test_splash_attention_runs_per_shard_on_a_mesh():
    """On a (2, 2, 2) mesh the kernel runs under shard_map (rows over data x fsdp, KV heads over tensor)."""
    q, k, v, segments, mask = _packed_self_attention_inputs(seed=1)
    q, k, v, segments = (jnp.concatenate([a, a[::-1]]) for a in (q, k, v, segments))  # 4 rows
    mesh = sharding.make_mesh((2, 2, 2))
    run = jax.jit(lambda *a: attention.splash(*a, interpret=True))
    with jax.set_mesh(mesh):
        got = run(q, k, v, segments)
        assert "shard_map" in str(jax.make_jaxpr(run)(q, k, v, segments))
    np.testing.assert_allclose(got, attention.reference(q, k, v, model.causal_mask(4, q.shape[1], segments)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("platform, dtype, t, segmented, want", [
    ("gpu", jnp.bfloat16, 1, False, "cudnn"), ("gpu", jnp.float32, 4096, True, "blockwise"),
    ("gpu", jnp.float32, 1, False, "xla"), ("tpu", jnp.bfloat16, 4096, True, "splash"),
    ("tpu", jnp.bfloat16, 4000, True, "blockwise"), ("tpu", jnp.bfloat16, 5, False, "xla"),
    ("cpu", jnp.bfloat16, 4096, True, "blockwise"), ("cpu", jnp.bfloat16, 5, True, "xla")])
def test_auto_and_flash_pick_the_kernel_the_backend_supports(platform, dtype, t, segmented, want):
    q, k = jnp.zeros((1, t, 4, 64), dtype), jnp.zeros((1, t, 2, 64), dtype)
    segments = jnp.zeros((1, t), jnp.int32) if segmented else None
    for kind in ("auto", "flash"):
        assert attention.resolve(kind, platform, q, k, segments) == want
    assert attention.resolve("xla", platform, q, k, segments) == "xla"


def test_hidden_states_are_the_layer_outputs(tiny_model):
    config, params = tiny_model
    tokens = _tokens(config)
    states = model.hidden_states(config, params, tokens)
    assert states.shape == (config.num_layers + 1, 3, 11, config.hidden_size)
    np.testing.assert_allclose(model.unembed(config, params, states[-1]), model.logits(config, params, tokens),
                               atol=1e-5)
    b, t = tokens.shape
    kwargs = dict(positions=jnp.broadcast_to(jnp.arange(t), (b, t)), mask=model.causal_mask(b, t))
    for layer in range(config.num_layers):
        one = model.run_layers(config, params, states[layer], layer, layer + 1, **kwargs).x
        np.testing.assert_allclose(one, states[layer + 1], atol=1e-5)


def test_residual_mask_skips_exactly_the_masked_layer_per_sample(tiny_model):
    config, params = tiny_model
    tokens = _tokens(config)
    plain = model.forward(config, params, tokens, collect_hidden=True)
    ones = model.forward(config, params, tokens, collect_hidden=True,
                         residual_mask=jnp.ones((3, config.num_layers)))
    np.testing.assert_array_equal(ones.hidden, plain.hidden)

    keep = np.ones((3, config.num_layers), bool)
    keep[1, 2] = False  # sample 1 skips layer 2
    masked = model.forward(config, params, tokens, collect_hidden=True, residual_mask=jnp.asarray(keep))
    np.testing.assert_array_equal(masked.hidden[2, 1], masked.hidden[1, 1])  # stream unchanged through layer 2
    assert np.abs(masked.hidden[2, 1] - plain.hidden[2, 1]).max() > 1e-3
    for row in (0, 2):  # other samples are untouched
        np.testing.assert_array_equal(masked.hidden[:, row], plain.hidden[:, row])


def test_residual_mask_blocks_gradient_of_skipped_layer(tiny_model):
    config, params = tiny_model
    tokens = _tokens(config, batch=2)
    keep = jnp.ones((2, config.num_layers), bool).at[:, 1].set(False)

    def loss(p):
        return model.logits(config, p, tokens, residual_mask=keep).sum()

    grads = jax.grad(loss)(params)
    assert float(jnp.abs(grads["layers"]["mlp"]["up"][1]).max()) == 0.0
    assert float(jnp.abs(grads["layers"]["mlp"]["up"][0]).max()) > 0.0


def test_packed_segments_equal_separate_documents(tiny_model):
    config, params = tiny_model
    doc_a, doc_b = _tokens(config, 1, 5, seed=1), _tokens(config, 1, 7, seed=2)
    packed = jnp.concatenate([doc_a, doc_b], axis=1)
    positions = jnp.asarray([list(range(5)) + list(range(7))])
    segments = jnp.asarray([[1] * 5 + [2] * 7])
    out = model.logits(config, params, packed, positions=positions, segment_ids=segments)
    np.testing.assert_allclose(out[:, :5], model.logits(config, params, doc_a), atol=1e-5)
    np.testing.assert_allclose(out[:, 5:], model.logits(config, params, doc_b), atol=1e-5)


@pytest.mark.parametrize("changes", [dict(attention="blockwise"), dict(attention="flash"), dict(remat="full"),
                                     dict(remat="dots"), dict(remat="full", attention="blockwise"),
                                     dict(remat="full", attention="splash-interpreted")])
def test_remat_and_attention_implementations_give_the_reference_loss_and_gradients(changes, monkeypatch):
    """Packed documents (segment ids, per-document positions), grouped-query heads, layer dropout: the same
    float32 loss and gradients as the plain einsum attention without rematerialisation. flash on CPU is its
    fallback; splash-interpreted forces the TPU kernel, run by its interpreter, into the model."""
    monkeypatch.setattr(attention, "BLOCK", 48)  # several key blocks, the last one partly padding
    if changes.get("attention") == "splash-interpreted":
        monkeypatch.setattr(attention, "resolve", lambda kind, *_: "xla" if kind == "xla" else "splash")
        monkeypatch.setattr(attention, "splash", functools.partial(attention.splash, interpret=True))
        changes = dict(changes, attention="flash")
    jax.clear_caches()
    config = TINY.replace(attention="xla")
    params = model.init(config, jax.random.key(3))
    rng = np.random.default_rng(3)
    t = 128  # the splash kernel's block granularity
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, (2, t)))
    segments = jnp.asarray([[1] * 5 + [2] * (t - 5), [1] * t])
    positions = jnp.asarray([list(range(5)) + list(range(t - 5)), list(range(t))])
    keep = jnp.asarray([[1, 0, 1, 1], [1, 1, 1, 0]], bool)

    def loss(p, cfg):
        logits = model.logits(cfg, p, tokens, positions=positions, segment_ids=segments, residual_mask=keep)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits)[:, :-1], tokens[:, 1:, None], -1))

    want, want_grads = jax.value_and_grad(loss)(params, config)
    got, got_grads = jax.value_and_grad(loss)(params, config.replace(**changes))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_bfloat16_compute_is_close_to_float32(tiny_model):
    config, params = tiny_model
    tokens = _tokens(config)
    f32 = model.logits(config, params, tokens)
    bf16_config = config.replace(dtype="bfloat16", param_dtype="bfloat16")
    bf16_params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    bf16 = model.logits(bf16_config, bf16_params, tokens)
    assert bf16.dtype == jnp.float32
    assert float(jnp.abs(bf16 - f32).max()) < 0.05 * float(jnp.abs(f32).max())
    assert jax.tree.leaves(model.init(bf16_config, jax.random.key(0)))[0].dtype == jnp.bfloat16


def test_every_param_has_logical_axes_with_rules(tiny_model):
    config, params = tiny_model
    axes = model.param_logical_axes(config)
    is_spec = lambda x: isinstance(x, PartitionSpec)
    assert jax.tree.structure(axes, is_leaf=is_spec) == jax.tree.structure(params)
    for spec, leaf in zip(jax.tree.leaves(axes, is_leaf=is_spec), jax.tree.leaves(params)):
        assert len(spec) == leaf.ndim
        assert all(name in sharding.LOGICAL_NAMES for name in spec)
    mesh_specs = sharding.param_specs(model.param_logical_axes(config))
    assert mesh_specs["layers"]["attn"]["q"] == PartitionSpec(None, "fsdp", "tensor", None)
    assert mesh_specs["embed"]["embedding"] == PartitionSpec("tensor", "fsdp")


def test_tied_model_has_no_head(tiny_model):
    config, params = tiny_model
    assert ("lm_head" in params) == (not config.tie_word_embeddings)
    assert sum(p.size for p in jax.tree.leaves(params)) == config.num_params()


def test_layer_range_outside_model_is_rejected():
    params = model.init(TINY, jax.random.key(0))
    x = jnp.zeros((1, 2, TINY.hidden_size))
    kwargs = dict(positions=jnp.zeros((1, 2), jnp.int32), mask=model.causal_mask(1, 2))
    with pytest.raises(ValueError, match=r"\[2, 9\)"):
        model.run_layers(TINY, params, x, 2, 9, **kwargs)


@pytest.mark.parametrize("changes,needle", [
    (dict(num_heads=4, num_kv_heads=3), "num_kv_heads=3"),
    (dict(hidden_size=0), "hidden_size=0"),
    (dict(dtype="float64"), "dtype='float64'"),
    (dict(head_dim=7), "head_dim=7"),
])
def test_bad_config_values_are_one_line_errors(changes, needle):
    base = dict(vocab_size=8, hidden_size=16, intermediate_size=8, num_layers=2, num_heads=2)
    with pytest.raises(ConfigError) as err:
        LlamaConfig(**{**base, **changes})
    assert needle in str(err.value) and "\n" not in str(err.value)
