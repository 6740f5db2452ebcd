"""slmrun's Hugging Face -> GGUF converter (slmrun/sources/convert/) on tiny BERT directories the
tests write (tinymodels.write_tiny_hf_bert): tensor names, shapes, types and values, the
vocabulary, the metadata, the three output types, and the real llama.cpp loading and tokenizing
the result. The written files are read back with gguf's own GGUFReader, not with slmrun's reader.
(Refusals of bad directories and files: test_convert_refusals.py.)
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

import slmrun
from slmrun.gguf_contents import tensor_digest
from slmrun.gguf_info import read_info
from slmrun.sources.convert import convert
from tinymodels import HF_BERT_SPECIALS, bert_tensors, bert_vocab, hf_bert_vocab, write_tiny_hf_bert

N_EMBD, N_LAYER, N_FF, N_POS = 32, 2, 64, 64
LAYER_PARTS = {  # GGUF name -> Hugging Face name, per layer
    "attn_q": "attention.self.query", "attn_k": "attention.self.key", "attn_v": "attention.self.value",
    "attn_output": "attention.output.dense", "attn_output_norm": "attention.output.LayerNorm",
    "ffn_up": "intermediate.dense", "ffn_down": "output.dense", "layer_output_norm": "output.LayerNorm"}
GLOBAL = {"token_embd.weight": "embeddings.word_embeddings.weight",
          "position_embd.weight": "embeddings.position_embeddings.weight",
          "token_types.weight": "embeddings.token_type_embeddings.weight",
          "token_embd_norm.weight": "embeddings.LayerNorm.weight", "token_embd_norm.bias": "embeddings.LayerNorm.bias"}


def source_names(n_layer=N_LAYER) -> dict[str, str]:
    out = dict(GLOBAL)
    for i in range(n_layer):
        for part, hf in LAYER_PARTS.items():
            for kind in ("weight", "bias"):
                out[f"blk.{i}.{part}.{kind}"] = f"encoder.layer.{i}.{hf}.{kind}"
    return out


def stays_f32(name: str, shape) -> bool:
    """llama.cpp's rule (ModelBase.prepare_tensors): 1-D tensors, norms, biases, position and
    token-type embeddings are F32 whatever the file type."""
    return (len(shape) == 1 or name.endswith("_norm.weight") or not name.endswith(".weight")
            or name in ("position_embd.weight", "token_types.weight"))


def fields(path) -> dict:
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def tensors(path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


@pytest.mark.parametrize("quant, ftype", [("F32", 0), ("F16", 1), ("Q8_0", 7)])
def test_tensors_have_llama_cpps_names_shapes_types_and_the_weights(tmp_path, tiny_hf_bert, quant, ftype):
    out = convert(tiny_hf_bert, tmp_path / "x.gguf", quant=quant)
    got = tensors(out.path)
    names = source_names()
    # The pooler and position_ids are dropped; nothing else is added or lost.
    assert set(got) == set(names) and out.n_tensors == len(names) == 5 + 16 * N_LAYER
    src = bert_tensors(n_vocab=len(hf_bert_vocab()), n_embd=N_EMBD, n_layer=N_LAYER, n_ff=N_FF, n_pos=N_POS)
    for name, t in got.items():
        want = src[names[name]]
        assert tuple(int(d) for d in t.shape) == want.shape[::-1], name  # ggml's order: numpy's reversed
        expect = "F32" if stays_f32(name, want.shape) else quant
        assert t.tensor_type.name == expect, name
        data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape)
        if expect == "F32":
            assert np.array_equal(data, want), name
        elif expect == "F16":
            assert np.array_equal(data, want.astype(np.float16).astype(np.float32)), name
        else:  # Q8_0: one scale per 32 values, 8-bit steps
            assert np.abs(data - want).max() <= np.abs(want).max() / 127, name
    meta = fields(out.path)
    assert meta["general.file_type"] == ftype and out.quant == quant == read_info(out.path).quant
    assert out.tensors_sha256 == tensor_digest(read_info(out.path))


def test_q8_0_rows_that_are_not_whole_blocks_fall_back_to_f16(tmp_path):
    """Rows of 48 values are not whole Q8_0 blocks of 32: llama.cpp's converter writes F16 then."""
    d = write_tiny_hf_bert(tmp_path / "odd", n_embd=48, n_head=2, n_ff=64)
    got = tensors(convert(d, tmp_path / "x.gguf", quant="q8_0").path)
    assert got["token_embd.weight"].tensor_type.name == "F16"  # rows of n_embd = 48
    assert got["blk.0.ffn_down.weight"].tensor_type.name == "Q8_0"  # rows of n_ff = 64
    assert fields(tmp_path / "x.gguf")["general.file_type"] == 7


