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


# --- lenient config.json: harmless fields warn once, computation-changing ones raise ---------------------------

HARMLESS = {"_model_name_or_path": "some/where", "unk_token_id": 0, "sep_token_id": None, "max_length": 20,
            "temperature": 0.7, "top_p": 0.9, "do_sample": True, "repetition_penalty": 1.1,
            "quantization_config": {"quant_method": "gguf", "gguf_file": "model.gguf", "dequantize": False},
            "a_future_flag": None, "another_one": False}


def test_harmless_fields_are_ignored_with_one_warning(hf_checkpoints, tmp_path, capsys):
    directory, _ = hf_checkpoints["llama2"]
    config, _ = hf.load(directory)
    assert capsys.readouterr().err == ""  # what transformers itself writes is read silently
    lenient = _copy_checkpoint(directory, tmp_path / "ckpt", lambda raw: raw.update(HARMLESS))
    assert hf.load_config(lenient) == config
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "config.json" in lines[0]
    for key in HARMLESS:
        assert repr(key) in lines[0], key


def test_switched_off_computation_fields_are_silent(hf_checkpoints, tmp_path, capsys):
    directory, _ = hf_checkpoints["llama2"]
    off = dict(attention_bias=False, mlp_bias=False, sliding_window=None, use_sliding_window=False,
               attn_logit_softcapping=None, final_logit_softcapping=None)
    hf.load_config(_copy_checkpoint(directory, tmp_path / "ckpt", lambda raw: raw.update(off)))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("field,value", [
    ("mlp_bias", True), ("sliding_window", 4096), ("attn_logit_softcapping", 50.0),
    ("final_logit_softcapping", 30.0), ("rope_scaling", {"rope_type": "linear", "factor": 2.0}),
    ("hidden_act", "gelu_pytorch_tanh"), ("a_future_scale", 2.0),
    ("quantization_config", {"quant_method": "fp8", "weight_block_size": [128, 128]}),
])
def test_fields_that_change_the_computation_raise(hf_checkpoints, tmp_path, field, value):
    directory, _ = hf_checkpoints["llama2"]
    with pytest.raises(hf.CheckpointError) as err:
        hf.load_config(_copy_checkpoint(directory, tmp_path / "ckpt", lambda raw: raw.update({field: value})))
    _assert_one_line(err, "config.json", field if field != "rope_scaling" else "linear")


def test_integer_weights_are_rejected(hf_checkpoints, tmp_path):
    """Packed quantised weights (int8, uint8) would otherwise be cast to floats silently."""
    from safetensors.numpy import save_file
    directory, _ = hf_checkpoints["llama2"]
    bad = _copy_checkpoint(directory, tmp_path / "ckpt")
    tensors = load_file(bad / hf.WEIGHTS_NAME)
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"].astype(np.int8)
    save_file(tensors, bad / hf.WEIGHTS_NAME)
    with pytest.raises(hf.CheckpointError) as err:
        hf.load(bad)
    _assert_one_line(err, "model.layers.0.mlp.up_proj.weight", "int8", "bfloat16")


def test_load_tensors_takes_any_reader(hf_checkpoints):
    """`load_tensors` needs only `.get(name, shape, dtype)`: a dict of tensors loads like the directory."""
    directory, _ = hf_checkpoints["llama3.2"]
    config, params = hf.load(directory)
    tensors = load_file(directory / hf.WEIGHTS_NAME)
    asked = []

    class Reader:
        def get(self, name, shape, dtype):
            asked.append(name)
            assert tensors[name].shape == shape
            return tensors[name].astype(dtype)

    for a, b in zip(jax_leaves(hf.load_tensors(config, Reader())), jax_leaves(params)):
        np.testing.assert_array_equal(a, b)
    assert sorted(asked) == sorted(hf.tensor_shapes(config))


def test_save_gathers_one_shard_at_a_time(hf_checkpoints, tmp_path, monkeypatch):
    """Export fetches each tensor from the devices just before its shard is written, never the whole model."""
    directory, _ = hf_checkpoints["llama3"]
    config, params = hf.load(directory)
    fetched, written = [], []
    real_fetch, real_save_file = hf._fetch, hf.save_file

    def counting_fetch(*args):
        thunk = real_fetch(*args)
        return lambda: fetched.append(1) or thunk()

    def recording_save_file(tensors, *args, **kwargs):
        written.append((len(fetched), len(tensors)))
        return real_save_file(tensors, *args, **kwargs)

    monkeypatch.setattr(hf, "_fetch", counting_fetch)
    monkeypatch.setattr(hf, "save_file", recording_save_file)
    hf.save(tmp_path, config, params, max_shard_bytes=40_000)
    # when shard k is written, only shards 1..k have been fetched
    assert len(written) > 2 and [n for n, _ in written] == list(np.cumsum([k for _, k in written]))
