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
                    extra_tokens: tuple[tuple[str, int], ...] = ()) -> Path:
    """``vocab_style`` None: ChatML's tokens when there is a template, none without."""
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
            t(f"blk.{i}.attn_output.weight", n_embd, n_embd)
            ones(f"blk.{i}.ffn_norm.weight", n_embd)
            t(f"blk.{i}.ffn_gate.weight", n_embd, n_ff)
            t(f"blk.{i}.ffn_up.weight", n_embd, n_ff)
            t(f"blk.{i}.ffn_down.weight", n_ff, n_embd)
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
