"""Tiny GGUF models with random weights that the real llama.cpp loads in milliseconds.

A SentencePiece-style vocabulary (control tokens, 256 byte tokens, a few words) so
any text tokenizes; architectures `llama` and `phi2`; optional chat template; the
special tokens of one chat family (``vocab_style``: chatml, gemma, llama3, mistral,
zephyr, phi3), as a model without a template would still carry them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# The turn markers each family's vocabulary has (CONTROL tokens, as convert_hf_to_gguf
# writes them; zephyr's are USER_DEFINED, the other kind llama.cpp treats as special).
VOCAB_STYLES = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "llama3": ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "mistral": ("[INST]", "[/INST]"),
    "zephyr": ("<|system|>", "<|user|>", "<|assistant|>"),
    "phi3": ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    "plain": (),
}
USER_DEFINED_STYLES = {"zephyr"}

WORDS = ["▁the", "▁a", "▁is", "▁of", "▁and", "▁to", "▁in", "▁what", "▁2", "+", "?", "▁4", "▁hello", "▁world"]


def vocab(extra_specials: tuple[str, ...] = (), special_type: int = 3,
          extra: tuple[tuple[str, int], ...] = ()) -> tuple[list[str], list[float], list[int]]:
    """``extra``: (text, token type) pairs appended after the words, to make a long
    vocabulary with special tokens far from its start."""
    tokens = ["<unk>", "<s>", "</s>", *extra_specials]
    types = [2, 3, 3] + [special_type] * len(extra_specials)
    tokens += [f"<0x{i:02X}>" for i in range(256)]
    types += [6] * 256
    tokens += WORDS
    types += [1] * len(WORDS)
    scores = [0.0] * len(tokens)
    for i in range(len(tokens) - len(WORDS), len(tokens)):
        scores[i] = -float(i)
    tokens += [t for t, _ in extra]
    types += [k for _, k in extra]
    scores += [-1e4] * len(extra)
    return tokens, scores, types


def write_tiny_gguf(path: Path, *, arch: str = "llama", n_embd: int = 64, n_layer: int = 2, n_head: int = 4,
                    n_head_kv: int = 2, n_ff: int = 128, n_ctx: int = 512, chat_template: str | None = CHATML,
                    seed: int = 0, name: str = "tiny", vocab_style: str | None = None,
                    extra_tokens: tuple[tuple[str, int], ...] = (), mixing: float = 0.2) -> Path:
    """``vocab_style`` None: ChatML's tokens when there is a template, none without. ``mixing``:
    the scale of the attention and feed-forward outputs added to the residual stream; near 0
    the next token depends mostly on the current one (a bigram model), so greedy output soon
    cycles and repeats itself: what prompt-lookup drafts need (tests/test_speculative.py)."""
    import gguf

    rng = np.random.default_rng(seed)
    if vocab_style is None:
        vocab_style = "chatml" if chat_template else "plain"
    specials = VOCAB_STYLES[vocab_style]
    tokens, scores, types = vocab(specials, 4 if vocab_style in USER_DEFINED_STYLES else 3, extra_tokens)
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_file_type(0)  # all F32
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    if chat_template:
        w.add_chat_template(chat_template)

    def t(name: str, *shape: int, scale: float = 0.2):
        # numpy shape is ggml's ne reversed
        w.add_tensor(name, (rng.standard_normal(shape[::-1]) * scale).astype(np.float32))

    def ones(name: str, n: int):
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    def output(name: str):
        # Zero rows for control tokens: their logit stays 0 while ~280 random rows
        # compete, so greedy decoding keeps producing text instead of ending at once.
        weight = (rng.standard_normal((n_vocab, n_embd)) * 0.2).astype(np.float32)
        weight[:3 + len(specials)] = 0.0
        w.add_tensor(name, weight)

    head_dim = n_embd // n_head
    t("token_embd.weight", n_embd, n_vocab)
    if arch == "llama":
        w.add_head_count_kv(n_head_kv)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_dimension_count(head_dim)
        w.add_vocab_size(n_vocab)
        ones("output_norm.weight", n_embd)
        output("output.weight")
        for i in range(n_layer):
            ones(f"blk.{i}.attn_norm.weight", n_embd)
            t(f"blk.{i}.attn_q.weight", n_embd, n_embd)
            t(f"blk.{i}.attn_k.weight", n_embd, head_dim * n_head_kv)
            t(f"blk.{i}.attn_v.weight", n_embd, head_dim * n_head_kv)
            t(f"blk.{i}.attn_output.weight", n_embd, n_embd, scale=mixing)
            ones(f"blk.{i}.ffn_norm.weight", n_embd)
            t(f"blk.{i}.ffn_gate.weight", n_embd, n_ff)
            t(f"blk.{i}.ffn_up.weight", n_embd, n_ff)
            t(f"blk.{i}.ffn_down.weight", n_ff, n_embd, scale=mixing)
    elif arch == "phi2":
        w.add_head_count_kv(n_head)
        w.add_layer_norm_eps(1e-5)
        w.add_rope_dimension_count(head_dim // 2)  # phi-2 rotates part of each head
        ones("output_norm.weight", n_embd)
        t("output_norm.bias", n_embd, scale=0.0)
        output("output.weight")
        t("output.bias", n_vocab, scale=0.0)
        for i in range(n_layer):
            ones(f"blk.{i}.attn_norm.weight", n_embd)
            t(f"blk.{i}.attn_norm.bias", n_embd, scale=0.0)
            t(f"blk.{i}.attn_qkv.weight", n_embd, 3 * n_embd)
            t(f"blk.{i}.attn_qkv.bias", 3 * n_embd, scale=0.0)
            t(f"blk.{i}.attn_output.weight", n_embd, n_embd)
            t(f"blk.{i}.attn_output.bias", n_embd, scale=0.0)
            t(f"blk.{i}.ffn_up.weight", n_embd, n_ff)
            t(f"blk.{i}.ffn_up.bias", n_ff, scale=0.0)
            t(f"blk.{i}.ffn_down.weight", n_ff, n_embd)
            t(f"blk.{i}.ffn_down.bias", n_embd, scale=0.0)
    else:
        raise ValueError(arch)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- an encoder (BERT family): embeddings, no generation --------------------------------------

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_WORDS = ["the", "a", "is", "of", "and", "to", "in", "what", "shop", "bike", "open", "hours",
              "opening", "are", "your", "when", "do", "you", "close", "price", "repair", "wheel"]


def bert_vocab() -> tuple[list[str], list[int]]:
    """A WordPiece vocabulary in llama.cpp's spelling (convert_hf_to_gguf's BertModel: a word
    that starts a word gets the phantom space, a '##' continuation loses its '##')."""
    tokens = list(BERT_SPECIALS)
    types = [3] * len(BERT_SPECIALS)
    pieces = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + list(".,?!'-:;()")
    for p in pieces + BERT_WORDS:
        tokens.append("\u2581" + p)
        types.append(1)
    for p in [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + ["s", "ing", "ed"]:
        if p not in ("s",) or "s" not in tokens[-40:]:
            tokens.append(p)  # "##p": a continuation piece
            types.append(1)
    # dedupe, keeping the first (continuation pieces may repeat)
    seen, out_t, out_k = set(), [], []
    for tok, kind in zip(tokens, types):
        if tok not in seen:
            seen.add(tok)
            out_t.append(tok)
            out_k.append(kind)
    return out_t, out_k


def write_tiny_bert(path: Path, *, n_embd: int = 32, n_layer: int = 2, n_head: int = 4, n_ff: int = 64,
                    n_ctx: int = 64, pooling: int = 1, seed: int = 0, name: str = "tiny-bert") -> Path:
    """A BERT encoder with random weights, as llama.cpp's converter would write it: pooling
    1 = mean, 2 = CLS; non-causal attention; [CLS] ... [SEP] added by the tokenizer."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens, types = bert_vocab()
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_name(name)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType(pooling))
    w.add_file_type(0)
    w.add_token_type_count(2)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_unk_token_id(1)
    w.add_bos_token_id(2)  # [CLS]
    w.add_sep_token_id(3)
    w.add_pad_token_id(0)
    w.add_mask_token_id(4)

    def t(name: str, *shape: int, scale: float = 0.2):
        w.add_tensor(name, (rng.standard_normal(shape[::-1]) * scale).astype(np.float32))

    def norm(name: str, n: int):
        w.add_tensor(name + ".weight", np.ones(n, dtype=np.float32))
        w.add_tensor(name + ".bias", np.zeros(n, dtype=np.float32))

    t("token_embd.weight", n_embd, n_vocab)
    t("token_types.weight", n_embd, 2)
    t("position_embd.weight", n_embd, n_ctx)
    norm("token_embd_norm", n_embd)
    for i in range(n_layer):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            t(f"blk.{i}.{part}.weight", n_embd, n_embd)
            t(f"blk.{i}.{part}.bias", n_embd, scale=0.02)
        norm(f"blk.{i}.attn_output_norm", n_embd)
        t(f"blk.{i}.ffn_up.weight", n_embd, n_ff)
        t(f"blk.{i}.ffn_up.bias", n_ff, scale=0.02)
        t(f"blk.{i}.ffn_down.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_down.bias", n_embd, scale=0.02)
        norm(f"blk.{i}.layer_output_norm", n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- BERT as Hugging Face ships it: a model directory for the converter (sources/convert/) ---

HF_BERT_SPECIALS = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HF_BERT_WORDS = ("the a an is are was what which who how why when where your my our their this that it of to in on "
              "for with and or not no yes do does can will open opening hours hour store shop price prices "
              "small model models device devices text texts search question questions answer answers hello "
              "world word words embed sentence sentences vector vectors classify label labels news sport "
              "money music weather rain sun cold hot day days week today tomorrow order orders refund "
              "delivery help please thanks thank you free win prize click call now").split()
HF_BERT_SUFFIXES = ["##s", "##ing", "##ed", "##ding", "##er", "##ly", "##es"]


def hf_bert_vocab() -> list[str]:
    """A WordPiece vocabulary of a few hundred tokens in bert-base's layout: specials first,
    then single characters, continuation pieces, whole words. Any ASCII text tokenizes."""
    chars = [c for c in map(chr, range(33, 127)) if not c.isupper()]
    tokens = (HF_BERT_SPECIALS + chars + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
              + HF_BERT_SUFFIXES + HF_BERT_WORDS)
    return list(dict.fromkeys(tokens))  # "a" is a character and a word: once


def bert_tensors(*, n_vocab: int, n_embd: int, n_layer: int, n_ff: int, n_pos: int, n_types: int = 2,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights with Hugging Face BertModel's names and (PyTorch) shapes."""
    rng = np.random.default_rng(seed)

    def rand(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"embeddings.word_embeddings.weight": rand(n_vocab, n_embd),
         "embeddings.position_embeddings.weight": rand(n_pos, n_embd),
         "embeddings.token_type_embeddings.weight": rand(n_types, n_embd),
         "embeddings.LayerNorm.weight": 1 + rand(n_embd, scale=0.05), "embeddings.LayerNorm.bias": rand(n_embd)}
    for i in range(n_layer):
        p = f"encoder.layer.{i}."
        for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            t[p + part + ".weight"] = rand(n_embd, n_embd)
            t[p + part + ".bias"] = rand(n_embd)
        t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = rand(n_ff, n_embd), rand(n_ff)
        t[p + "output.dense.weight"], t[p + "output.dense.bias"] = rand(n_embd, n_ff), rand(n_embd)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + norm + ".weight"], t[p + norm + ".bias"] = 1 + rand(n_embd, scale=0.05), rand(n_embd)
    t["pooler.dense.weight"], t["pooler.dense.bias"] = rand(n_embd, n_embd), rand(n_embd)
    t["embeddings.position_ids"] = np.arange(n_pos, dtype=np.int64)[None, :]
    return t


_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}


