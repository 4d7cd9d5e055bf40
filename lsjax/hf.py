"""Hugging Face Llama checkpoints in and out, without torch.

A checkpoint directory holds `config.json`, the weights as one `model.safetensors` or shards listed in
`model.safetensors.index.json`, and usually `tokenizer.json`. `load` turns it into an lsjax config and a
stacked params pytree; `save` writes the reverse, which `transformers.AutoModelForCausalLM` loads. The
`facebook/layerskip-*` checkpoints are plain Llama checkpoints, so this is how they come in.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from jax.sharding import NamedSharding, PartitionSpec

from lsjax.config import ConfigError, LlamaConfig, RopeScaling
from lsjax.errors import InputError

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

# config.json keys that say nothing about the computation; anything else must be understood or rejected.
_BOOKKEEPING_KEYS = {
    "_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "initializer_range", "attention_dropout", "pretraining_tp", "output_attentions", "output_hidden_states",
    "return_dict", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type",
    "tokenizer_class", "torchscript", "_attn_implementation_autoset",
}
_MAPPED_KEYS = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
    "tie_word_embeddings", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
    "hidden_act", "attention_bias", "mlp_bias",
}
_NUMPY_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class CheckpointError(InputError):
    """A checkpoint cannot be used; the one-line message names the file or field and what was expected."""


# --- config.json ---------------------------------------------------------------------------------------

def _rope_settings(raw: Dict[str, Any], where: str) -> Tuple[float, Optional[RopeScaling]]:
    """rope_theta and Llama 3 scaling from either the transformers 4 or the transformers 5 layout."""
    params = dict(raw.get("rope_parameters") or {})
    scaling = raw.get("rope_scaling") or params
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise CheckpointError(f"{where}: rope type {rope_type!r} is not supported (expected 'default' or 'llama3')")
    try:
        return theta, RopeScaling(
            factor=float(scaling["factor"]), low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]))
    except KeyError as missing:
        raise CheckpointError(f"{where}: llama3 rope scaling lacks the field {missing}") from None


def config_from_hf(raw: Dict[str, Any], where: str = "config.json", param_dtype: Optional[str] = None,
                   dtype: Optional[str] = None) -> LlamaConfig:
    """An lsjax config from a parsed Hugging Face Llama config.json; rejects what lsjax would compute wrongly."""
    if raw.get("model_type", "llama") != "llama":
        raise CheckpointError(f"{where}: model_type={raw.get('model_type')!r}, expected 'llama'")
    unknown = sorted(k for k in raw if k not in _BOOKKEEPING_KEYS | _MAPPED_KEYS and raw[k] not in (None, False))
    if unknown:
        raise CheckpointError(f"{where}: unknown architecture field {unknown[0]!r} (lsjax reads the Llama fields "
                              f"{sorted(_MAPPED_KEYS)})")
    if raw.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where}: hidden_act={raw['hidden_act']!r}, expected 'silu'")
    for flag in ("attention_bias", "mlp_bias"):
        if raw.get(flag):
            raise CheckpointError(f"{where}: {flag}=true is not supported (Llama has no biases)")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if key not in raw:
            raise CheckpointError(f"{where}: missing required field {key!r}")
    theta, scaling = _rope_settings(raw, where)
    eos = raw.get("eos_token_id")
    eos_ids = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
    stored = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    param_dtype = param_dtype or (stored if stored in _NUMPY_DTYPES else "float32")
    try:
        return LlamaConfig(
            vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"], num_layers=raw["num_hidden_layers"],
            num_heads=raw["num_attention_heads"], num_kv_heads=raw.get("num_key_value_heads"),
            head_dim=raw.get("head_dim"), rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)), rope_theta=theta,
            rope_scaling=scaling, tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            bos_token_id=raw.get("bos_token_id"), eos_token_ids=eos_ids, pad_token_id=raw.get("pad_token_id"),
            param_dtype=param_dtype, dtype=dtype or param_dtype)
    except ConfigError as err:
        raise CheckpointError(f"{where}: {err}") from None


def config_to_hf(config: LlamaConfig) -> Dict[str, Any]:
    """config.json fields in the layout both transformers 4 and 5 read (rope_theta + rope_scaling)."""
    raw = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings, "bos_token_id": config.bos_token_id,
        "eos_token_id": (list(config.eos_token_ids) if len(config.eos_token_ids) > 1
                         else (config.eos_token_ids[0] if config.eos_token_ids else None)),
        "pad_token_id": config.pad_token_id, "torch_dtype": config.param_dtype,
    }
    if config.rope_scaling is not None:
        s = config.rope_scaling
        raw["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                               "high_freq_factor": s.high_freq_factor,
                               "original_max_position_embeddings": s.original_max_position_embeddings}
    return raw


# --- weights -----------------------------------------------------------------------------------------------

def _hf_weight_shapes(config: LlamaConfig) -> Dict[str, Tuple[int, ...]]:
    """Shapes of one layer's HF tensors (name suffixes under model.layers.{i}.)."""
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
    return {
        "self_attn.q_proj.weight": (config.num_heads * hd, d),
        "self_attn.k_proj.weight": (config.num_kv_heads * hd, d),
        "self_attn.v_proj.weight": (config.num_kv_heads * hd, d),
        "self_attn.o_proj.weight": (d, config.num_heads * hd),
        "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f),
        "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
    }


