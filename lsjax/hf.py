"""Hugging Face Llama checkpoints in and out, without torch.

A checkpoint directory holds `config.json`, the weights as one `model.safetensors` or shards listed in
`model.safetensors.index.json`, and usually `tokenizer.json`. `load` turns it into an lsjax config and a
stacked params pytree; `save` writes the reverse, which `transformers.AutoModelForCausalLM` loads. The
`facebook/layerskip-*` checkpoints are plain Llama checkpoints, so this is how they come in.

Loading is two steps that other formats reuse: `config_from_hf` (a config.json dict to an `LlamaConfig`) and
`load_tensors` (weights from any reader of HF-named tensors; `lsjax.gguf_checkpoint` passes one over a GGUF file).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple, Protocol
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from lsjax import sharding
from lsjax.config import ConfigError, LlamaConfig, RopeScaling, check_hf_types
from lsjax.errors import InputError

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

# config.json keys that transformers writes into every Llama config and that say nothing about the computation:
# ignored silently.
_BOOKKEEPING_KEYS = {
    "_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "initializer_range", "attention_dropout", "pretraining_tp", "output_attentions", "output_hidden_states",
    "return_dict", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type",
    "tokenizer_class", "torchscript", "_attn_implementation_autoset",
}
# Keys that other tools leave in config.json and that do not change the logits either (names, the ids of tokens
# a causal LM never inserts, generation defaults, which the caller's decode options replace): ignored with one
# warning line, so that a user sees what lsjax does not carry over.
_IGNORED_KEYS = {
    "_model_name_or_path", "name_or_path", "model_name", "unk_token_id", "sep_token_id", "cls_token_id",
    "mask_token_id", "decoder_start_token_id", "max_length", "min_length", "temperature", "top_p", "top_k",
    "typical_p", "do_sample", "num_beams", "num_beam_groups", "diversity_penalty", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "early_stopping",
    "num_return_sequences", "bad_words_ids", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
    "begin_suppress_tokens", "remove_invalid_values", "exponential_decay_length_penalty", "output_scores",
    "return_dict_in_generate", "tie_encoder_decoder", "prefix", "task_specific_params", "finetuning_task",
    "cross_attention_hidden_size", "add_cross_attention", "is_decoder", "tf_legacy_loss", "use_bfloat16",
    "quantization_config",  # only a dequantised model's note (quant_method 'gguf'), see _check_quantization
}
# Keys of Llama-like architectures that change the computation lsjax does: set to anything but null/false,
# they are rejected with this reason. Unknown keys are rejected on the same terms (a null/false one is ignored).
_COMPUTATION_KEYS = {
    "attention_bias": "Llama has no biases", "mlp_bias": "Llama has no biases",
    "sliding_window": "lsjax attends to the whole context", "use_sliding_window": "lsjax attends to the whole context",
    "attn_logit_softcapping": "lsjax does not cap logits", "final_logit_softcapping": "lsjax does not cap logits",
    "partial_rotary_factor": "lsjax rotates the whole head", "qk_layernorm": "Llama has no q/k norms",
    "use_qk_norm": "Llama has no q/k norms", "num_local_experts": "Llama is dense",
    "num_experts": "Llama is dense", "no_rope_layers": "every Llama layer uses rope",
}
_MAPPED_KEYS = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
    "tie_word_embeddings", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
    "hidden_act",
}
_NUMPY_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_FLOAT_DTYPES = {np.dtype(t) for t in (*_NUMPY_DTYPES.values(), np.float64)}


class CheckpointError(InputError):
    """A checkpoint cannot be used; the one-line message names the file or field and what was expected."""


# --- config.json ---------------------------------------------------------------------------------------

def _rope_settings(raw: dict[str, Any], where: str) -> tuple[float, RopeScaling | None]:
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


def _check_fields(raw: dict[str, Any], where: str) -> None:
    """Rejects fields that would change the computation; warns once about the harmless ones it skips."""
    unread = sorted(set(raw) - _BOOKKEEPING_KEYS - _MAPPED_KEYS)
    for key in unread:
        if key not in _IGNORED_KEYS and raw[key] not in (None, False):
            reason = _COMPUTATION_KEYS.get(key, f"lsjax reads the Llama fields {sorted(_MAPPED_KEYS)}")
            kind = "" if key in _COMPUTATION_KEYS else "unknown architecture field "
            raise CheckpointError(f"{where}: {kind}{key}={raw[key]!r} is not supported ({reason})")
    _check_quantization(raw.get("quantization_config"), where)
    ignored = [key for key in unread if key not in _COMPUTATION_KEYS]  # a null/false computation key agrees
    if ignored:
        print(f"warning: {where}: ignoring {ignored} (they do not change the computation)", file=sys.stderr)


def _check_quantization(note: Any, where: str) -> None:
    """A GGUF model that transformers dequantised keeps a quantization_config; any other means packed weights."""
    if note is not None and (not isinstance(note, dict) or note.get("quant_method") != "gguf"):
        method = note.get("quant_method") if isinstance(note, dict) else note
        raise CheckpointError(f"{where}: quantization_config quant_method={method!r} is not supported (lsjax reads "
                              f"float weights; only the note of a dequantised GGUF model, 'gguf', is ignored)")


def config_from_hf(raw: dict[str, Any], where: str = "config.json", param_dtype: str | None = None,
                   dtype: str | None = None) -> LlamaConfig:
    """An lsjax config from a parsed Hugging Face Llama config.json; rejects what lsjax would compute wrongly."""
    check_hf_types(raw, where)
    if raw.get("model_type", "llama") != "llama":
        raise CheckpointError(f"{where}: model_type={raw.get('model_type')!r}, expected 'llama'")
    _check_fields(raw, where)
    if raw.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where}: hidden_act={raw['hidden_act']!r}, expected 'silu'")
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


def config_to_hf(config: LlamaConfig) -> dict[str, Any]:
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

class _LayerTensor(NamedTuple):
    """One layer's HF tensor (its name under model.layers.{i}.) and where it lives among lsjax's params."""
    leaf: tuple[str, str]  # (group, name) in params["layers"]
    shape: Callable[[LlamaConfig], tuple[int, ...]]  # HF's (out, in) shape
    to_lsjax: Callable[[np.ndarray, LlamaConfig], np.ndarray]
    to_hf: Callable[[np.ndarray, LlamaConfig], np.ndarray]


def _same(w, c):
    return w


def _projection(heads: Callable[[LlamaConfig], int]) -> tuple[Callable, Callable, Callable]:
    """(shape, to_lsjax, to_hf) of a q/k/v projection: HF (heads * hd, d) <-> lsjax (d, heads, hd)."""
    return (lambda c: (heads(c) * c.head_dim, c.hidden_size),
            lambda w, c: w.T.reshape(c.hidden_size, heads(c), c.head_dim),
            lambda w, c: w.reshape(c.hidden_size, -1).T)


# The params layout, one place: every HF tensor of a layer, its lsjax leaf and both conversions.
LAYER_TENSORS: dict[str, _LayerTensor] = {
    "self_attn.q_proj.weight": _LayerTensor(("attn", "q"), *_projection(lambda c: c.num_heads)),
    "self_attn.k_proj.weight": _LayerTensor(("attn", "k"), *_projection(lambda c: c.num_kv_heads)),
    "self_attn.v_proj.weight": _LayerTensor(("attn", "v"), *_projection(lambda c: c.num_kv_heads)),
    "self_attn.o_proj.weight": _LayerTensor(
        ("attn", "o"), lambda c: (c.hidden_size, c.num_heads * c.head_dim),
        lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
        lambda w, c: w.reshape(-1, c.hidden_size).T),
    "mlp.gate_proj.weight": _LayerTensor(("mlp", "gate"), lambda c: (c.intermediate_size, c.hidden_size),
                                         lambda w, c: w.T, lambda w, c: w.T),
    "mlp.up_proj.weight": _LayerTensor(("mlp", "up"), lambda c: (c.intermediate_size, c.hidden_size),
                                       lambda w, c: w.T, lambda w, c: w.T),
    "mlp.down_proj.weight": _LayerTensor(("mlp", "down"), lambda c: (c.hidden_size, c.intermediate_size),
                                         lambda w, c: w.T, lambda w, c: w.T),
    "input_layernorm.weight": _LayerTensor(("attn_norm", "scale"), lambda c: (c.hidden_size,), _same, _same),
    "post_attention_layernorm.weight": _LayerTensor(("mlp_norm", "scale"), lambda c: (c.hidden_size,), _same,
                                                    _same),
}


def tensor_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint by its HF name, with its shape."""
    vd = (config.vocab_size, config.hidden_size)
    shapes = {"model.embed_tokens.weight": vd, "model.norm.weight": (config.hidden_size,)}
    for i in range(config.num_layers):
        shapes.update({f"model.layers.{i}.{suffix}": t.shape(config) for suffix, t in LAYER_TENSORS.items()})
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = vd
    return shapes