def test_bf16_and_f16_checkpoints_convert(tmp_path):
    for dtype in ("F16", "BF16"):
        d = write_tiny_hf_bert(tmp_path / dtype, dtype=dtype)
        got = tensors(convert(d, tmp_path / f"{dtype}.gguf", quant="F32").path)
        src = bert_tensors(n_vocab=len(hf_bert_vocab()), n_embd=N_EMBD, n_layer=N_LAYER, n_ff=N_FF, n_pos=N_POS)
        word = src["embeddings.word_embeddings.weight"]
        # F16 rounds; BF16 keeps the upper 16 bits of each float32.
        expect = (word.astype(np.float16).astype(np.float32) if dtype == "F16"
                  else (word.view(np.uint32) & 0xFFFF0000).view(np.float32))
        assert np.array_equal(got["token_embd.weight"].data.reshape(word.shape), expect), dtype


def test_vocabulary_in_llama_cpps_phantom_space_convention(tmp_path):
    d = write_tiny_hf_bert(tmp_path / "m", extra_vocab=3)
    meta = fields(convert(d, tmp_path / "x.gguf").path)
    vocab = hf_bert_vocab()
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == len(vocab) + 3 == meta.get("bert.vocab_size", len(tokens))
    for i, text in enumerate(vocab):
        if text in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):  # special: CONTROL, as written
            assert (tokens[i], types[i]) == (text, 3), text
        elif text.startswith("##"):  # a continuation: without its marker
            assert (tokens[i], types[i]) == (text[2:], 1), text
        else:  # a word start: behind llama.cpp's phantom space
            assert (tokens[i], types[i]) == ("\u2581" + text, 1), text
    # config.json's vocab_size counts 3 ids no token has: UNUSED placeholders, as llama.cpp writes
    # them (its phantom space spares only CONTROL tokens).
    assert tokens[-3:] == [f"\u2581[PAD{i}]" for i in range(len(vocab), len(vocab) + 3)] and types[-3:] == [5] * 3
    ids = {t: i for i, t in enumerate(vocab)}
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.token_type_count"]) == ("bert", 2)
    assert meta["tokenizer.ggml.bos_token_id"] == ids["[CLS]"] and meta["tokenizer.ggml.seperator_token_id"] == ids["[SEP]"]
    assert meta["tokenizer.ggml.unknown_token_id"] == ids["[UNK]"] and meta["tokenizer.ggml.mask_token_id"] == ids["[MASK]"]
    assert meta["tokenizer.ggml.padding_token_id"] == ids["[PAD]"] == 0
    assert meta["tokenizer.ggml.normalizer.lowercase"] is True


def test_tokenizer_json_gives_the_special_tokens_and_what_to_add(tmp_path):
    """With tokenizer.json, gguf's SpecialVocab reads it as llama.cpp's converter does: [CLS] first
    and [SEP] last (add_bos, add_eos), no separate separator; its BertNormalizer's lowercase."""
    d = write_tiny_hf_bert(tmp_path / "m", tokenizer_json=True, lowercase=False)
    meta = fields(convert(d, tmp_path / "x.gguf").path)
    ids = {t: i for i, t in enumerate(hf_bert_vocab())}
    assert (meta["tokenizer.ggml.add_bos_token"], meta["tokenizer.ggml.add_eos_token"],
            meta["tokenizer.ggml.add_sep_token"]) == (True, True, False)
    assert meta["tokenizer.ggml.bos_token_id"] == ids["[CLS]"] and meta["tokenizer.ggml.eos_token_id"] == ids["[SEP]"]
    assert meta["tokenizer.ggml.normalizer.lowercase"] is False
    assert meta["bert.pooling_type"] == 1  # read through modules.json this time


@pytest.mark.parametrize("pooling, code", [("mean", 1), ("cls", 2)])
def test_metadata_says_what_the_model_is(tmp_path, pooling, code):
    d = write_tiny_hf_bert(tmp_path / "m", pooling=pooling, config={"layer_norm_eps": 1e-7})
    out = convert(d, tmp_path / "x.gguf", name="Tiny BERT")
    meta = fields(out.path)
    assert meta["general.architecture"] == "bert" and meta["general.name"] == "Tiny BERT"
    assert meta["bert.attention.causal"] is False and meta["bert.pooling_type"] == code
    assert (meta["bert.block_count"], meta["bert.embedding_length"], meta["bert.feed_forward_length"],
            meta["bert.attention.head_count"], meta["bert.context_length"]) == (N_LAYER, N_EMBD, N_FF, 2, N_POS)
    assert meta["bert.attention.layer_norm_epsilon"] == pytest.approx(1e-7)
    assert meta["general.quantization_version"] == gguf.GGML_QUANT_VERSION
    info = read_info(out.path)
    assert (info.pooling, info.causal, info.embedding_model, info.encoder) == (pooling, False, True, True)
    assert (out.pooling, out.context_length, out.embedding_length) == (pooling, N_POS, N_EMBD)


