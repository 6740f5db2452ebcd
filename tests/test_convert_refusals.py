"""What the converter refuses, and that a refusal leaves nothing in the store: safetensors files
whose headers lie (sizes, dtypes, offsets), weights that do not match config.json, directories
of architectures slmrun does not convert, missing files; through `slmrun import DIR` (the
library and the command line), each checked for its message and an empty store.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess

import numpy as np
import pytest
from conftest import slmrun_cmd
from slmrun import api, config, store
from slmrun.cli import exit_code_for
from slmrun.errors import (InvalidArgumentError, InvalidModelFileError, ModelFileNotFoundError,
                           UnsupportedModelError)
from tinymodels import bert_tensors, hf_bert_vocab, write_safetensors, write_tiny_hf_bert

WORD = "embeddings.word_embeddings.weight"


def assert_store_empty():
    """No model, no sidecar, no half-written file anywhere under SLMRUN_HOME."""
    assert store.list_models() == []
    left = [p for p in config.home().rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert left == [], left


def refused(directory, error=InvalidModelFileError, **kw) -> str:
    with pytest.raises(error) as exc:
        api.import_model(directory, **kw)
    assert exc.value.hint, "every refusal says what to do next"
    assert "\n" not in exc.value.message
    assert_store_empty()
    return exc.value.message


def tiny_weights():
    return bert_tensors(n_vocab=len(hf_bert_vocab()), n_embd=32, n_layer=2, n_ff=64, n_pos=64)


def rewrite(directory, **kw):
    """Replace the directory's model.safetensors (write_safetensors' keywords)."""
    write_safetensors(directory / "model.safetensors", kw.pop("tensors", tiny_weights()), **kw)
    return directory


# --- safetensors headers that lie ----------------------------------------------------

def test_a_header_length_past_the_end_of_the_file(tiny_hf_bert):
    path = tiny_hf_bert / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", len(data)) + data[8:])
    assert "header length" in refused(tiny_hf_bert) and "runs past the end of the file" in refused(tiny_hf_bert)


def test_a_header_that_is_not_json(tiny_hf_bert):
    (tiny_hf_bert / "model.safetensors").write_bytes(struct.pack("<Q", 5) + b"{oops" + b"\0" * 16)
    assert "not valid JSON" in refused(tiny_hf_bert)


def test_a_truncated_file_whose_offsets_lie_past_its_end(tiny_hf_bert):
    path = tiny_hf_bert / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    message = refused(tiny_hf_bert)
    assert "lie past the end of the data" in message and "truncated or its header lies" in message


def test_a_shape_that_is_not_the_bytes_its_offsets_span(tiny_hf_bert):
    w = tiny_weights()
    raw = w[WORD].tobytes()
    w[WORD] = ("F32", [len(hf_bert_vocab()), 33], raw)  # claims 33 columns; the bytes hold 32
    message = refused(rewrite(tiny_hf_bert, tensors=w))
    assert f"tensor '{WORD}': shape [{len(hf_bert_vocab())}, 33] of F32 is" in message and "span" in message


def test_a_dtype_that_is_not_the_bytes_either(tiny_hf_bert):
    w = tiny_weights()
    w[WORD] = ("F16", list(w[WORD].shape), w[WORD].tobytes())  # F32 bytes labelled F16: twice too many
    assert "of F16 is" in refused(rewrite(tiny_hf_bert, tensors=w))


def test_an_unknown_dtype(tiny_hf_bert):
    w = tiny_weights()
    w[WORD] = ("F17", list(w[WORD].shape), w[WORD].tobytes())
    assert "unknown dtype 'F17'" in refused(rewrite(tiny_hf_bert, tensors=w))


def test_two_tensors_that_overlap(tiny_hf_bert):
    w = tiny_weights()
    names = list(w)
    assert names[3:5] == ["embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
    at = sum(w[n].nbytes for n in names[:3])  # where the LayerNorm weight starts
    header = {"embeddings.LayerNorm.bias": {"dtype": "F32", "shape": [32], "data_offsets": [at, at + 128]}}
    message = refused(rewrite(tiny_hf_bert, tensors=w, header=header))
    assert "tensors 'embeddings.LayerNorm.weight' and 'embeddings.LayerNorm.bias' overlap" in message


def test_bytes_that_belong_to_no_tensor(tiny_hf_bert):
    assert "16 bytes after the last tensor belong to no tensor" in refused(
        rewrite(tiny_hf_bert, tail=b"hidden payload!!"))
    w = tiny_weights()
    total, last = sum(v.nbytes for v in w.values()), "embeddings.position_ids"
    assert list(w)[-1] == last
    header = {last: {"dtype": "I64", "shape": [1, 64], "data_offsets": [total - 512 + 8, total + 8]}}
    message = refused(rewrite(tiny_hf_bert, tensors=w, header=header, tail=b"\0" * 8))
    assert f"8 bytes before tensor '{last}' belong to no tensor" in message


def test_a_header_naming_a_tensor_twice(tiny_hf_bert):
    path = tiny_hf_bert / "model.safetensors"
    text = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 8)
    assert "names 'a' twice" in refused(tiny_hf_bert)


@pytest.mark.parametrize("entry, words", [
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}, "invalid shape"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}, "invalid data_offsets"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}, "exactly dtype, shape and data_offsets"),
    ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "invalid shape"),
])
def test_malformed_entries(tiny_hf_bert, entry, words):
    path = tiny_hf_bert / "model.safetensors"
    text = json.dumps({"t": entry}).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 4)
    assert words in refused(tiny_hf_bert)


# --- weights that are not what config.json describes ---------------------------------

def test_weights_of_another_size_than_config_json(tiny_hf_bert):
    cfg = json.loads((tiny_hf_bert / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (tiny_hf_bert / "config.json").write_text(json.dumps(cfg))
    message = refused(tiny_hf_bert)
    assert "config.json's sizes make" in message and "ffn_up" in message


def test_weights_missing_a_tensor(tiny_hf_bert):
    w = tiny_weights()
    del w["encoder.layer.1.attention.self.query.weight"]
    assert "the weights lack blk.1.attn_q.weight" in refused(rewrite(tiny_hf_bert, tensors=w))


def test_a_tensor_a_bert_does_not_have(tiny_hf_bert):
    w = tiny_weights()
    w["encoder.layer.0.attention.self.rotary.weight"] = np.zeros((4, 4), np.float32)
    assert "has no place in a BERT GGUF" in refused(rewrite(tiny_hf_bert, tensors=w))


def test_integer_weights(tiny_hf_bert):
    w = tiny_weights()
    w[WORD] = w[WORD].astype(np.int64)
    assert "is I64, not a float type" in refused(rewrite(tiny_hf_bert, tensors=w))


def test_a_vocabulary_llama_cpp_would_abort_on(tmp_path):
    """Two tokens that become one text ('##▁hello' loses its '##', 'hello' gains the phantom space):
    llama.cpp asserts on such a vocabulary and kills the process, so the converter refuses it."""
    d = write_tiny_hf_bert(tmp_path / "m", extra_vocab=1)
    with open(d / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("##\u2581hello\n")
    message = refused(d)
    assert "both become '\u2581hello'" in message


def test_a_tokenizer_with_ids_past_vocab_size(tiny_hf_bert):
    cfg = json.loads((tiny_hf_bert / "config.json").read_text())
    (tiny_hf_bert / "vocab.txt").write_text((tiny_hf_bert / "vocab.txt").read_text() + "extra\n")
    assert f"token id {len(hf_bert_vocab())} but config.json's vocab_size is {cfg['vocab_size']}" in refused(tiny_hf_bert)


# --- directories slmrun does not convert --------------------------------------------

def test_an_unknown_architecture_is_refused_in_one_line_with_what_to_do(tiny_hf_bert):
    cfg = json.loads((tiny_hf_bert / "config.json").read_text())
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (tiny_hf_bert / "config.json").write_text(json.dumps(cfg))
    message = refused(tiny_hf_bert, UnsupportedModelError)
    assert message.startswith("cannot convert LlamaForCausalLM")
    assert "convert_hf_to_gguf.py" in message and "`slmrun import` the .gguf" in message
    r = subprocess.run([*slmrun_cmd(), "import", str(tiny_hf_bert)], capture_output=True, text=True, timeout=60)
    assert r.returncode == exit_code_for(UnsupportedModelError("x")) == 5
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Error: cannot convert LlamaForCausalLM") and lines[1].startswith("Hint:")
    assert_store_empty()


@pytest.mark.parametrize("change, words", [
    ({"architectures": None}, "names no architecture"),
    ({"architectures": ["BertForSequenceClassification"]}, "cannot convert BertForSequenceClassification"),
    ({"hidden_act": "relu"}, "hidden_act 'relu'"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
])
def test_configurations_llama_cpps_bert_cannot_run(tiny_hf_bert, change, words):
    cfg = json.loads((tiny_hf_bert / "config.json").read_text())
    cfg.update(change)
    (tiny_hf_bert / "config.json").write_text(json.dumps(cfg))
    message = refused(tiny_hf_bert, UnsupportedModelError)
    assert words in message and "convert_hf_to_gguf.py" in message


def test_a_pooling_llama_cpp_does_not_have(tmp_path):
    d = write_tiny_hf_bert(tmp_path / "m", pooling="max")
    assert "a pooling llama.cpp does not have" in refused(d, UnsupportedModelError)


def test_pytorch_weights_are_not_read(tiny_hf_bert):
    os.replace(tiny_hf_bert / "model.safetensors", tiny_hf_bert / "pytorch_model.bin")
    message = refused(tiny_hf_bert, UnsupportedModelError)
    assert "PyTorch/TensorFlow format, not safetensors" in message


@pytest.mark.parametrize("missing, words", [
    ("config.json", "no config.json"),
    ("model.safetensors", "no model.safetensors"),
    ("vocab.txt", "no tokenizer (vocab.txt or tokenizer.json)"),
    ("1_Pooling/config.json", None),  # no pooling: a valid model whose GGUF names none
])
def test_missing_files(tiny_hf_bert, missing, words):
    (tiny_hf_bert / missing).unlink()
    if words is None:
        assert api.import_model(tiny_hf_bert, name="ok").kind == "embedding"
        return
    assert words in refused(tiny_hf_bert, ModelFileNotFoundError)


def test_a_config_that_is_not_json_and_a_path_that_is_not_there(tiny_hf_bert):
    (tiny_hf_bert / "config.json").write_text("{not json")
    assert "config.json: not valid JSON" in refused(tiny_hf_bert)
    with pytest.raises(ModelFileNotFoundError):
        api.import_model(tiny_hf_bert / "nowhere")


def test_options_that_do_not_apply_to_a_directory_or_a_file(tiny_hf_bert, tiny_llama):
    assert "--link" in refused(tiny_hf_bert, InvalidArgumentError, link=True)
    assert "no prompt format" in refused(tiny_hf_bert, InvalidArgumentError, prompt_format="chatml")
    assert "cannot convert to 'q4_k_m'" in refused(tiny_hf_bert, InvalidArgumentError, quant="q4_k_m")
    assert "a .gguf is imported as it is" in refused(tiny_llama, InvalidArgumentError, quant="f16")
    assert "invalid model name" in refused(tiny_hf_bert, InvalidArgumentError, name="../up")