def tensor_shapes(config: LlamaConfig) -> Dict[str, Tuple[int, ...]]:
    """Every tensor of the checkpoint by its HF name, with its shape."""
    vd = (config.vocab_size, config.hidden_size)
    shapes = {"model.embed_tokens.weight": vd, "model.norm.weight": (config.hidden_size,)}
    for i in range(config.num_layers):
        shapes.update({f"model.layers.{i}.{suffix}": shape for suffix, shape in _hf_weight_shapes(config).items()})
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = vd
    return shapes


def _layer_to_lsjax(config: LlamaConfig, w: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """One layer's HF tensors (out, in) to lsjax kernels (in, ..., out)."""
    d, h, kv, hd = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    return {
        "attn": {"q": w["self_attn.q_proj.weight"].T.reshape(d, h, hd),
                 "k": w["self_attn.k_proj.weight"].T.reshape(d, kv, hd),
                 "v": w["self_attn.v_proj.weight"].T.reshape(d, kv, hd),
                 "o": w["self_attn.o_proj.weight"].T.reshape(h, hd, d)},
        "mlp": {"gate": w["mlp.gate_proj.weight"].T, "up": w["mlp.up_proj.weight"].T,
                "down": w["mlp.down_proj.weight"].T},
        "attn_norm": {"scale": w["input_layernorm.weight"]},
        "mlp_norm": {"scale": w["post_attention_layernorm.weight"]},
    }


def _layer_to_hf(config: LlamaConfig, p: Dict[str, Any]) -> Dict[str, np.ndarray]:
    d = config.hidden_size
    return {
        "self_attn.q_proj.weight": p["attn"]["q"].reshape(d, -1).T,
        "self_attn.k_proj.weight": p["attn"]["k"].reshape(d, -1).T,
        "self_attn.v_proj.weight": p["attn"]["v"].reshape(d, -1).T,
        "self_attn.o_proj.weight": p["attn"]["o"].reshape(-1, d).T,
        "mlp.gate_proj.weight": p["mlp"]["gate"].T, "mlp.up_proj.weight": p["mlp"]["up"].T,
        "mlp.down_proj.weight": p["mlp"]["down"].T,
        "input_layernorm.weight": p["attn_norm"]["scale"],
        "post_attention_layernorm.weight": p["mlp_norm"]["scale"],
    }


class _TensorReader:
    """Reads named tensors across one or several safetensors files, with one-line errors."""

    def __init__(self, directory: Path):
        index_file, single_file = directory / INDEX_NAME, directory / WEIGHTS_NAME
        if index_file.exists():
            weight_map = _read_json(index_file).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index_file}: expected a 'weight_map' object")
            self._files = {name: directory / file for name, file in weight_map.items()}
        elif single_file.exists():
            self._files = None
            self._single = single_file
        else:
            raise CheckpointError(f"{directory}: no {WEIGHTS_NAME} or {INDEX_NAME} (not a safetensors checkpoint)")
        self._handles: Dict[Path, Any] = {}

    def _handle(self, file: Path):
        if file not in self._handles:
            try:
                self._handles[file] = safe_open(str(file), framework="numpy")
            except (OSError, SafetensorError) as err:
                raise CheckpointError(f"{file}: unreadable safetensors file ({err})") from None
        return self._handles[file]

    def file_of(self, name: str) -> Optional[Path]:
        if self._files is None:
            return self._single if name in self._handle(self._single).keys() else None
        return self._files.get(name)

    def get(self, name: str, shape: Tuple[int, ...], dtype) -> np.ndarray:
        file = self.file_of(name)
        if file is None:
            raise CheckpointError(f"weight {name!r} is missing from the checkpoint")
        tensor = self._handle(file).get_tensor(name)
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(f"{file.name}: {name} has shape {tuple(tensor.shape)}, expected {tuple(shape)} "
                                  f"from config.json")
        return tensor.astype(dtype)


def _read_json(file: Path) -> Dict[str, Any]:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: unreadable JSON ({err})") from None


def load_config(path, *, param_dtype: Optional[str] = None, dtype: Optional[str] = None) -> LlamaConfig:
    """The lsjax config of a local Hugging Face Llama directory (weights untouched).

    param_dtype defaults to the checkpoint's stored dtype; dtype (compute) defaults to param_dtype.
    """
    directory = Path(path)
    config_file = directory / "config.json"
    if not directory.is_dir() or not config_file.exists():
        raise CheckpointError(f"{directory}: not a Hugging Face checkpoint directory (no config.json)")
    return config_from_hf(_read_json(config_file), str(config_file), param_dtype, dtype)


