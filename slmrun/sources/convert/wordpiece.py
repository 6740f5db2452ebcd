"""A BERT WordPiece vocabulary as llama.cpp's converter writes it, without transformers.

llama.cpp's ``convert_hf_to_gguf.py`` (``TextModel.get_vocab_base`` and ``BertModel.set_vocab``)
asks transformers' AutoTokenizer for the vocabulary; the same facts are in the files:

* the tokens by id: ``tokenizer.json``'s ``model.vocab`` (what AutoTokenizer's fast tokenizer
  reads), else ``vocab.txt``; ids up to config.json's ``vocab_size`` that no token has become
  ``[PAD{id}]`` (UNUSED), as there;
* the added tokens: ``tokenizer.json``'s ``added_tokens`` (a vocab.txt-only tokenizer has its
  special tokens as added tokens: ``[UNK] [SEP] [PAD] [CLS] [MASK]``, or the names
  tokenizer_config.json gives): special ones, and ones that look special (``<|...|>``), are
  CONTROL, other added tokens USER_DEFINED, the rest NORMAL;
* llama.cpp's phantom-space convention: its WordPiece tokenizer puts U+2581 before each word,
  so every token but CONTROL ones is written as ``▁word``, and a continuation ``##ing`` as ``ing``;
* the special token ids and whether to add [CLS]/[SEP]: gguf's own ``SpecialVocab`` reads them
  from tokenizer.json, tokenizer_config.json and config.json, as the converter does;
* the normalizer (lower-casing, accent stripping), which newer llama.cpp converters write from
  tokenizer.json's BertNormalizer and llama.cpp's WordPiece tokenizer honours.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ...errors import InvalidModelFileError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED = 1, 2, 3, 4, 5  # gguf.TokenType
PHANTOM = "\u2581"
# BertTokenizer's special tokens when tokenizer_config.json names none.
BERT_SPECIALS = {"unk": "[UNK]", "sep": "[SEP]", "pad": "[PAD]", "cls": "[CLS]", "mask": "[MASK]"}
MAX_TOKEN_BYTES = 1024


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]
    special_ids: dict[str, int] = field(default_factory=dict)  # filled in where SpecialVocab found none
    lowercase: bool | None = None
    strip_accents: bool | None = None


def _looks_special(text: str) -> bool:
    """TextModel.does_token_look_special, for added tokens."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>")) or (text.startswith("<unused") and text.endswith(">")))


def _base_vocab(tokenizer_json: dict | None, vocab_txt: list[str] | None, where) -> dict[str, int]:
    """token -> id, as AutoTokenizer's ``vocab`` has it."""
    model = (tokenizer_json or {}).get("model")
    if isinstance(model, dict) and model.get("type") not in (None, "WordPiece"):
        raise InvalidModelFileError(f"{where}/tokenizer.json: a {model.get('type')} tokenizer, not WordPiece; "
                                    "a BERT conversion needs a WordPiece vocabulary")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(vocab, dict) and vocab:
        if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                   for k, v in vocab.items()):
            raise InvalidModelFileError(f"{where}/tokenizer.json: model.vocab must map tokens to ids >= 0")
        return dict(vocab)
    if vocab_txt is None:
        raise InvalidModelFileError(f"{where}/tokenizer.json has no WordPiece vocabulary and there is no vocab.txt")
    out: dict[str, int] = {}
    for i, token in enumerate(vocab_txt):
        out[token] = i  # transformers' load_vocab: a repeated token keeps its last id
    return out


def _added_tokens(tokenizer_json: dict | None, tokenizer_config: dict, vocab: dict[str, int]) -> dict[int, dict]:
    """id -> {"content", "special"}: tokenizer.json's added tokens, or a slow BertTokenizer's."""
    if tokenizer_json is not None:
        out = {}
        for t in tokenizer_json.get("added_tokens") or []:
            if isinstance(t, dict) and isinstance(t.get("id"), int) and isinstance(t.get("content"), str):
                out[t["id"]] = {"content": t["content"], "special": bool(t.get("special"))}
        return out
    out = {}
    for typ, default in BERT_SPECIALS.items():
        text = tokenizer_config.get(f"{typ}_token", default)
        if isinstance(text, dict):
            text = text.get("content")
        if isinstance(text, str) and text in vocab:
            out[vocab[text]] = {"content": text, "special": True}
    return out


def _normalizer(tokenizer_json: dict | None, tokenizer_config: dict) -> tuple[bool | None, bool | None]:
    """(lowercase, strip_accents) as gguf-py's SpecialVocab._parse_normalizer reads them from
    tokenizer.json; from tokenizer_config.json (BertTokenizer's do_lower_case, default true) without one."""
    if tokenizer_json is not None:
        flags: dict[str, bool | None] = {"lowercase": None, "strip_accents": None}

        def parse(norm):
            if not isinstance(norm, dict):
                return
            kind = norm.get("type")
            if kind == "Lowercase":
                flags["lowercase"] = True
            elif kind == "StripAccents":
                flags["strip_accents"] = True
            elif kind == "BertNormalizer":
                for key in ("lowercase", "strip_accents"):
                    if key in norm:
                        flags[key] = norm[key]
            elif kind == "Sequence":
                for n in norm.get("normalizers") or []:
                    parse(n)

        parse(tokenizer_json.get("normalizer"))
        return flags["lowercase"], flags["strip_accents"]
    lower = tokenizer_config.get("do_lower_case", True)
    strip = tokenizer_config.get("strip_accents")
    return bool(lower), (strip if isinstance(strip, bool) else None)