def _layer_to_lsjax(config: LlamaConfig, w: dict[str, np.ndarray]) -> dict[str, Any]:
    """One layer's HF tensors (out, in) to lsjax's nested leaves (in, ..., out)."""
    layer: dict[str, Any] = {}
    for suffix, t in LAYER_TENSORS.items():
        layer.setdefault(t.leaf[0], {})[t.leaf[1]] = t.to_lsjax(w[suffix], config)
    return layer


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
        self._handles: dict[Path, Any] = {}

    def _handle(self, file: Path):
        if file not in self._handles:
            try:
                self._handles[file] = safe_open(str(file), framework="numpy")
            except (OSError, SafetensorError) as err:
                raise CheckpointError(f"{file}: unreadable safetensors file ({err})") from None
        return self._handles[file]

    def file_of(self, name: str) -> Path | None:
        if self._files is None:
            return self._single if name in self._handle(self._single).keys() else None
        return self._files.get(name)

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        file = self.file_of(name)
        if file is None:
            raise CheckpointError(f"weight {name!r} is missing from the checkpoint")
        tensor = self._handle(file).get_tensor(name)
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(f"{file.name}: {name} has shape {tuple(tensor.shape)}, expected {tuple(shape)} "
                                  f"from config.json")
        if tensor.dtype not in _FLOAT_DTYPES:
            raise CheckpointError(f"{file.name}: {name} is stored as {tensor.dtype}, expected one of float32, "
                                  f"float16, bfloat16 (packed quantised weights are not supported)")
        return tensor.astype(dtype)


