"""Bring your own model: template-less GGUFs in each vocabulary style, loaded by the real
llama.cpp, chatting with the inferred, imported, registry or --format prompt format."""

from __future__ import annotations

import json
import re
import os
import subprocess

import pytest

import slmrun
from slmrun import api, store
from slmrun.chat import ChatSession
from slmrun.errors import ChatFormatError, UnknownPromptFormatError

from conftest import slmrun_cmd
from tinymodels import VOCAB_STYLES, write_tiny_gguf

Q = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}]
INFERRED = {"chatml": ("chatml", "<|im_start|>"), "gemma": ("gemma", "<start_of_turn>"),
            "llama3": ("llama3", "<|start_header_id|>"), "mistral": ("mistral-v3", "[INST]"),
            "zephyr": ("zephyr", "<|user|>"), "phi3": ("phi3", "<|user|>")}


@pytest.fixture(scope="module")
def styled(tmp_path_factory):
    d = tmp_path_factory.mktemp("byo")
    return {style: write_tiny_gguf(d / f"tiny-{style}.gguf", chat_template=None, vocab_style=style, seed=3)
            for style in VOCAB_STYLES}


@pytest.mark.parametrize("style", sorted(INFERRED))
def test_a_template_less_gguf_chats_in_the_format_its_vocabulary_names(styled, style):
    fmt_name, marker = INFERRED[style]
    with slmrun.load(styled[style], n_ctx=256, n_threads=1) as m:
        choice = m.chat_format
        assert (choice.source, choice.fmt.name) == ("inferred", fmt_name)
        assert marker in choice.reason and m.chat_template is None
        tokens = m.chat_tokens(Q)
        marker_id = m.tokenize(marker, special=True, add_bos=False)
        assert len(marker_id) == 1 and marker_id[0] in tokens  # the marker went in as its special token
        assert tokens.count(1) == 1 and tokens[0] == 1  # one BOS, first, whether the format wrote it or not
        reply = m.chat(Q, max_tokens=4, temperature=0)
        assert reply.stats.prompt_tokens == len(tokens)
        assert not ChatSession(m).plain


def test_format_override_and_none(styled):
    with slmrun.load(styled["plain"], n_ctx=256, n_threads=1) as m:
        assert m.chat_format.source == "none" and ChatSession(m).plain
        with pytest.raises(ChatFormatError, match="no chat template"):
            m.chat(Q)
    with slmrun.load(styled["plain"], n_ctx=256, n_threads=1, chat_format="phi2") as m:
        assert m.chat_format.source == "--format"
        assert m.chat_tokens(Q[1:]) == m.tokenize("Instruct: hello world\nOutput:", special=True)
    with slmrun.load(styled["gemma"], n_ctx=256, n_threads=1, chat_format="none") as m:
        assert ChatSession(m).plain
    with pytest.raises(UnknownPromptFormatError, match="unknown prompt format 'gemmma'"):
        slmrun.load(styled["gemma"], chat_format="gemmma")


def test_import_with_format_is_recorded_and_shown(styled):
    m = api.import_model(styled["plain"], name="mine", prompt_format="Gemma")
    assert store.read_sidecar(m.path)["prompt_format"] == "gemma"
    with slmrun.load("mine", n_ctx=256, n_threads=1) as model:
        assert (model.chat_format.source, model.chat_format.fmt.name) == ("import", "gemma")
    assert api.describe("mine", verify=False)["prompt_format"] == "gemma (recorded at import with --format)"
    inferred = api.describe(str(styled["llama3"]), verify=False)["prompt_format"]
    assert inferred.startswith("llama3 (inferred: its vocabulary has the special tokens <|start_header_id|>")


def test_a_bad_format_at_import_copies_nothing(styled):
    with pytest.raises(UnknownPromptFormatError) as exc:
        api.import_model(styled["plain"], name="mine", prompt_format="chatmel")
    assert "chatml" in exc.value.hint
    assert api.list_models() == []


