"""Tests of lsjax.tokenizer: exact byte-level round trips, BOS/EOS, the files it reads and writes, and parity
with transformers.AutoTokenizer on what `save` writes."""

import json
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import tokenizers
from tokenizers import pre_tokenizers

from lsjax import tokenizer as tk

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CORPUS = ("textwrap.py", "bisect.py", "colorsys.py", "keyword.py")
UNSEEN = "heapq.py"  # Python source the tokenizer was not trained on

# Texts where tokenizers commonly go wrong: indentation, CRLF, special-token strings, non-BMP, empty.
TRICKY = [
    "",
    "def f(x):\n\tif x:\n        return  x  \r\n\n",
    "a <s> b </s> <pad> c",
    "  leading and trailing spaces  ",
    "naïve 😀 中文 \u200b \x00",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus")
    files = [shutil.copy(STDLIB / name, corpus / name) for name in CORPUS]
    return tk.train_bpe(files, 600)


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    return trained.save(tmp_path_factory.mktemp("saved"))


def test_train_bpe_gives_llama2_ids_and_learns_merges(trained):
    assert (trained.pad_id, trained.bos_id, trained.eos_id, trained.eos_ids) == (0, 1, 2, (2,))
    assert trained.vocab_size == 600
    line = "    def __init__(self, width=70):"
    assert len(trained.encode(line, add_bos=False)) < len(line) * 3 // 4


def test_train_bpe_is_deterministic(trained, saved, tmp_path):
    """Reruns must give the same ids, or checkpoints and tokenized data sets stop matching."""
    again = tk.train_bpe([shutil.copy(STDLIB / name, tmp_path / name) for name in CORPUS], 600)
    again_json = again.save(tmp_path / "again") / "tokenizer.json"
    assert again_json.read_bytes() == (saved / "tokenizer.json").read_bytes()


# Arbitrary text, mixed with the pieces that byte-level BPE and special-token handling could get wrong.
pieces = st.sampled_from(["<s>", "</s>", "<pad>", "    ", "\t", "\r\n", "😀"])
texts = st.lists(st.one_of(st.text(), pieces)).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=texts)
def test_decode_encode_round_trips_any_text(trained, text):
    assert trained.decode(trained.encode(text, add_bos=False)) == text
    assert trained.decode(trained.encode(text, add_bos=True, add_eos=True)) == text


def test_round_trips_python_source(trained):
    for name in (*CORPUS, UNSEEN):
        source = (STDLIB / name).read_text(encoding="utf-8")
        assert trained.decode(trained.encode(source)) == source, name


def test_bos_eos_handling(trained):
    body = trained.encode("x = 1", add_bos=False)
    assert trained.encode("x = 1") == [1, *body]
    assert trained.encode("x = 1", add_eos=True) == [1, *body, 2]
    assert trained.encode("x = 1", add_bos=False, add_eos=True) == [*body, 2]
    assert trained.decode([1, *body, 2], skip_special_tokens=False) == "<s>x = 1</s>"
    assert trained.decode(np.array([1, *body])) == "x = 1"


def test_special_token_strings_in_text_are_plain_text(trained):
    ids = trained.encode("<s></s><pad>", add_bos=False)
    assert not {0, 1, 2} & set(ids)


def test_encode_batch_matches_encode(trained):
    assert trained.encode_batch(TRICKY, add_eos=True) == [trained.encode(t, add_eos=True) for t in TRICKY]


def test_missing_bos_raises_instead_of_skipping(saved):
    bare = tk.Tokenizer(tokenizers.Tokenizer.from_file(str(saved / "tokenizer.json")), eos_ids=(2,))
    assert bare.encode("a", add_bos=False, add_eos=True)[-1] == 2
    with pytest.raises(tk.TokenizerError, match="no BOS"):
        bare.encode("a")


def test_save_load_round_trip(trained, saved):
    assert {p.name for p in saved.iterdir()} == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    for path in (saved, saved / "tokenizer.json"):
        loaded = tk.load(path)
        assert (loaded.bos_id, loaded.eos_ids, loaded.pad_id, loaded.vocab_size) == (1, (2,), 0, 600)
        for text in TRICKY:
            assert loaded.encode(text, add_eos=True) == trained.encode(text, add_eos=True)


