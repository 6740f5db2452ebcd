"""BERT (Hugging Face ``BertModel``) to GGUF, as llama.cpp's ``convert_hf_to_gguf.py`` writes it.

Followed there (class BertModel and its TextModel/ModelBase bases, llama-cpp-python 0.3.36's
vendored copy): the tensors it drops (position ids, the pooler, the masked-LM and next-sentence
heads) and renames (``bert.`` prefix, ``gamma``/``beta``), the names gguf's tensor-name map
gives, which tensors stay F32 whatever the output type (1-D tensors, norms, biases, position
and token-type embeddings), the metadata keys in its order, the vocabulary (wordpiece.py).

One deliberate difference, the context length: see ``context_length``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import InvalidModelFileError
from .hf_dir import HFModelDir
from .safetensors_io import FLOAT_DTYPES, Reader
from .wordpiece import read_vocab, write_vocab

# Output type -> (general.file_type, the type of the tensors that follow it).
OUT_TYPES = {"F32": ("ALL_F32", "F32"), "F16": ("MOSTLY_F16", "F16"), "Q8_0": ("MOSTLY_Q8_0", "Q8_0")}
_DROPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
_DROPPED_PREFIXES = ("cls.predictions", "cls.seq_relationship")
_DROPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # in the GGUF
    source: str  # in the safetensors
    shape: tuple[int, ...]  # numpy order (ggml's reversed), after any slicing
    qtype: str  # "F32", "F16", "Q8_0"
    rows: int | None = None  # keep only the first `rows` rows (position embeddings)


def context_length(d: HFModelDir, requested: int | None = None) -> int:
    """The GGUF's context length.

    llama.cpp's converter writes config.json's max_position_embeddings (512 for BERT). A
    sentence-transformers model is used with its own, shorter limit (sentence_bert_config.json
    max_seq_length: 256 for all-MiniLM-L6-v2) and its embeddings are defined by inputs cut there;
    llama.cpp cuts (and sizes its context) at the GGUF's context length. So we record
    max_seq_length when the model has one, and keep that many rows of the position
    embeddings (llama.cpp requires exactly context_length of them): a long text then gives the
    embedding sentence-transformers gives, not one over positions the model was not tuned for.
    ``requested`` (import --ctx) overrides, up to max_position_embeddings.
    """
    trained = d.config["max_position_embeddings"]
    if requested is not None:
        if not 1 <= requested <= trained:
            raise InvalidModelFileError(f"context length {requested} is outside 1..{trained} "
                                        "(the model's max_position_embeddings)")
        return requested
    return min(d.max_seq_length, trained) if d.max_seq_length else trained


def _hf_name(name: str) -> str | None:
    """BertModel.filter_tensors: the name to map, or None for a tensor llama.cpp drops."""
    if name.startswith("bert."):
        name = name[5:]
    if name.endswith(".gamma"):
        name = name[:-6] + ".weight"
    if name.endswith(".beta"):
        name = name[:-5] + ".bias"
    if name in _DROPPED or name.startswith(_DROPPED_PREFIXES) or name.endswith(_DROPPED_SUFFIXES):
        return None
    return name


def _qtype(gguf_name: str, key, n_dims: int, out: str) -> str:
    """ModelBase.prepare_tensors: what stays F32 in a file of type `out`."""
    import gguf

    if n_dims <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return "F32"
    if key in (gguf.MODEL_TENSOR.POS_EMBD, gguf.MODEL_TENSOR.TOKEN_TYPES):
        return "F32"
    return OUT_TYPES[out][1]


def expected_shapes(config: dict, n_ctx: int) -> dict[str, tuple[int, ...]]:
    """GGUF name -> numpy shape llama.cpp's BERT loader requires (bert.cpp load_arch_tensors)."""
    e, ff, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    out = {"token_embd.weight": (v, e), "position_embd.weight": (n_ctx, e),
           "token_types.weight": (config.get("type_vocab_size", 1), e),
           "token_embd_norm.weight": (e,), "token_embd_norm.bias": (e,)}
    for i in range(config["num_hidden_layers"]):
        for part, shape in (("attn_q", (e, e)), ("attn_k", (e, e)), ("attn_v", (e, e)), ("attn_output", (e, e)),
                            ("ffn_up", (ff, e)), ("ffn_down", (e, ff))):
            out[f"blk.{i}.{part}.weight"] = shape
            out[f"blk.{i}.{part}.bias"] = shape[:1]
        for norm in ("attn_output_norm", "layer_output_norm"):
            out[f"blk.{i}.{norm}.weight"] = (e,)
            out[f"blk.{i}.{norm}.bias"] = (e,)
    return out


# Tensors llama.cpp's BERT loader cannot do without (biases and token types are optional there).
def _required(name: str) -> bool:
    return name.endswith(".weight") and name != "token_types.weight"