def test_without_pooling_configuration_the_gguf_names_none(tmp_path):
    d = write_tiny_hf_bert(tmp_path / "m", pooling=None)
    out = convert(d, tmp_path / "x.gguf")
    assert "bert.pooling_type" not in fields(out.path) and out.pooling is None
    assert read_info(out.path).embedding_model  # still an encoder: embeddings only


def test_context_length_is_sentence_transformers_max_seq_length(tmp_path):
    """max_seq_length (sentence_bert_config.json) becomes the context length, and the position
    table keeps that many rows (llama.cpp wants exactly context_length of them)."""
    d = write_tiny_hf_bert(tmp_path / "m", n_pos=64, max_seq_length=16)
    out = convert(d, tmp_path / "x.gguf", quant="F32")
    assert out.context_length == 16 == fields(out.path)["bert.context_length"]
    pos = tensors(out.path)["position_embd.weight"]
    src = bert_tensors(n_vocab=len(hf_bert_vocab()), n_embd=N_EMBD, n_layer=N_LAYER, n_ff=N_FF, n_pos=64)
    assert np.array_equal(pos.data, src["embeddings.position_embeddings.weight"][:16])
    assert convert(d, tmp_path / "y.gguf", n_ctx=40).context_length == 40  # asked for: up to the 64 trained
    with pytest.raises(slmrun.InvalidModelFileError, match="outside 1..64"):
        convert(d, tmp_path / "z.gguf", n_ctx=65)
    assert not (tmp_path / "z.gguf").exists()


def test_the_conversion_is_deterministic(tmp_path, tiny_hf_bert):
    a = convert(tiny_hf_bert, tmp_path / "a.gguf", quant="Q8_0")
    b = convert(tiny_hf_bert, tmp_path / "b.gguf", quant="Q8_0")
    assert a.tensors_sha256 == b.tensors_sha256
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_a_converted_model_loads_in_llama_cpp_and_tokenizes_as_wordpiece(tmp_path, tiny_hf_bert):
    """The real llama.cpp loads the result through slmrun.load and splits text as BERT's WordPiece
    does: lower-cased, punctuation apart, the longest piece first, '##' pieces inside a word,
    [UNK] for a word it cannot spell, [CLS] ... [SEP] around it all."""
    out = convert(tiny_hf_bert, tmp_path / "tiny.gguf", quant="F16")
    ids = {t: i for i, t in enumerate(hf_bert_vocab())}

    def expect(*pieces):
        return [ids[p] for p in ("[CLS]", *pieces, "[SEP]")]

    with slmrun.load(out.path) as m:
        assert m.tokenize("What is the World?") == expect("what", "is", "the", "world", "?")
        assert m.tokenize("Embedding texts, please!") == expect("embed", "##ding", "texts", ",", "please", "!")
        assert m.tokenize("zzqx") == expect("z", "##z", "##q", "##x")
        assert m.tokenize("\u4e2d") == expect("[UNK]")  # a character the vocabulary lacks
        assert m.tokenize("  hello\tworld \n") == expect("hello", "world")
        assert m.detokenize(m.tokenize("hello world"), special=False).strip() == "hello world"
    assert HF_BERT_SPECIALS[0] == "[PAD]"


def test_a_directly_written_bert_gguf_reads_as_an_embedding_model(tiny_bert_gguf):
    """gguf_info on a BERT GGUF that slmrun's converter did not write (tinymodels.write_tiny_bert)."""
    info = read_info(tiny_bert_gguf)
    assert (info.architecture, info.pooling, info.causal, info.embedding_model) == ("bert", "mean", False, True)
    assert not info.has_kv_cache and info.context_length == 64 and info.embedding_length == 32
    tokens, _ = bert_vocab()
    with slmrun.load(tiny_bert_gguf) as m:
        assert m.tokenize("bike shop")[1:-1] == [tokens.index("\u2581bike"), tokens.index("\u2581shop")]


def test_the_model_card_gives_the_license_and_a_bad_one_is_ignored(tmp_path, tiny_hf_bert):
    (tiny_hf_bert / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Tiny\n")
    assert read_info(convert(tiny_hf_bert, tmp_path / "a.gguf").path).license == "apache-2.0"
    (tiny_hf_bert / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    assert convert(tiny_hf_bert, tmp_path / "b.gguf", name="X").n_tensors == 5 + 16 * N_LAYER
    assert json.loads(json.dumps(fields(tmp_path / "b.gguf")["general.name"])) == "X"