def test_bare_tokenizer_json_uses_conventional_names(saved, tmp_path):
    shutil.copy(saved / "tokenizer.json", tmp_path / "tokenizer.json")
    loaded = tk.load(tmp_path / "tokenizer.json")
    assert (loaded.bos_id, loaded.eos_ids, loaded.pad_id) == (1, (2,), 0)


def test_tokenizer_config_with_added_token_dicts(saved, tmp_path):
    """Llama-2 checkpoints write special tokens as AddedToken dicts, and have no pad token."""
    shutil.copy(saved / "tokenizer.json", tmp_path / "tokenizer.json")
    added = lambda content: {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
                             "rstrip": False, "single_word": False, "special": True}
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": added("<s>"), "eos_token": added("</s>"), "pad_token": None}))
    loaded = tk.load(tmp_path)
    assert (loaded.bos_id, loaded.eos_ids, loaded.pad_id) == (1, (2,), None)


def assert_transformers_parity(ours: tk.Tokenizer, directory: Path, texts):
    transformers = pytest.importorskip("transformers", reason="parity with AutoTokenizer needs transformers")
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    assert hf.is_fast
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (ours.bos_id, ours.eos_id, ours.pad_id)
    assert hf(texts)["input_ids"] == ours.encode_batch(texts)
    for text in texts:
        ids = ours.encode(text)
        assert hf(text)["input_ids"] == ids
        assert hf.decode(ids, skip_special_tokens=True) == text


def test_saved_tokenizer_matches_transformers(trained, saved):
    source = (STDLIB / UNSEEN).read_text(encoding="utf-8")
    assert_transformers_parity(trained, saved, [*TRICKY, source])


