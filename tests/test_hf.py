"""Parity with transformers' PyTorch Llama on the same weights, through import and export."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from lsjax import hf, model
from tests.conftest import HF_TINY_CONFIGS, HF_VOCAB

torch = pytest.importorskip("torch", reason="parity tests need the CPU build of torch")
transformers = pytest.importorskip("transformers", reason="parity tests need transformers")

LOGIT_TOL = 1e-4


def _tokens(batch=2, length=40, seed=0):
    # 40 positions: beyond original_max_position_embeddings=16, so llama3 scaling changes the result.
    return np.random.default_rng(seed).integers(0, HF_VOCAB, (batch, length))


def _torch_logits(hf_model, tokens):
    with torch.no_grad():
        return hf_model(torch.tensor(tokens)).logits.float().numpy()


@pytest.mark.parametrize("name", list(HF_TINY_CONFIGS))
def test_import_matches_transformers(hf_checkpoints, name):
    directory, hf_model = hf_checkpoints[name]
    config, params = hf.load(directory)
    tokens = _tokens()
    ours = np.asarray(model.logits(config, params, jnp.asarray(tokens)))
    diff = np.abs(ours - _torch_logits(hf_model, tokens)).max()
    assert diff <= LOGIT_TOL, f"{name}: max |logit diff| {diff:.2e}"
    assert np.abs(ours).max() > 1.0, "logits too small for the comparison to mean anything"


@pytest.mark.parametrize("name", list(HF_TINY_CONFIGS))
def test_export_round_trip(hf_checkpoints, name, tmp_path):
    directory, hf_model = hf_checkpoints[name]
    config, params = hf.load(directory)
    hf.save(tmp_path, config, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    original = hf_model.state_dict()
    for key, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[key]), key
    tokens = _tokens(seed=1)
    ours = np.asarray(model.logits(config, params, jnp.asarray(tokens)))
    assert np.abs(ours - _torch_logits(reloaded, tokens)).max() <= LOGIT_TOL
    config2, params2 = hf.load(tmp_path)
    assert config2 == config


@pytest.mark.parametrize("name", list(HF_TINY_CONFIGS))
def test_exported_file_holds_exactly_the_tensors_transformers_writes(hf_checkpoints, name, tmp_path):
    """The same names, shapes and dtypes as transformers' own save: no lm_head.weight when tied."""
    directory, _ = hf_checkpoints[name]
    config, params = hf.load(directory)
    hf.save(tmp_path, config, params)
    layout = lambda file: {key: (tuple(t.shape), t.dtype) for key, t in load_file(file).items()}
    ours, theirs = layout(tmp_path / hf.WEIGHTS_NAME), layout(directory / hf.WEIGHTS_NAME)
    assert sorted(ours) == sorted(theirs)
    assert ours == theirs
    assert ("lm_head.weight" in ours) == (not config.tie_word_embeddings)


def test_llama3_scaling_matters(hf_checkpoints):
    """Guards the parity test itself: dropping the llama3 rope scaling must break it."""
    directory, hf_model = hf_checkpoints["llama3"]
    config, params = hf.load(directory)
    tokens = _tokens()
    wrong = np.asarray(model.logits(config.replace(rope_scaling=None), params, jnp.asarray(tokens)))
    assert np.abs(wrong - _torch_logits(hf_model, tokens)).max() > 100 * LOGIT_TOL


@pytest.mark.parametrize("name", ["llama2", "llama3.2"])
def test_hidden_states_match_transformers(hf_checkpoints, name):
    directory, hf_model = hf_checkpoints[name]
    config, params = hf.load(directory)
    tokens = _tokens(length=12)
    ours = np.asarray(model.hidden_states(config, params, jnp.asarray(tokens)))
    with torch.no_grad():
        theirs = [h.numpy() for h in hf_model(torch.tensor(tokens), output_hidden_states=True).hidden_states]
    assert len(theirs) == config.num_layers + 1
    # transformers reports the input of every layer, then the final-normed output of the last one.
    for layer in range(config.num_layers):
        np.testing.assert_allclose(ours[layer], theirs[layer], atol=1e-5, rtol=1e-5)
    normed_last = model.RMSNorm(config).apply({"params": params["final_norm"]}, jnp.asarray(ours[-1]))
    np.testing.assert_allclose(np.asarray(normed_last), theirs[-1], atol=1e-5, rtol=1e-5)