def _read_json(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: unreadable JSON ({err})") from None


def load_config(path, *, param_dtype: str | None = None, dtype: str | None = None) -> LlamaConfig:
    """The lsjax config of a local Hugging Face Llama directory (weights untouched).

    param_dtype defaults to the checkpoint's stored dtype; dtype (compute) defaults to param_dtype.
    """
    directory = Path(path)
    config_file = directory / "config.json"
    if not directory.is_dir() or not config_file.exists():
        raise CheckpointError(f"{directory}: not a Hugging Face checkpoint directory (no config.json)")
    return config_from_hf(_read_json(config_file), str(config_file), param_dtype, dtype)


class TensorReader(Protocol):
    """Where `load_tensors` gets weights: each by its HF name, in that shape (out, in) and numpy dtype."""

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray: ...


def load(path, *, param_dtype: str | None = None, dtype: str | None = None, shardings=None):
    """(config, params) from a local Hugging Face Llama directory (dtypes as in `load_config`, placement as in
    `load_tensors`)."""
    directory = Path(path)
    config = load_config(directory, param_dtype=param_dtype, dtype=dtype)
    return config, load_tensors(config, _TensorReader(directory), shardings)


def load_tensors(config: LlamaConfig, reader: TensorReader, shardings=None):
    """The params pytree of `config` from a reader of HF-named tensors (safetensors files, a GGUF file, ...).

    Tensors stream one at a time: each is read, cast to the param dtype, laid out for lsjax and put on the
    devices, so host memory peaks near one tensor. shardings: a params-shaped tree of `NamedSharding`s
    (`sharding.param_shardings`) to load straight into, so that no device ever holds more than its shards;
    by default everything goes to the default device. A layer leaf is stacked on the devices once all its
    layers are there (a moment of twice that leaf's shards).
    """
    np_dtype = _NUMPY_DTYPES[config.param_dtype]
    place = (lambda array, _: jnp.asarray(array)) if shardings is None else jax.device_put
    target = lambda group, name: None if shardings is None else shardings[group][name]
    stacked_shardings = None if shardings is None else jax.tree.leaves(shardings["layers"])
    layer_shardings = None if shardings is None else [sharding.without_leading_axis(s) for s in stacked_shardings]
    layers = []  # per layer, its leaves on the devices (in the order of the layer tree's leaves)
    for i in range(config.num_layers):
        raw = {suffix: reader.get(f"model.layers.{i}.{suffix}", t.shape(config), np_dtype)
               for suffix, t in LAYER_TENSORS.items()}
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
    return params


# --- export ------------------------------------------------------------------------------------------------

class _ExportTensor(NamedTuple):
    name: str
    nbytes: int
    fetch: Callable[[], np.ndarray]  # gathers only this tensor onto the host


def _fetch(leaf, index: int | None, to_hf: Callable[[np.ndarray, LlamaConfig], np.ndarray], config: LlamaConfig):
    """A thunk that gathers leaf[index] (one layer's slice) onto the host and lays it out as HF stores it."""
    return lambda: np.ascontiguousarray(to_hf(np.asarray(leaf if index is None else leaf[index]), config))


def _export_plan(config: LlamaConfig, params) -> list[_ExportTensor]:
    """Every HF tensor of `params`, in file order, with its size known before anything is gathered."""
    embedding, norm = params["embed"]["embedding"], params["final_norm"]["scale"]
    sources = [("model.embed_tokens.weight", embedding, _fetch(embedding, None, _same, config)),
               ("model.norm.weight", norm, _fetch(norm, None, _same, config))]
    for i in range(config.num_layers):
        for suffix, t in LAYER_TENSORS.items():
            leaf = params["layers"][t.leaf[0]][t.leaf[1]]
            sources.append((f"model.layers.{i}.{suffix}", leaf, _fetch(leaf, i, t.to_hf, config)))
    if not config.tie_word_embeddings:
        kernel = params["lm_head"]["kernel"]
        sources.append(("lm_head.weight", kernel, _fetch(kernel, None, lambda w, c: w.T, config)))
    shapes = tensor_shapes(config)
    return [_ExportTensor(name, math.prod(shapes[name]) * np.dtype(leaf.dtype).itemsize, fetch)
            for name, leaf, fetch in sources]


def to_hf_tensors(config: LlamaConfig, params) -> dict[str, np.ndarray]:
    """The flat HF tensor dict (contiguous numpy arrays) for lsjax params (all of it on the host at once;
    `save` gathers shard by shard instead)."""
    return {t.name: t.fetch() for t in _export_plan(config, params)}


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

    Weights larger than max_shard_bytes are split into shards with an index, as transformers does. Each shard
    is gathered from the devices tensor by tensor just before it is written, so host memory peaks near one
    shard, not the whole model.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    plan = _export_plan(config, params)
    shards, current, size = [], [], 0
    for tensor in plan:
        if current and size + tensor.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(tensor)
        size += tensor.nbytes
    shards.append(current)
    metadata = {"format": "pt"}
    gather = lambda shard: {t.name: t.fetch() for t in shard}  # one shard on the host at a time
    if len(shards) == 1:
        _atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(gather(shards[0]), tmp, metadata=metadata))
        (directory / INDEX_NAME).unlink(missing_ok=True)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _atomic_write(directory / name, lambda tmp, shard=shard: save_file(gather(shard), tmp, metadata=metadata))
            weight_map.update({t.name: name for t in shard})
        index = {"metadata": {"total_size": sum(t.nbytes for t in plan)}, "weight_map": weight_map}
        _atomic_write(directory / INDEX_NAME, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2)))
        (directory / WEIGHTS_NAME).unlink(missing_ok=True)
    _atomic_write(directory / "config.json",
                  lambda tmp: Path(tmp).write_text(json.dumps(config_to_hf(config), indent=2) + "\n"))
    if tokenizer is not None:
        tokenizer.save(directory)
