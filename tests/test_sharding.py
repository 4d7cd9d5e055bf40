"""Sharded training and decoding on meshes of the 8 host CPU devices (see conftest): the same loss, params
and tokens as on one device, params created sharded, and the mesh flags' one-line errors."""

import re

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from lsjax import model, objective, sharding, train
from lsjax.decoder import Decoder, Options, encode_prompts
from lsjax.config import ConfigError, LlamaConfig
from tests.random_model import random_model

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]  # (data, fsdp, tensor)
CONFIG = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=4, num_heads=8,
                     num_kv_heads=8, max_position_embeddings=64)
RECIPE = objective.Recipe(p_max=0.3, layer_dropout_scale="exp", layer_dropout_time_scale="constant", e_scale=1.0,
                          exit_scale_shape="sum_l", curriculum="rotational", rotation=2, self_distill_beta=0.5,
                          total_steps=10, seed=0, loss_chunk_size=64)
BATCH, SEQ = 8, 16


def optimizer():
    return train.make_optimizer(ml_collections.ConfigDict(dict(
        learning_rate=1e-2, warmup_steps=1, steps=10, end_lr_ratio=0.1, grad_clip=1.0, b1=0.9, b2=0.95,
        weight_decay=0.1)))


def batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, CONFIG.vocab_size, (BATCH, SEQ + 1)).astype(np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "positions": np.tile(np.arange(SEQ, dtype=np.int32), (BATCH, 1)),
            "segment_ids": np.ones((BATCH, SEQ), np.int32), "loss_mask": np.ones((BATCH, SEQ), np.float32),
            "sample_index": np.arange(BATCH, dtype=np.int64)}


def one_step(shape):
    """(state before, state after, metrics, compiled step) of one LayerSkip step on a mesh of this shape."""
    mesh = sharding.make_mesh(shape)
    opt = optimizer()
    shardings = sharding.train_state_shardings(mesh, model.param_logical_axes(CONFIG), opt,
                                                train.abstract_state(CONFIG, opt))
    params = jax.device_get(model.init(CONFIG, jax.random.key(1)))
    state = train.init_state(CONFIG, opt, shardings, params)
    rows = train.batch_shardings(mesh, BATCH, SEQ)
    step = train.sharded_step(CONFIG, RECIPE, opt, 2, shardings, rows)
    inputs = {key: jax.device_put(value, rows[key]) for key, value in batch().items()}
    compiled = step.lower(state, inputs).compile()
    before = jax.device_get(state)
    after, metrics = step(state, inputs)
    return before, after, metrics, compiled


@pytest.fixture(scope="module")
def single_device():
    return one_step((1, 1, 1))


@pytest.mark.parametrize("shape", MESHES)
def test_layerskip_step_on_a_mesh_equals_one_device(shape, single_device):
    _, want_state, want_metrics, _ = single_device
    _, state, metrics, _ = one_step(shape)
    gate = state["params"]["layers"]["mlp"]["gate"]  # [L, embed, mlp]: embed over fsdp, mlp over tensor
    assert gate.sharding.spec == sharding.fitted_spec(gate.sharding.mesh, PartitionSpec(None, "fsdp", "tensor"),
                                                      gate.shape)
    assert len(gate.sharding.device_set) == 8
    # float32; sums over devices run in another order, so equal to rounding
    np.testing.assert_allclose(metrics["loss"], want_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["layer_loss"], want_metrics["layer_loss"], rtol=1e-5)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(state)),
                                 jax.tree.leaves(jax.device_get(want_state))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_fsdp_never_gathers_the_params_on_one_device():
    before, state, _, compiled = one_step((1, 8, 1))
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(before["params"]))
    on_device_0 = sum(shard.data.nbytes for leaf in jax.tree.leaves(state["params"])
                      for shard in leaf.addressable_shards if shard.device == jax.devices()[0])
    norms = sum(leaf.nbytes for path, leaf in jax.tree_util.tree_leaves_with_path(before["params"])
                if "norm" in jax.tree_util.keystr(path))
    assert on_device_0 == pytest.approx((total - norms) / 8 + norms)  # 1/8 of every matrix, whole norm scales
    # inside the step weights are gathered at most a layer at a time (within the scan over layers)
    one_layer = sum(leaf.nbytes for leaf in jax.tree.leaves(before["params"]["layers"])) / CONFIG.num_layers
    gathered = [int(np.prod([int(n) for n in dims.split(",") if n])) * 4
                for dims in re.findall(r"= \w+\[([\d,]*)\]\S* all-gather\(", compiled.as_text())]
    assert gathered and max(gathered) <= one_layer < total / 4


@pytest.mark.parametrize("shape", MESHES)
def test_self_speculative_decoding_on_a_mesh_equals_one_device(shape):
    config, params, tok = random_model()
    options = Options(strategy="self_speculative", exit_layer=2, num_speculations=3, max_new_tokens=12)
    prompts = encode_prompts(tok, ["def f(x):", "import os", "x = [", "class A:", "for i in", "#", "return",
                                   "while True:"])
    want = Decoder(config, params, tok, options).generate(prompts)
    got = Decoder(config, params, tok, options, mesh=sharding.make_mesh(shape)).generate(prompts)
    assert [row.token_ids for row in got.outputs] == [row.token_ids for row in want.outputs]


@pytest.mark.parametrize("shape,needle", [
    ((2, 2, 4), "needs 16 devices but 8 are present"),
    ((-1, -1, 2), "at most one -1"),
    ((3, -1, 1), "3 does not divide the 8 devices"),
    ((0, 1, 1), "expected positive sizes"),
])
def test_bad_meshes_are_one_line_errors(shape, needle):
    with pytest.raises(ConfigError, match=needle):
        sharding.mesh_shape(*shape)
