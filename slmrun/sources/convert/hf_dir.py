"""A Hugging Face model directory, read and checked before anything is converted.

What slmrun reads of it: ``config.json`` (the architecture and its sizes), the weights
(``model.safetensors``, or shards named by ``model.safetensors.index.json``; every header
checked by safetensors_io), the tokenizer (``tokenizer.json`` and/or ``vocab.txt``,
``tokenizer_config.json``), and sentence-transformers' files when present: ``modules.json``
and the pooling module's ``config.json`` (how token vectors become one), and
``sentence_bert_config.json`` (``max_seq_length``, where it cuts inputs).

Everything a conversion needs is checked here, so a directory that would fail part-way
through (or give a GGUF llama.cpp refuses) is refused first, with the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ...errors import InvalidModelFileError, ModelFileNotFoundError, UnsupportedModelError
from .safetensors_io import SafetensorsFile, read_header

# Hugging Face architectures (config.json "architectures") slmrun converts, and llama.cpp's
# name for each. llama.cpp's convert_hf_to_gguf.py registers its BertModel class for these
# and CamembertModel / BertForSequenceClassification too; those two need a SentencePiece
# vocabulary or a classifier head, which slmrun does not convert.
CONVERTIBLE = {"BertModel": "bert", "BertForMaskedLM": "bert"}
MAX_JSON = 64 << 20  # tokenizer.json of large vocabularies is tens of MB; a config is a few KB
# What llama.cpp's BERT graph computes: GELU in the FFN (it has no other activation for
# BERT), absolute learned positions, bidirectional attention.
GELU = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")
POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                 "pooling_mode_lasttoken": "last"}
_NAMED_MODES = {"mean": "mean", "cls": "cls", "lasttoken": "last"}


@dataclass(frozen=True)
class HFModelDir:
    path: Path
    config: dict
    architecture: str  # the Hugging Face class name, e.g. "BertModel"
    weights: dict[str, SafetensorsFile]  # tensor name -> the checked file that holds it
    tokenizer_json: dict | None
    tokenizer_config: dict
    vocab_txt: list[str] | None  # vocab.txt's lines, when there is one
    pooling: str | None  # "mean", "cls", "last"; None when the directory does not say
    max_seq_length: int | None  # sentence-transformers' input limit
    model_card: bool = field(default=False)  # a README.md to take the name and license from

    @property
    def gguf_arch(self) -> str:
        return CONVERTIBLE[self.architecture]

    def weights_files(self) -> list[SafetensorsFile]:
        seen: dict[Path, SafetensorsFile] = {}
        for sf in self.weights.values():
            seen.setdefault(sf.path, sf)
        return list(seen.values())


def read_json(path: Path, *, required: bool = True, what: str = "") -> dict | list | None:
    """A JSON file of the model directory; None when absent and not required."""
    if not path.is_file():
        if required:
            raise ModelFileNotFoundError(f"{path.parent}: no {path.name}{what}",
                                         hint="Give the directory of a Hugging Face model, with its config.json, "
                                              "weights (model.safetensors) and tokenizer (tokenizer.json or vocab.txt).")
        return None
    if path.stat().st_size > MAX_JSON:
        raise InvalidModelFileError(f"{path}: {path.stat().st_size} bytes is too large for a {path.name}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidModelFileError(f"{path}: not valid JSON: {exc}",
                                    hint="The file is damaged; copy the model directory again.") from None


def _inside(root: Path, relative: str, where: str) -> Path:
    """A path a JSON file names, kept inside the model directory."""
    p = PurePosixPath(relative)
    if not relative or p.is_absolute() or ".." in p.parts or "\\" in relative:
        raise InvalidModelFileError(f"{where} names {relative!r}, which is not a file inside the model directory")
    return root / p


def architecture_of(config: dict, where: Path) -> str:
    """The one architecture config.json names, or UnsupportedModelError saying what to do instead."""
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        model_type = config.get("model_type")
        raise UnsupportedModelError(
            f"{where}: config.json names no architecture (model_type {model_type!r}); slmrun converts only "
            f"{', '.join(CONVERTIBLE)}: convert it with llama.cpp's convert_hf_to_gguf.py and `slmrun import` the .gguf")
    arch = archs[0]
    if arch not in CONVERTIBLE:
        raise UnsupportedModelError(
            f"cannot convert {arch} ({where}): slmrun converts the BERT family only ({', '.join(CONVERTIBLE)}); "
            "convert it with llama.cpp's convert_hf_to_gguf.py and `slmrun import` the .gguf")
    return arch


def _positive(config: dict, key: str, where: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidModelFileError(f"{where}/config.json: {key} must be a positive integer, got {value!r}")
    return value


def check_bert_config(config: dict, where: Path) -> None:
    """The sizes a BERT conversion writes, and the features llama.cpp's BERT graph lacks."""
    for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "max_position_embeddings", "vocab_size"):
        _positive(config, key, where)
    if config["hidden_size"] % config["num_attention_heads"]:
        raise InvalidModelFileError(f"{where}/config.json: hidden_size {config['hidden_size']} is not a multiple "
                                    f"of num_attention_heads {config['num_attention_heads']}")
    unsupported = []
    if (act := config.get("hidden_act", "gelu")) not in GELU:
        unsupported.append(f"hidden_act {act!r} (llama.cpp's BERT uses GELU)")
    if (pos := config.get("position_embedding_type", "absolute")) != "absolute":
        unsupported.append(f"position_embedding_type {pos!r} (llama.cpp's BERT has absolute positions)")
    if config.get("is_decoder") or config.get("add_cross_attention"):
        unsupported.append("a decoder with cross-attention")
    eps = config.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise InvalidModelFileError(f"{where}/config.json: layer_norm_eps must be a small positive number, got {eps!r}")
    if unsupported:
        raise UnsupportedModelError(
            f"{where}: this {config['architectures'][0]} has {'; '.join(unsupported)}, which slmrun's converter "
            "does not handle: convert it with llama.cpp's convert_hf_to_gguf.py and `slmrun import` the .gguf")