def llama3_tokenizer_json() -> dict:
    """A tiny tokenizer.json in the layout of Llama-3's: byte-level BPE with ignore_merges, specials from 256,
    and a post-processor that is a Sequence of ByteLevel and a BOS template."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = [["h", "e"], ["l", "l"], ["he", "ll"]]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    added = [{"id": len(vocab) + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(specials)]
    bos = {"SpecialToken": {"id": specials[0], "type_id": 0}}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {specials[0]: {"id": specials[0], "ids": [added[0]["id"]], "tokens": [specials[0]]}}},
        ]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }


@pytest.fixture
def llama3_dir(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps(llama3_tokenizer_json()), encoding="utf-8")
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 259, "eos_token_id": [260, 261]}))
    return tmp_path


def test_llama3_special_tokens_from_config_json(llama3_dir, tmp_path_factory):
    tok = tk.load(llama3_dir)
    assert (tok.bos_id, tok.eos_id, tok.eos_ids, tok.pad_id) == (259, 260, (260, 261), None)
    assert [tok.id_to_token(i) for i in (259, *tok.eos_ids)] == ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    hello = tok.encode("hello", add_eos=True)
    assert [tok.id_to_token(i) for i in hello] == ["<|begin_of_text|>", "hell", "o", "<|end_of_text|>"]
    for text in TRICKY:
        assert tok.decode(tok.encode(text, add_eos=True)) == text
    assert_transformers_parity(tok, tok.save(tmp_path_factory.mktemp("llama3-saved")), TRICKY)


def test_llama3_instruct_eos_from_tokenizer_config_joins_config_json(llama3_dir):
    """Llama-3 instruct names <|eot_id|> only in tokenizer_config.json; generation must stop on it too."""
    (llama3_dir / "config.json").write_text(json.dumps({"bos_token_id": 259, "eos_token_id": 260}))
    (llama3_dir / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|eot_id|>", "special": True}}))
    assert tk.load(llama3_dir).eos_ids == (260, 261)


def assert_one_line_error(path, expected_in_message, *, call=tk.load):
    with pytest.raises(tk.TokenizerError) as info:
        call(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(path) in message and expected_in_message in message
    assert "\n" not in message


def test_directory_without_tokenizer_json(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert_one_line_error(tmp_path, "expected a tokenizer.json")


def test_missing_path(tmp_path):
    assert_one_line_error(tmp_path / "nope" / "tokenizer.json", "expected a tokenizer.json")


def test_unparsable_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json\n")
    assert_one_line_error(tmp_path / "tokenizer.json", "expected a tokenizer.json")


def test_unreadable_sidecar_json(saved, tmp_path):
    shutil.copy(saved / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text('{"bos_token": ')
    with pytest.raises(tk.TokenizerError, match="tokenizer_config.json: expected a JSON object") as info:
        tk.load(tmp_path)
    assert "\n" not in str(info.value)


def test_special_token_missing_from_vocabulary(saved, tmp_path):
    shutil.copy(saved / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>"}))
    assert_one_line_error(tmp_path, "not in the vocabulary")


def test_config_json_id_out_of_vocabulary(llama3_dir):
    (llama3_dir / "config.json").write_text(json.dumps({"bos_token_id": 259, "eos_token_id": [260, 128009]}))
    assert_one_line_error(llama3_dir / "config.json", "eos_ids 128009 is not in the vocabulary",
                          call=lambda _: tk.load(llama3_dir))


def test_train_bpe_rejects_missing_files_and_tiny_vocab(tmp_path):
    assert_one_line_error(tmp_path / "missing.py", "expected a text file", call=lambda p: tk.train_bpe([p], 600))
    (tmp_path / "a.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="too small"):
        tk.train_bpe([tmp_path / "a.py"], 100)


# --- BOS as the checkpoint's own tokenizer adds it ----------------------------------------------------------------

def test_adds_bos_follows_the_post_processor(trained, saved, llama3_dir):
    assert trained.adds_bos and tk.load(saved).adds_bos  # lsjax's own, Llama-2-like: BOS by default
    tok = tk.load(llama3_dir)  # Llama 3: a Sequence whose TemplateProcessing starts with <|begin_of_text|>
    assert tok.adds_bos and tok.encode("hello")[0] == 259


def smollm2_like(directory: Path, tokenizer_config: dict | None = None) -> Path:
    """Llama 3's tokenizer.json with SmolLM2's post-processor: ByteLevel only, so no BOS."""
    content = llama3_tokenizer_json()
    content["post_processor"] = content["post_processor"]["processors"][0]
    (directory / "tokenizer.json").write_text(json.dumps(content), encoding="utf-8")
    (directory / "config.json").write_text(json.dumps({"bos_token_id": 259, "eos_token_id": 260}))
    if tokenizer_config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return directory


def test_no_bos_when_the_tokenizer_adds_none(tmp_path, tmp_path_factory):
    tok = tk.load(smollm2_like(tmp_path))
    body = tok.encode("hello", add_bos=False)
    assert not tok.adds_bos and tok.encode("hello") == body and tok.encode_batch(["hello"]) == [body]
    assert tok.encode("hello", add_bos=True) == [259, *body]  # data preparation still asks for it explicitly
    from lsjax.decoder import encode_prompts
    assert encode_prompts(tok, ["hello"]).tokens[0, :len(body)].tolist() == body
    # saved and reloaded it still adds none, and transformers agrees
    saved_dir = tok.save(tmp_path_factory.mktemp("no-bos-saved"))
    assert not tk.load(saved_dir).adds_bos
    assert json.loads((saved_dir / "tokenizer_config.json").read_text())["add_bos_token"] is False
    assert_transformers_parity(tok, saved_dir, TRICKY)


def test_add_bos_token_decides_without_a_template(tmp_path):
    assert tk.load(smollm2_like(tmp_path, {"add_bos_token": True, "bos_token": "<|begin_of_text|>"})).adds_bos


def test_missing_bos_with_adds_bos_raises(saved):
    bare = tk.Tokenizer(tokenizers.Tokenizer.from_file(str(saved / "tokenizer.json")), eos_ids=(2,), adds_bos=True)
    with pytest.raises(tk.TokenizerError, match="adds_bos=True, but this tokenizer has no BOS"):
        bare.encode("a")


def test_chat_template_round_trips(trained, tmp_path):
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    tok = tk.Tokenizer(trained._tok, bos_id=1, eos_ids=(2,), pad_id=0, chat_template=template)
    saved_dir = tok.save(tmp_path / "chat")
    assert tk.load(saved_dir).chat_template == template
    transformers = pytest.importorskip("transformers", reason="parity with AutoTokenizer needs transformers")
    assert transformers.AutoTokenizer.from_pretrained(saved_dir).chat_template == template
    (saved_dir / "chat_template.jinja").write_text("{{ messages }}")  # transformers 5 writes it there
    assert tk.load(saved_dir).chat_template == "{{ messages }}"