def read_vocab(d) -> Vocab:
    """The GGUF vocabulary of a BERT model directory (hf_dir.HFModelDir)."""
    vocab = _base_vocab(d.tokenizer_json, d.vocab_txt, d.path)
    added = _added_tokens(d.tokenizer_json, d.tokenizer_config, vocab)
    for i, t in added.items():
        vocab.setdefault(t["content"], i)
    n_vocab = d.config["vocab_size"]
    if max(vocab.values()) >= n_vocab:
        raise InvalidModelFileError(f"{d.path}: the tokenizer has token id {max(vocab.values())} but config.json's "
                                    f"vocab_size is {n_vocab}")
    by_id = {i: text for text, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        if len(text.encode("utf-8")) > MAX_TOKEN_BYTES:
            raise InvalidModelFileError(f"{d.path}: token {i} is {len(text.encode('utf-8'))} bytes long")
        if i in added and added[i]["content"] == text:
            kind = CONTROL if added[i]["special"] or _looks_special(text) else USER_DEFINED
            if kind == USER_DEFINED:
                text = text.replace(PHANTOM, " ")  # get_vocab_base pre-normalizes user-defined spaces
        else:
            kind = NORMAL
        tokens.append(text)
        types.append(kind)
    # BertModel.set_vocab: llama.cpp's WordPiece tokenizer matches "▁word" at a word's start.
    tokens = [t if k == CONTROL else t[2:] if t.startswith("##") else PHANTOM + t for t, k in zip(tokens, types)]
    # llama.cpp aborts the process on a vocabulary with one text twice (llama-vocab.cpp asserts
    # id_to_token.size() == token_to_id.size()): refuse it here instead.
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if seen.setdefault(t, i) != i:
            raise InvalidModelFileError(
                f"{d.path}: tokens {seen[t]} and {i} both become {t!r} in llama.cpp's vocabulary "
                "(a continuation '##x' is written 'x', a word 'x' as '\u2581x')",
                hint="The vocabulary has a token twice; llama.cpp cannot load such a GGUF. Fix vocab.txt/tokenizer.json.")
    lowercase, strip_accents = _normalizer(d.tokenizer_json, d.tokenizer_config)
    v = Vocab(tokens=tokens, types=types, lowercase=lowercase, strip_accents=strip_accents)
    if d.tokenizer_json is None:
        # Without tokenizer.json, SpecialVocab finds no token ids (it matches names against
        # tokenizer.json's added tokens) and llama.cpp falls back to bert-base's ids (101,
        # 102, ...), which are wrong for any other vocabulary: name them from the vocabulary.
        for typ, default in BERT_SPECIALS.items():
            text = _config_name(d.tokenizer_config, typ, default)
            if isinstance(text, str) and text in vocab:
                v.special_ids[typ] = vocab[text]
        if "cls" in v.special_ids:
            v.special_ids.setdefault("bos", v.special_ids["cls"])
    return v


def _config_name(tokenizer_config: dict, typ: str, default: str) -> str | None:
    text = tokenizer_config.get(f"{typ}_token", default)
    return text.get("content") if isinstance(text, dict) else text


def write_vocab(writer, d, v: Vocab) -> None:
    """BertModel.set_vocab's keys, in its order, then the normalizer's."""
    import gguf

    writer.add_token_type_count(d.config.get("type_vocab_size", 1))
    writer.add_tokenizer_model("bert")
    # llama.cpp's converter names the pre-tokenizer by hashing transformers' tokenization of a
    # check text ("bert-bge" for bert-base's uncased vocabulary); for a WordPiece vocabulary
    # llama.cpp ignores the name (llama-vocab.cpp: pre_type DEFAULT), so "default" says
    # exactly what it does, without transformers.
    writer.add_tokenizer_pre("default")
    writer.add_token_list(v.tokens)
    writer.add_token_types(v.types)
    # SpecialVocab logs a warning for the cls id it finds and GGUFWriter has no key for (llama.cpp's
    # converter prints the same); the library prints nothing, so gguf's logger is quiet meanwhile.
    log = logging.getLogger("gguf")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        special = gguf.SpecialVocab(d.path, n_vocab=len(v.tokens))
        for typ, i in v.special_ids.items():
            special.special_token_ids.setdefault(typ, i)
        special.add_to_gguf(writer, quiet=True)
    finally:
        log.setLevel(level)
    # gguf >= 0.19 on PyPI predates SpecialVocab's normalizer keys; newer ones write them.
    if getattr(special, "normalizer_lowercase", None) is None and v.lowercase is not None:
        writer.add_bool("tokenizer.ggml.normalizer.lowercase", bool(v.lowercase))
    if getattr(special, "normalizer_strip_accents", None) is None and v.strip_accents is not None:
        writer.add_bool("tokenizer.ggml.normalizer.strip_accents", bool(v.strip_accents))