def load(path, *, param_dtype: Optional[str] = None, dtype: Optional[str] = None, shardings=None):
    """(config, params) from a local Hugging Face Llama directory (dtypes as in `load_config`).

    Tensors stream one at a time: each is read, cast to the param dtype, laid out for lsjax and put on the
    devices, so host memory peaks near one tensor. shardings: a params-shaped tree of `NamedSharding`s
    (`sharding.param_shardings`) to load straight into, so that no device ever holds more than its shards;
    by default everything goes to the default device. A layer leaf is stacked on the devices once all its
    layers are there (a moment of twice that leaf's shards).
    """
    directory = Path(path)
    config = load_config(directory, param_dtype=param_dtype, dtype=dtype)
    reader = _TensorReader(directory)
    np_dtype = _NUMPY_DTYPES[config.param_dtype]
    place = (lambda array, _: jnp.asarray(array)) if shardings is None else jax.device_put
    target = lambda group, name: None if shardings is None else shardings[group][name]
    stacked_shardings = None if shardings is None else jax.tree.leaves(shardings["layers"])
    layer_shardings = None if shardings is None else [  # a stacked leaf's sharding without the layer axis
        NamedSharding(s.mesh, PartitionSpec(*s.spec[1:])) for s in stacked_shardings]
    shapes = _hf_weight_shapes(config)
    layers = []  # per layer, its leaves on the devices (in the order of the layer tree's leaves)
    for i in range(config.num_layers):
        raw = {suffix: reader.get(f"model.layers.{i}.{suffix}", shape, np_dtype) for suffix, shape in shapes.items()}
        leaves, layer_tree = jax.tree.flatten(_layer_to_lsjax(config, raw))
        layers.append([place(a, s) for a, s in zip(leaves, layer_shardings or [None] * len(leaves))])
        del raw, leaves  # this layer's host copies go before the next layer is read
    stacked = []
    for j in range(len(layers[0])):
        parts = [layer[j] for layer in layers]
        for layer in layers:  # hold each layer's slice of this leaf only until it is stacked
            layer[j] = None
        stack = jnp.stack if shardings is None else jax.jit(jnp.stack, out_shardings=stacked_shardings[j])
        stacked.append(stack(parts))
    vd = (config.vocab_size, config.hidden_size)
    params = {
        "embed": {"embedding": place(reader.get("model.embed_tokens.weight", vd, np_dtype), target("embed", "embedding"))},
        "layers": jax.tree.unflatten(layer_tree, stacked),
        "final_norm": {"scale": place(reader.get("model.norm.weight", (config.hidden_size,), np_dtype),
                                      target("final_norm", "scale"))},
    }
    if not config.tie_word_embeddings:
        params["lm_head"] = {"kernel": place(reader.get("lm_head.weight", vd, np_dtype).T, target("lm_head", "kernel"))}
    return config, params


def to_hf_tensors(config: LlamaConfig, params) -> Dict[str, np.ndarray]:
    """The flat HF tensor dict (contiguous numpy arrays) for lsjax params."""
    params = jax.tree.map(np.asarray, params)
    tensors = {"model.embed_tokens.weight": params["embed"]["embedding"],
               "model.norm.weight": params["final_norm"]["scale"]}
    for i in range(config.num_layers):
        layer = jax.tree.map(lambda x: x[i], params["layers"])
        tensors.update({f"model.layers.{i}.{k}": v for k, v in _layer_to_hf(config, layer).items()})
    if not config.tie_word_embeddings:
        tensors["lm_head.weight"] = params["lm_head"]["kernel"].T
    return {name: np.ascontiguousarray(t) for name, t in tensors.items()}


def _atomic_write(file: Path, write) -> None:
    """write(tmp_path) then rename: a crash never leaves a half-written file under the final name."""
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; exports are meant to be shared
        os.replace(tmp, file)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save(path, config: LlamaConfig, params, *, tokenizer=None, max_shard_bytes: int = 2 ** 31) -> None:
    """Writes a Hugging Face Llama directory (config.json, safetensors weights, optional tokenizer).

    Weights larger than max_shard_bytes are split into shards with an index, as transformers does.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = to_hf_tensors(config, params)
    shards, current, size = [], {}, 0
    for name, tensor in tensors.items():
        if current and size + tensor.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += tensor.nbytes
    shards.append(current)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        _atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(shards[0], tmp, metadata=metadata))
        (directory / INDEX_NAME).unlink(missing_ok=True)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _atomic_write(directory / name, lambda tmp, shard=shard: save_file(shard, tmp, metadata=metadata))
            weight_map.update({tensor_name: name for tensor_name in shard})
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
        _atomic_write(directory / INDEX_NAME, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2)))
        (directory / WEIGHTS_NAME).unlink(missing_ok=True)
    _atomic_write(directory / "config.json",
                  lambda tmp: Path(tmp).write_text(json.dumps(config_to_hf(config), indent=2) + "\n"))
    if tokenizer is not None:
        tokenizer.save(directory)
