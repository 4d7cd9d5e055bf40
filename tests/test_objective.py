"""The LayerSkip objective and the train step against a slow obvious reference: layer-dropout rates written
out by hand, keep masks drawn from each sample's global index, hidden states through `model.forward`, every
exit's loss with all its logits at once. Micro-batching (grad_accum) must not change which layers a sample
skips."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lsjax import layer_dropout, model, objective, train
from lsjax.config import LlamaConfig
from tests.conftest import scaled

CONFIG = LlamaConfig(vocab_size=29, hidden_size=32, intermediate_size=48, num_layers=5, num_heads=4, num_kv_heads=2)
BATCH, SEQ = 4, 7
E_SCALE = 0.5


def recipe(p_max, time_scale="constant"):
    return objective.Recipe(p_max=p_max, layer_dropout_scale="exp", layer_dropout_time_scale=time_scale,
                            e_scale=E_SCALE, exit_scale_shape="sum_l", curriculum="none", rotation=1,
                            self_distill_beta=0.0, total_steps=6, seed=7, loss_chunk_size=5)


def params():
    return jax.device_get(scaled(model.init(CONFIG, jax.random.key(0)), 6.0))


def batch(step):
    """The global batch of `step`: rows are samples step * BATCH .. step * BATCH + BATCH - 1 of the data."""
    rng = np.random.default_rng(step)
    tokens = rng.integers(0, CONFIG.vocab_size, (BATCH, SEQ + 1)).astype(np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "positions": np.tile(np.arange(SEQ, dtype=np.int32), (BATCH, 1)),
            "segment_ids": np.ones((BATCH, SEQ), np.int32),
            "loss_mask": (rng.random((BATCH, SEQ)) > 0.2).astype(np.float32),
            "sample_index": np.arange(step * BATCH, (step + 1) * BATCH, dtype=np.int64)}


def hand_rates(r, step):
    """p_{l,t} = S(t) D(l) p_max with D(l) = 2^(l / (L-1)) - 1 (0 at the first layer, 1 at the last) and
    S(t) = 1 (constant) or 2^(t / (T-1)) - 1 (from scratch)."""
    layers = np.arange(CONFIG.num_layers)
    depth = 2.0 ** (layers / (CONFIG.num_layers - 1)) - 1.0
    time = 1.0 if r.layer_dropout_time_scale == "constant" else 2.0 ** (step / (r.total_steps - 1)) - 1.0
    return jnp.asarray(time * depth * r.p_max, jnp.float32)


def hand_exit_weights():
    """e(l) = e_scale * l (l + 1) / 2, the last layer (L - 1) + e_scale * (L - 2)(L - 1) / 2, normalised."""
    n = CONFIG.num_layers
    e = np.asarray([E_SCALE * l * (l + 1) / 2 for l in range(n)])
    e[-1] = (n - 1) + E_SCALE * (n - 2) * (n - 1) / 2
    return jnp.asarray(e / e.sum(), jnp.float32)


def reference_loss(r, p, rows, step):
    """The loss of `rows` of the global batch, each sample skipping the layers its own global index draws."""
    keep = layer_dropout.keep_mask(r.seed, step, rows["sample_index"], hand_rates(r, step))
    hidden = model.forward(CONFIG, p, rows["inputs"], positions=rows["positions"], segment_ids=rows["segment_ids"],
                           residual_mask=keep, collect_hidden=True).hidden  # [L, B, T, D]
    log_probs = jax.nn.log_softmax(model.unembed(CONFIG, p, hidden), -1)
    nll = -jnp.take_along_axis(log_probs, rows["targets"][None, ..., None], -1)[..., 0]
    mask = rows["loss_mask"]
    return jnp.sum(hand_exit_weights() * jnp.sum(nll * mask, (1, 2)) / jnp.sum(mask))


def sgd_step(r, grad_accum, state, rows):
    """train_step with plain SGD at rate 1: params after minus before is minus the gradient."""
    return train.train_step(CONFIG, r, optax.sgd(1.0), grad_accum, state, rows)


CASES = [
    pytest.param(recipe(1.0), 3, id="p_max=1"),  # layer 0 never skipped, the last layer always
    pytest.param(recipe(0.6, "exp"), 4, id="p_max=0.6-rising"),  # S(t) at step 4 of 6
]


@pytest.mark.parametrize("r,step", CASES)
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_train_step_equals_the_reference_with_global_sample_indices(r, step, grad_accum):
    p, rows = params(), batch(step)
    state = {"step": jnp.int32(step), "params": p, "opt_state": optax.sgd(1.0).init(p)}
    new_state, metrics = jax.jit(functools.partial(sgd_step, r, grad_accum))(state, rows)
    got_grads = jax.tree.map(lambda before, after: before - after, p, jax.device_get(new_state["params"]))

    # micro-batch i holds rows i, i + grad_accum, ... (so that every device keeps its own rows); each keeps
    # its rows' global indices
    blocks = [jax.tree.map(lambda a: a[i::grad_accum], rows) for i in range(grad_accum)]
    want = lambda q: sum(reference_loss(r, q, block, step) for block in blocks) / grad_accum
    want_loss, want_grads = jax.value_and_grad(want)(p)
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
    for (path, got), expected in zip(jax.tree_util.tree_leaves_with_path(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    if r.p_max == 1.0:  # D(l) at its extremes: the last layer never runs, the first always does
        up = got_grads["layers"]["mlp"]["up"]
        assert float(np.abs(up[-1]).max()) == 0.0 and float(np.abs(up[0]).max()) > 0.0


def test_layerskip_loss_skips_what_the_keep_mask_says():
    """layerskip_loss alone, on the whole batch: the same value and aux as the reference, and dropout
    changes the loss (so the comparison above is not between two dropout-free runs)."""
    r, step = recipe(0.6), 2
    p, rows = params(), batch(step)
    loss, (out, layers) = objective.layerskip_loss(CONFIG, r, p, rows, step)
    np.testing.assert_allclose(loss, reference_loss(r, p, rows, step), rtol=1e-5)
    np.testing.assert_array_equal(layers, np.arange(1, CONFIG.num_layers))  # e(0) = 0 takes no slot
    no_dropout, _ = objective.layerskip_loss(CONFIG, recipe(0.0), p, rows, step)
    assert abs(float(loss) - float(no_dropout)) > 1e-3