def plan_tensors(d: HFModelDir, out: str, n_ctx: int) -> list[PlannedTensor]:
    """Every tensor of the GGUF, in the checkpoint's order, checked against the config."""
    import gguf

    if out not in OUT_TYPES:
        raise InvalidModelFileError(f"unknown output type {out!r}", hint=f"Use one of {', '.join(OUT_TYPES)}.")
    n_layer = d.config["num_hidden_layers"]
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    expected = expected_shapes(d.config, n_ctx)
    planned: list[PlannedTensor] = []
    for source, sf in d.weights.items():
        name = _hf_name(source)
        if name is None:
            continue
        t = sf.tensors[source]
        mapped = tmap.get_type_and_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise InvalidModelFileError(
                f"{sf.path.name}: tensor {source!r} has no place in a BERT GGUF (llama.cpp's tensor map has no "
                "name for it): the weights are not those of a plain BERT", hint="Check that config.json and the "
                "weights belong together; other architectures convert with llama.cpp's convert_hf_to_gguf.py.")
        key, gguf_name = mapped
        if t.dtype not in FLOAT_DTYPES:
            raise InvalidModelFileError(f"{sf.path.name}: tensor {source!r} is {t.dtype}, not a float type")
        shape, rows = t.shape, None
        if gguf_name == "position_embd.weight" and len(shape) == 2 and shape[0] > n_ctx:
            shape, rows = (n_ctx, shape[1]), n_ctx
        want = expected.get(gguf_name)
        if want is not None and tuple(shape) != want:
            raise InvalidModelFileError(
                f"{sf.path.name}: tensor {source!r} has shape {list(t.shape)} but config.json's sizes make "
                f"{gguf_name} {list(want)}", hint="config.json and the weights do not belong together.")
        planned.append(PlannedTensor(gguf_name, source, tuple(shape), _qtype(gguf_name, key, len(shape), out), rows))
    names = [p.name for p in planned]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InvalidModelFileError(f"{d.path}: two tensors of the weights map to {dup}")
    missing = [n for n in expected if _required(n) and n not in names]
    if missing:
        raise InvalidModelFileError(f"{d.path}: the weights lack {', '.join(missing[:4])}"
                                    + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""),
                                    hint="The weights are incomplete or not a BERT's; copy the model again.")
    return planned


def _data(reader_for, p: PlannedTensor):
    """The tensor's bytes as the GGUF holds them, and its type (Q8_0 falls back to F16 as llama.cpp does)."""
    import gguf
    import numpy as np

    data = reader_for(p.source)
    if p.rows is not None:
        data = data[:p.rows]
    if data.dtype not in (np.float16, np.float32):
        data = data.astype(np.float32)
    qtype = gguf.GGMLQuantizationType[p.qtype]
    try:
        return gguf.quants.quantize(np.ascontiguousarray(data), qtype), qtype
    except gguf.QuantError:  # rows not a multiple of the block: F16, as prepare_tensors does
        qtype = gguf.GGMLQuantizationType.F16
        return gguf.quants.quantize(np.ascontiguousarray(data), qtype), qtype


def _metadata(d: HFModelDir, name: str | None, total_params: int):
    """general.* as llama.cpp's converter derives them (gguf.Metadata: the model card's YAML, config.json)."""
    import gguf

    try:
        meta = gguf.Metadata.load(None, d.path if d.model_card else None, name, total_params)
    except Exception:  # a model card gguf cannot parse: the name alone, rather than no conversion
        meta = gguf.Metadata(name=name)
    if meta.name is None:
        meta.name = d.path.name
    if meta.size_label is None and total_params > 0:
        meta.size_label = gguf.size_label(total_params, 0, 0, 0)
    return meta


def write_gguf(d: HFModelDir, dest: Path, *, out: str = "F16", name: str | None = None,
               n_ctx: int | None = None) -> list[PlannedTensor]:
    """Write ``dest`` (which must not exist) and return the tensors as written.

    The order is llama.cpp's: tensors, then general.*, the architecture's keys, the vocabulary.
    """
    import gguf

    ctx = context_length(d, n_ctx)
    planned = plan_tensors(d, out, ctx)
    vocab = read_vocab(d)
    if len(vocab.tokens) != d.config["vocab_size"]:
        raise InvalidModelFileError(f"{d.path}: {len(vocab.tokens)} tokens for vocab_size {d.config['vocab_size']}")
    readers = {sf.path: Reader(sf) for sf in d.weights_files()}
    writer = gguf.GGUFWriter(str(dest), "bert")
    written = []
    try:
        for r in readers.values():
            r.__enter__()
        for p in planned:
            data, qtype = _data(lambda source: readers[d.weights[source].path][source], p)
            writer.add_tensor(p.name, data, raw_dtype=qtype)
            written.append(PlannedTensor(p.name, p.source, p.shape, qtype.name, p.rows))
        total = writer.get_total_parameter_count()[0]
        writer.add_type(gguf.GGUFType.MODEL)
        _metadata(d, name, total).set_gguf_meta_model(writer)
        c = d.config
        writer.add_block_count(c["num_hidden_layers"])
        writer.add_context_length(ctx)
        writer.add_embedding_length(c["hidden_size"])
        writer.add_feed_forward_length(c["intermediate_size"])
        writer.add_head_count(c["num_attention_heads"])
        writer.add_layer_norm_eps(float(c.get("layer_norm_eps", 1e-12)))
        writer.add_file_type(gguf.LlamaFileType[OUT_TYPES[out][0]])
        writer.add_causal_attention(False)
        if d.pooling is not None:
            writer.add_pooling_type(gguf.PoolingType[d.pooling.upper()])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab(writer, d, vocab)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
        for r in readers.values():
            r.__exit__(None, None, None)
    return written