def _weights(root: Path) -> dict[str, SafetensorsFile]:
    single, index = root / "model.safetensors", root / "model.safetensors.index.json"
    if single.is_file():
        sf = read_header(single)
        return {name: sf for name in sf.tensors}
    if index.is_file():
        data = read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise InvalidModelFileError(f"{index}: no weight_map")
        files: dict[str, SafetensorsFile] = {}
        out = {}
        for tensor, shard in weight_map.items():
            if not isinstance(shard, str):
                raise InvalidModelFileError(f"{index}: the shard of {tensor!r} is not a file name")
            if shard not in files:
                files[shard] = read_header(_inside(root, shard, str(index)))
            if tensor not in files[shard].tensors:
                raise InvalidModelFileError(f"{index} puts {tensor!r} in {shard}, which has no such tensor")
            out[tensor] = files[shard]
        return out
    if any((root / n).is_file() for n in ("pytorch_model.bin", "tf_model.h5", "model.ckpt.index")) \
            or any(root.glob("pytorch_model*.bin")):
        raise UnsupportedModelError(
            f"{root}: the weights are in PyTorch/TensorFlow format, not safetensors; slmrun reads safetensors only "
            "(reading .bin files safely needs torch)",
            hint="Convert it with llama.cpp's convert_hf_to_gguf.py and `slmrun import FILE.gguf`, or get the "
                 "model's model.safetensors.")
    raise ModelFileNotFoundError(f"{root}: no model.safetensors (or model.safetensors.index.json)",
                                 hint="Copy the model's weights file into the directory.")


def _pooling(root: Path) -> str | None:
    """The pooling sentence-transformers applies: modules.json names the Pooling module's folder
    (as llama.cpp's converter reads it); without modules.json, a 1_Pooling/ folder is taken."""
    modules = read_json(root / "modules.json", required=False)
    folder = None
    if modules is not None:
        if not isinstance(modules, list):
            raise InvalidModelFileError(f"{root}/modules.json: not a list of modules")
        for mod in modules:
            if isinstance(mod, dict) and str(mod.get("type", "")).endswith("Pooling"):
                folder = _inside(root, str(mod.get("path", "")), f"{root}/modules.json")
                break
    elif (root / "1_Pooling" / "config.json").is_file():
        folder = root / "1_Pooling"
    if folder is None:
        return None
    cfg = read_json(folder / "config.json", what=" (the pooling module's configuration)")
    if not isinstance(cfg, dict):
        raise InvalidModelFileError(f"{folder}/config.json: not an object")
    for key, mode in POOLING_MODES.items():  # llama.cpp's order: mean, then cls, then last token
        if cfg.get(key):
            return mode
    if cfg.get("pooling_mode") in _NAMED_MODES:
        return _NAMED_MODES[cfg["pooling_mode"]]
    raise UnsupportedModelError(
        f"{folder}/config.json: a pooling llama.cpp does not have (it pools by mean, CLS token or last token)",
        hint="Convert it with llama.cpp's convert_hf_to_gguf.py if it supports the model, or choose another model.")


def _vocab_txt(root: Path) -> list[str] | None:
    path = root / "vocab.txt"
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidModelFileError(f"{path}: not UTF-8 text") from None
    # transformers' load_vocab: one token per line, the newline stripped (nothing else).
    return [line.rstrip("\n") for line in text.splitlines(keepends=True)]


def read_model_dir(path: str | Path) -> HFModelDir:
    """Read and check a Hugging Face model directory that slmrun can convert."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ModelFileNotFoundError(f"no such directory: {root}")
    if not root.is_dir():
        raise InvalidModelFileError(f"{root} is not a directory")
    config = read_json(root / "config.json")
    if not isinstance(config, dict):
        raise InvalidModelFileError(f"{root}/config.json: not a JSON object")
    arch = architecture_of(config, root)
    check_bert_config(config, root)
    tokenizer_json = read_json(root / "tokenizer.json", required=False)
    if tokenizer_json is not None and not isinstance(tokenizer_json, dict):
        raise InvalidModelFileError(f"{root}/tokenizer.json: not a JSON object")
    vocab_txt = _vocab_txt(root)
    if vocab_txt is None and tokenizer_json is None:
        raise ModelFileNotFoundError(f"{root}: no tokenizer (vocab.txt or tokenizer.json)",
                                     hint="Copy the model's vocab.txt or tokenizer.json into the directory.")
    tokenizer_config = read_json(root / "tokenizer_config.json", required=False) or {}
    if not isinstance(tokenizer_config, dict):
        raise InvalidModelFileError(f"{root}/tokenizer_config.json: not a JSON object")
    st_config = read_json(root / "sentence_bert_config.json", required=False) or {}
    max_seq = st_config.get("max_seq_length") if isinstance(st_config, dict) else None
    if max_seq is not None and (isinstance(max_seq, bool) or not isinstance(max_seq, int) or max_seq <= 0):
        raise InvalidModelFileError(f"{root}/sentence_bert_config.json: max_seq_length must be a positive integer")
    return HFModelDir(path=root, config=config, architecture=arch, weights=_weights(root),
                      tokenizer_json=tokenizer_json, tokenizer_config=tokenizer_config, vocab_txt=vocab_txt,
                      pooling=_pooling(root), max_seq_length=max_seq,
                      model_card=(root / "README.md").is_file())