def write_safetensors(path: Path, tensors: dict, *, header: dict | None = None, tail: bytes = b"") -> Path:
    """A safetensors file written by hand, so tests can also write one whose header lies:
    ``tensors`` maps a name to an array, or to (dtype, shape, raw bytes); ``header`` replaces
    entries of the computed header (and may add new ones); ``tail`` is appended after the data."""
    import json
    import struct

    entries, blobs, at = {}, [], 0
    for name, value in tensors.items():
        if isinstance(value, np.ndarray):
            dtype, shape, raw = _ST_DTYPES[value.dtype], list(value.shape), np.ascontiguousarray(value).tobytes()
        else:
            dtype, shape, raw = value
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [at, at + len(raw)]}
        blobs.append(raw)
        at += len(raw)
    entries.update(header or {})
    text = json.dumps({"__metadata__": {"format": "pt"}, **entries}).encode()
    text += b" " * (-len(text) % 8)  # the reference writer pads the header to 8 bytes
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs) + tail)
    return path


def bf16(a: np.ndarray) -> bytes:
    """float32 -> bfloat16 bytes (truncation; exact for values with 8 significant bits)."""
    return (np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()


def write_tiny_hf_bert(directory: Path, *, n_embd: int = 32, n_layer: int = 2, n_head: int = 2, n_ff: int = 64,
                       n_pos: int = 64, max_seq_length: int | None = None, pooling: str | None = "mean",
                       tokenizer_json: bool = False, lowercase: bool = True, dtype: str = "F32",
                       architecture: str = "BertModel", extra_vocab: int = 0, seed: int = 0,
                       config: dict | None = None) -> Path:
    """A Hugging Face BERT model directory with random weights: config.json, vocab.txt,
    model.safetensors, tokenizer_config.json, and as asked 1_Pooling/config.json (+ modules.json
    with tokenizer.json), sentence_bert_config.json and tokenizer.json. ``extra_vocab``: ids past
    vocab.txt's last token that config.json's vocab_size still counts (as some models pad it)."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    vocab = hf_bert_vocab()
    n_vocab = len(vocab) + extra_vocab
    cfg = {"architectures": [architecture], "model_type": "bert", "hidden_size": n_embd,
           "num_hidden_layers": n_layer, "num_attention_heads": n_head, "intermediate_size": n_ff,
           "max_position_embeddings": n_pos, "vocab_size": n_vocab, "type_vocab_size": 2, "hidden_act": "gelu",
           "layer_norm_eps": 1e-12, "pad_token_id": 0, "position_embedding_type": "absolute",
           "_name_or_path": "tests/tiny-bert"}
    cfg.update(config or {})
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": lowercase, "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
         "cls_token": "[CLS]", "mask_token": "[MASK]", "tokenizer_class": "BertTokenizer"}))
    tensors = bert_tensors(n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_pos=n_pos, seed=seed)
    if dtype == "F16":
        tensors = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()}
    elif dtype == "BF16":
        tensors = {k: ("BF16", v.shape, bf16(v)) if v.dtype == np.float32 else v for k, v in tensors.items()}
    write_safetensors(directory / "model.safetensors", tensors)
    if pooling is not None:
        (directory / "1_Pooling").mkdir(exist_ok=True)
        (directory / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": n_embd, "pooling_mode_cls_token": pooling == "cls",
             "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max"}))
    if max_seq_length is not None:
        (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    if tokenizer_json:
        ids = {t: i for i, t in enumerate(vocab)}
        specials = [{"id": ids[t], "content": t, "special": True, "normalized": False, "single_word": False,
                     "lstrip": False, "rstrip": False} for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")]
        cls, sep = {"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}
        (directory / "tokenizer.json").write_text(json.dumps({
            "version": "1.0", "added_tokens": specials,
            "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                           "strip_accents": None, "lowercase": lowercase},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "TemplateProcessing", "single": [cls, {"Sequence": {"id": "A", "type_id": 0}}, sep],
                               "pair": [cls, {"Sequence": {"id": "A", "type_id": 0}}, sep,
                                        {"Sequence": {"id": "B", "type_id": 1}}, sep]},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": ids}}))
        if pooling is not None:
            (directory / "modules.json").write_text(json.dumps(
                [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                 {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    return directory


# The models llama-perplexity's figures were recorded on (benchmarks/record_perplexity.py,
# tests/test_evaluate_recorded.py): 256 wide, so that the K-quants apply.
RECORDED_TINY = dict(arch="llama", n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_layer=2, n_ctx=512)


def recorded_tiny_files(folder: Path) -> dict[str, Path]:
    """The F32 reference (seed 0), another F32 model of the same vocabulary (seed 1), and the
    reference quantized to Q4_K_M by llama.cpp's quantizer: the same bytes every time."""
    from slmrun.runtime.quantize import quantize_file

    files = {"f32": write_tiny_gguf(folder / "tiny-f32.gguf", seed=0, **RECORDED_TINY),
             "other": write_tiny_gguf(folder / "tiny-other-f32.gguf", seed=1, **RECORDED_TINY)}
    quantize_file(files["f32"], folder / "tiny-q4_k_m.gguf", "Q4_K_M", n_threads=1)
    files["q4km"] = folder / "tiny-q4_k_m.gguf"
    return files