def test_sharded_export_loads(hf_checkpoints, tmp_path):
    directory, hf_model = hf_checkpoints["llama3"]
    config, params = hf.load(directory)
    hf.save(tmp_path, config, params, max_shard_bytes=40_000)
    index = json.loads((tmp_path / hf.INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / hf.WEIGHTS_NAME).exists()
    _, params2 = hf.load(tmp_path)
    for a, b in zip(jax_leaves(params), jax_leaves(params2)):
        np.testing.assert_array_equal(a, b)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    tokens = _tokens(seed=2)
    assert np.abs(_torch_logits(reloaded, tokens) - _torch_logits(hf_model, tokens)).max() == 0


def test_bfloat16_checkpoint_keeps_its_dtype(hf_checkpoints, tmp_path):
    directory, hf_model = hf_checkpoints["llama2"]
    hf_model.to(torch.bfloat16).save_pretrained(tmp_path)
    hf_model.to(torch.float32)
    config, params = hf.load(tmp_path)
    assert config.param_dtype == "bfloat16" and params["embed"]["embedding"].dtype == jnp.bfloat16
    config32, params32 = hf.load(tmp_path, param_dtype="float32")
    assert params32["embed"]["embedding"].dtype == jnp.float32
    tokens = _tokens(length=8)
    bf16 = np.asarray(model.logits(config, params, jnp.asarray(tokens)))
    f32 = np.asarray(model.logits(config32, params32, jnp.asarray(tokens)))
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - f32).max() < 0.1 * np.abs(f32).max()


def jax_leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


# --- one-line errors at the edge --------------------------------------------------------------------------

def _assert_one_line(err, *needles):
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(hf.CheckpointError) as err:
        hf.load(tmp_path)
    _assert_one_line(err, str(tmp_path), "config.json")


def _copy_checkpoint(src, dst, edit_config=None):
    import shutil
    shutil.copytree(src, dst)
    if edit_config:
        raw = json.loads((dst / "config.json").read_text())
        edit_config(raw)
        (dst / "config.json").write_text(json.dumps(raw))
    return dst


def test_unknown_architecture_field(hf_checkpoints, tmp_path):
    directory, _ = hf_checkpoints["llama2"]
    bad = _copy_checkpoint(directory, tmp_path / "ckpt", lambda raw: raw.update(sliding_window=512))
    with pytest.raises(hf.CheckpointError) as err:
        hf.load(bad)
    _assert_one_line(err, "sliding_window", "config.json")


@pytest.mark.parametrize("edit,needle", [
    (lambda raw: raw.update(hidden_act="gelu"), "hidden_act"),
    (lambda raw: raw.update(attention_bias=True), "attention_bias"),
    (lambda raw: raw.update(model_type="mistral"), "model_type"),
    (lambda raw: raw.update(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), "yarn"),
    (lambda raw: raw.update(num_key_value_heads=3), "num_kv_heads"),
])
def test_unsupported_config_values(hf_checkpoints, tmp_path, edit, needle):
    directory, _ = hf_checkpoints["llama2"]
    with pytest.raises(hf.CheckpointError) as err:
        hf.load(_copy_checkpoint(directory, tmp_path / "ckpt", edit))
    _assert_one_line(err, needle)


def test_shape_mismatch(hf_checkpoints, tmp_path):
    directory, _ = hf_checkpoints["llama2"]
    bad = _copy_checkpoint(directory, tmp_path / "ckpt", lambda raw: raw.update(intermediate_size=100))
    with pytest.raises(hf.CheckpointError) as err:
        hf.load(bad)
    _assert_one_line(err, "mlp.", "expected", "(100")


def test_missing_weight(hf_checkpoints, tmp_path):
    from safetensors.numpy import load_file, save_file
    directory, _ = hf_checkpoints["llama2"]
    bad = _copy_checkpoint(directory, tmp_path / "ckpt")
    tensors = load_file(bad / hf.WEIGHTS_NAME)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, bad / hf.WEIGHTS_NAME)
    with pytest.raises(hf.CheckpointError) as err:
        hf.load(bad)
    _assert_one_line(err, "model.layers.1.mlp.up_proj.weight", "missing")


def test_corrupt_weights_file(hf_checkpoints, tmp_path):
    directory, _ = hf_checkpoints["llama2"]
    bad = _copy_checkpoint(directory, tmp_path / "ckpt")
    (bad / hf.WEIGHTS_NAME).write_bytes(b"not safetensors")
    with pytest.raises(hf.CheckpointError) as err:
        hf.load(bad)
    _assert_one_line(err, hf.WEIGHTS_NAME, "unreadable")