def test_a_sidecar_naming_an_unknown_format_fails_with_the_fix(styled):
    m = api.import_model(styled["plain"], name="mine", prompt_format="chatml")
    sidecar = m.path.with_name(m.path.name + ".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps(dict(meta, prompt_format="futureformat")))
    with pytest.raises(UnknownPromptFormatError) as exc:
        slmrun.load("mine")
    assert "futureformat" in exc.value.message and "--format" in exc.value.hint


def test_a_registry_entry_may_name_the_format(styled, tmp_path, monkeypatch):
    reg = tmp_path / "models.toml"
    reg.write_text("""
[models.mymodel]
description = "mine"
license = "MIT"
architecture = "llama"
n_params = 1000
block_count = 2
embedding_length = 64
feed_forward_length = 128
head_count = 4
head_count_kv = 2
context_length = 512
vocab_size = 300
prompt_format = "llama3"

[[models.mymodel.files]]
quant = "F32"
repo = "me/mymodel"
filename = "mymodel.gguf"
""")
    monkeypatch.setenv("SLMRUN_REGISTRY", str(reg))
    staging = store.staging_dir("mymodel")
    tmp = staging / "mymodel.gguf.incomplete"
    tmp.write_bytes(styled["gemma"].read_bytes())  # a gemma vocabulary, but the registry says llama3
    store.install(tmp, name="mymodel", filename="mymodel.gguf", quant="F32", sha256="0" * 64, source="test")
    with slmrun.load("mymodel", n_ctx=256, n_threads=1) as m:
        assert (m.chat_format.source, m.chat_format.fmt.name) == ("registry", "llama3")
    assert api.describe("mymodel", verify=False)["prompt_format"] == "llama3 (from the registry)"


def _run(*args, input=None):
    return subprocess.run([*slmrun_cmd(), *args], input=input, capture_output=True, text=True, timeout=120)


def test_cli_says_once_what_it_inferred_and_format_overrides(styled):
    p = _run("chat", "-m", str(styled["gemma"]), "-t", "0", "-n", "3", input="hello\nworld\n")
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("using the gemma prompt format, inferred because its vocabulary has") == 1
    p = _run("run", "-m", str(styled["gemma"]), "--format", "chatml", "-n", "2", "hello")
    assert p.returncode == 0, p.stderr
    assert "inferred" not in p.stderr
    p = _run("run", "-m", str(styled["plain"]), "-n", "2", "hello")
    assert p.returncode == 14 and "no prompt format was named or inferred" in p.stderr
    assert "--format NAME" in p.stderr


def test_cli_unknown_format_is_one_clear_line(styled):
    p = _run("run", "-m", str(styled["gemma"]), "--format", "gemmma", "hello")
    assert p.returncode == 2
    assert p.stderr.splitlines()[0] == "Error: unknown prompt format 'gemmma'"
    assert "Known formats:" in p.stderr and "llama3" in p.stderr
    p = _run("import", str(styled["plain"]), "--name", "x", "--format", "bogus")
    assert p.returncode == 2 and "unknown prompt format 'bogus'" in p.stderr


def test_cli_import_with_format_then_show(styled):
    p = _run("import", str(styled["plain"]), "--name", "usbstick", "--format", "zephyr")
    assert p.returncode == 0, p.stderr
    assert "prompt format zephyr" in p.stdout
    shown = json.loads(_run("show", "usbstick", "--json", "--no-verify").stdout)
    assert shown["prompt_format"] == "zephyr (recorded at import with --format)"
    assert shown["chat_template"] == "none"
    text = _run("show", "usbstick", "--no-verify").stdout
    assert re.search(r"^prompt format +zephyr \(recorded at import with --format\)$", text, re.M)


@pytest.mark.real_model
def test_the_default_model_uses_its_gguf_template(default_model_in_store):
    d = api.describe("smollm2-135m", verify=False)
    assert d["prompt_format"] == "the GGUF's chat template"
    with slmrun.load("smollm2-135m", n_ctx=512) as m:
        assert m.chat_format.source == "gguf" and m.chat_template.origin == default_model_in_store.name
        assert os.path.basename(m.path) == default_model_in_store.name
