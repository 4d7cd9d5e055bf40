"""Tokenizers over the HF `tokenizers` library (the Rust core, without `transformers`).

Training and decoding only need token ids, and `tokenizers` loads in milliseconds, so lsjax
does not depend on `transformers` here. The files `Tokenizer.save` writes still load with
`transformers.AutoTokenizer` and give the same ids, so checkpoints stay usable in the HF
ecosystem.

Special tokens are never read from text: a literal "<s>" in Python source is plain text, and
`decode(encode(text, add_bos=False)) == text` holds for any string. BOS and EOS come only from
`encode(add_bos=..., add_eos=...)`; by default `encode` adds BOS exactly when the checkpoint's own
tokenizer does (`Tokenizer.adds_bos`: Llama 2 and 3 do, SmolLM2 does not), so prompts match what the
model was trained on.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from lsjax.errors import InputError

# The special tokens of `train_bpe`, in id order: Llama-2 numbering (bos=1, eos=2) with <pad>
# in Llama-2's unused id 0 (Llama-2 has <unk> there; byte-level BPE never needs one).
PAD, BOS, EOS = "<pad>", "<s>", "</s>"

# Names to try when a bare tokenizer.json comes without any config file (Llama-2, Llama-3).
_CONVENTIONAL = {
    "bos": ("<s>", "<|begin_of_text|>"),
    "eos": ("</s>", "<|end_of_text|>"),
    "pad": ("<pad>",),
}


class TokenizerError(InputError):
    """A tokenizer file is missing, unreadable or inconsistent, or a needed special token is absent.

    The message is one line that names the file, so it reads well in logs and CLI errors.
    """


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the ids of its BOS, EOS and PAD tokens.

    `eos_ids` holds every id that ends a sequence (Llama-3 instruct models stop on both
    <|end_of_text|> and <|eot_id|>); `eos_id`, the first, is the one `encode` appends. `adds_bos`
    says whether the checkpoint's tokenizer starts every text with BOS, which `encode` then does by
    default. `chat_template` is the checkpoint's Jinja chat template, kept for export (lsjax does not
    render it).
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        bos_id: int | None = None,
        eos_ids: Sequence[int] = (),
        pad_id: int | None = None,
        adds_bos: bool = True,
        chat_template: str | None = None,
    ):
        # Set on the given object: the flag is not serialized, so it cannot come from a file.
        tokenizer.encode_special_tokens = True
        self._tok = tokenizer
        for name, token_id in (("bos_id", bos_id), ("pad_id", pad_id), *(("eos_ids", i) for i in eos_ids)):
            if token_id is not None and tokenizer.id_to_token(token_id) is None:
                raise TokenizerError(f"{name} {token_id} is not in the vocabulary (size {self.vocab_size})")
        self.bos_id = bos_id
        self.eos_ids = tuple(eos_ids)
        self.eos_id = self.eos_ids[0] if self.eos_ids else None
        self.pad_id = pad_id
        self.adds_bos = adds_bos
        self.chat_template = chat_template

    @property
    def vocab_size(self) -> int:
        """Number of ids, added special tokens included (the embedding table's row count)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool | None = None, add_eos: bool = False) -> list[int]:
        """Token ids of `text`; add_bos=None adds BOS as the checkpoint's tokenizer does (`adds_bos`)."""
        return self._add_specials(self._tok.encode(text, add_special_tokens=False).ids, add_bos, add_eos)

    def encode_batch(self, texts: Iterable[str], add_bos: bool | None = None,
                     add_eos: bool = False) -> list[list[int]]:
        """Like `encode` on each text; the Rust side encodes the batch in parallel."""
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [self._add_specials(e.ids, add_bos, add_eos) for e in encodings]

    def _add_specials(self, ids: list[int], add_bos: bool | None, add_eos: bool) -> list[int]:
        # Raise rather than skip: a silently missing BOS/EOS changes what the model sees.
        if self.adds_bos if add_bos is None else add_bos:
            if self.bos_id is None:
                asked = "adds_bos=True" if add_bos is None else "add_bos=True"
                raise TokenizerError(f"{asked}, but this tokenizer has no BOS token")
            ids = [self.bos_id, *ids]
        if add_eos:
            if self.eos_id is None:
                raise TokenizerError("add_eos=True, but this tokenizer has no EOS token")
            ids = [*ids, self.eos_id]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Decode ids; accepts NumPy/JAX integer arrays as well as lists."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int | None) -> str | None:
        return None if token_id is None else self._tok.id_to_token(token_id)

    def save(self, directory: str | PathLike) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json.

        `transformers.AutoTokenizer.from_pretrained(directory)` then gives the ids of
        `encode(text)`: the saved post-processor prepends BOS exactly when `adds_bos` is set, as
        `encode` does (transformers takes BOS/EOS insertion from tokenizer.json; `add_bos_token` in
        tokenizer_config.json says the same for readers that look there), and `split_special_tokens`
        keeps special-token strings in text plain, as here. Only `eos_id` is recorded; further
        `eos_ids` belong in the model's config.json, which `load` reads.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Save a copy, so the post-processor (unused by `encode`) is only changed on disk.
        tok = tokenizers.Tokenizer.from_str(self._tok.to_str())
        bos = self.id_to_token(self.bos_id)
        adds_bos = self.adds_bos and bos is not None
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, self.bos_id)],
        ) if adds_bos else None
        tok.save(str(directory / "tokenizer.json"))
        special = {
            f"{role}_token": self.id_to_token(token_id)
            for role, token_id in (("bos", self.bos_id), ("eos", self.eos_id), ("pad", self.pad_id))
            if token_id is not None
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special,
            "add_bos_token": adds_bos,
            "split_special_tokens": True,
            # HF's default cleanup rewrites " ." to "." etc., which breaks exact decoding.
            "clean_up_tokenization_spaces": False,
        }
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
            (directory / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return directory


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: expected a JSON object, could not read it ({_one_line(e)})") from e
    if not isinstance(content, dict):
        raise TokenizerError(f"{path}: expected a JSON object, found {type(content).__name__}")
    return content


def _token_string(value) -> str | None:
    """A special token as tokenizer configs write it: "<s>" or {"content": "<s>", ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _template_adds_bos(processor, bos_id: int | None) -> bool | None:
    """Whether a tokenizer.json post-processor puts BOS before the text; None when it has no template."""
    if processor is None:
        return None
    state = json.loads(processor.__getstate__())
    templates = [state] if state.get("type") != "Sequence" else state.get("processors", [])
    for template in (t for t in templates if t.get("type") == "TemplateProcessing"):
        leading = itertools.takewhile(lambda piece: "SpecialToken" in piece, template.get("single", []))
        ids = [i for piece in leading for i in template["special_tokens"][piece["SpecialToken"]["id"]]["ids"]]
        return bos_id is not None and bos_id in ids
    return None


def _chat_template(directory: Path, tokenizer_config: dict) -> str | None:
    """The chat template of chat_template.jinja (transformers 5) or tokenizer_config.json (older)."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    return template if isinstance(template, str) else None


def load(path: str | PathLike) -> Tokenizer:
    """Load a tokenizer from a directory holding tokenizer.json, or from a tokenizer.json file.

    Whether `encode` adds BOS by default (`adds_bos`) follows tokenizer.json's post-processor, as in
    transformers: a template that starts with the BOS token adds it; without a template,
    tokenizer_config.json's `add_bos_token` decides, and else no BOS is added.
    Which tokens are BOS/EOS/PAD comes from the files beside tokenizer.json, first found wins:
    ids in config.json (`bos_token_id`, `eos_token_id` (an int or a list), `pad_token_id`), then
    token strings in tokenizer_config.json, then in special_tokens_map.json. The EOS token of
    the tokenizer configs is added to config.json's EOS ids: Llama-3 instruct checkpoints name
    <|eot_id|> only there, and generation must stop on it. A bare tokenizer.json falls back to
    the Llama-2/Llama-3 token names.
    """
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise TokenizerError(f"{path}: expected a tokenizer.json file or a directory containing one")
    try:
        tok = tokenizers.Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises plain Exception for I/O and format errors alike
        raise TokenizerError(f"{file}: expected a tokenizer.json of the HF tokenizers library ({_one_line(e)})") from e

    names = ("config.json", "tokenizer_config.json", "special_tokens_map.json")
    sidecars = {name: _read_json(file.parent / name) for name in names}
    model_config = sidecars["config.json"] or {}
    token_configs = [(file.parent / name, sidecars[name]) for name in names[1:] if sidecars[name] is not None]

    def token_id(role: str) -> int | None:
        """The id a tokenizer config names for `role`, or by convention for a bare tokenizer.json."""
        for config_path, config in token_configs:
            if (token := _token_string(config.get(f"{role}_token"))) is not None:
                if (found := tok.token_to_id(token)) is None:
                    raise TokenizerError(f"{config_path}: {role}_token {token!r} is not in the vocabulary of {file}")
                return found
        if any(content is not None for content in sidecars.values()):
            return None
        return next((i for name in _CONVENTIONAL[role] if (i := tok.token_to_id(name)) is not None), None)

    def model_ids(role: str) -> list[int]:
        value = model_config.get(f"{role}_token_id")
        return [] if value is None else list(value) if isinstance(value, list) else [value]

    bos_ids, eos_ids, pad_ids = model_ids("bos"), model_ids("eos"), model_ids("pad")
    config_eos = token_id("eos")
    if config_eos is not None and config_eos not in eos_ids:
        eos_ids.append(config_eos)
    bos_id = bos_ids[0] if bos_ids else token_id("bos")
    pad_id = pad_ids[0] if pad_ids else token_id("pad")
    tokenizer_config = sidecars["tokenizer_config.json"] or {}
    adds_bos = _template_adds_bos(tok.post_processor, bos_id)
    if adds_bos is None:
        adds_bos = bool(tokenizer_config.get("add_bos_token", False))
    try:
        return Tokenizer(tok, bos_id=bos_id, eos_ids=eos_ids, pad_id=pad_id, adds_bos=adds_bos and bos_id is not None,
                         chat_template=_chat_template(file.parent, tokenizer_config))
    except TokenizerError as e:  # only config.json's ids can be out of the vocabulary
        raise TokenizerError(f"{file.parent / 'config.json'}: {e} of {file}") from e


def train_bpe(
    files: Iterable[str | PathLike],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on text files, with ids <pad>=0, <s>=1 (BOS), </s>=2 (EOS).

    Like Llama 2's, it adds BOS by default (`adds_bos`).

    Byte-level BPE has all 256 bytes in its alphabet, so every string, including indentation
    and rare Unicode in source code, encodes without an unknown token and decodes back exactly.
    No prefix space is added, which would change the text.
    """
    files = [str(f) for f in files]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise TokenizerError(f"{missing[0]}: expected a text file to train on ({len(missing)} of {len(files)} missing)")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = [PAD, BOS, EOS]
    if vocab_size < len(alphabet) + len(specials):
        raise TokenizerError(f"vocab_size {vocab_size} is too small: the 256 bytes and {len(specials)} special tokens need"
                         f" {len(alphabet) + len(specials)}")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=show_progress,
        special_tokens=specials,
        initial_alphabet=alphabet,
    )
    tok.train(files, trainer)
    return Tokenizer(tok, bos_id=tok.token_to_id(BOS), eos_ids=(tok.token_to_id(EOS),), pad_id=tok.token_to_id(PAD),
                     adds_bos=True)
