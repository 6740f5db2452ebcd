"""The local store through the CLI: import, list, show, rm, damage detection, locks."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import slmrun
from slmrun import api, resolution, store
from slmrun.cli import _register, app
from slmrun.errors import InvalidArgumentError, InvalidModelFileError, ModelNotFoundError, StoreLockedError

_register()
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_import_list_show_rm(tiny_llama):
    r = cli("import", str(tiny_llama), "--name", "tiny")
    assert r.exit_code == 0 and "imported tiny:f32" in r.output
    listed = json.loads(cli("list", "--json").output)
    assert [(m["name"], m["quant"]) for m in listed] == [("tiny", "F32")]
    assert listed[0]["sha256"] == store.sha256_file(tiny_llama)
    table = cli("list").output.splitlines()
    assert table[0].split() == ["NAME", "QUANT", "SIZE", "KIND", "MODIFIED"] and table[1].startswith("tiny")
    assert table[1].split()[4] == "generative" and listed[0]["kind"] == "generative"

    shown = json.loads(cli("show", "tiny", "--json").output)
    assert shown["architecture"] == "llama" and shown["quant"] == "F32" and shown["context_length"] == 512
    assert shown["sha256"].endswith("(verified)") and shown["file"].startswith(str(store.models_dir()))
    with slmrun.load("tiny") as m:  # an imported name loads like a registry one
        assert m.complete("hello", max_tokens=2).stats.prompt_tokens > 0

    r = cli("rm", "tiny")
    assert r.exit_code == 0 and "deleted tiny:f32" in r.output
    assert api.list_models() == [] and not (store.models_dir() / "tiny").exists()


def test_import_refuses_bad_files_and_names(tmp_path, tiny_llama):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all" * 10)
    with pytest.raises(InvalidModelFileError):
        api.import_model(bad)
    for name in ("../escape", "/abs", "a/b", ".hidden"):
        with pytest.raises(InvalidArgumentError):
            api.import_model(tiny_llama, name=name)
    assert api.list_models() == []
    assert not list(store.config.home().rglob("*.gguf"))


def test_damaged_store_file_is_detected_with_the_fix(tiny_llama):
    m = api.import_model(tiny_llama, name="tiny")
    data = bytearray(m.path.read_bytes())
    data[-10] ^= 0xFF  # a flipped bit in the weights: same size, different hash
    m.path.write_bytes(bytes(data))
    with pytest.raises(InvalidModelFileError, match="damaged") as exc:
        api.describe("tiny")
    assert "slmrun pull tiny:f32 --force" in exc.value.hint
    m.path.write_bytes(bytes(data[:-100]))  # and a truncated one fails at load, before llama.cpp
    with pytest.raises(InvalidModelFileError) as exc:
        slmrun.load("tiny")
    assert "--force" in exc.value.hint


def test_rm_unknown_and_show_unknown():
    with pytest.raises(ModelNotFoundError, match="not in the local store"):
        api.remove("tinyllama")
    r = runner.invoke(app, ["show", "nonsense-model"])
    assert r.exit_code != 0


def test_show_a_registry_model_not_yet_pulled():
    shown = json.loads(cli("show", "phi-2", "--json").output)
    assert shown["architecture"] == "phi2" and shown["license"] == "MIT"
    assert len(shown["quants"]) == 12 and not any(shown["quants"].values())
    assert "Instruct:" in shown["prompt_format"]


def test_store_survives_a_sidecar_without_its_model():
    d = store.models_dir() / "ghost"
    d.mkdir(parents=True)
    (d / "ghost.Q4_0.gguf.json").write_text("{}")  # a crash between the two renames
    assert api.list_models() == []


def test_list_when_empty():
    r = cli("list")
    assert "No models yet" in r.output


def test_a_name_without_quant_uses_the_best_local_quant_that_fits(tiny_llama, monkeypatch):
    """Two local quants of a registry model, the planner's pick absent: the better one that fits."""
    from slmrun import hardware
    from slmrun.registry import load_registry

    entry = load_registry().get("tinyllama")
    staging = store.staging_dir("tinyllama")
    big = staging / "big.incomplete"
    with open(big, "wb") as f:
        f.truncate(1200 * 2**20)  # a sparse 1.2 GB "Q8_0" (the real one is 1.17 GB): no disk used
    store.install(big, name="tinyllama", filename=entry.file("Q8_0").filename, quant="Q8_0",
                  sha256="0" * 64, source="test")
    small = staging / "small.incomplete"
    small.write_bytes(tiny_llama.read_bytes())
    store.install(small, name="tinyllama", filename=entry.file("Q2_K").filename, quant="Q2_K",
                  sha256=store.sha256_file(tiny_llama), source="test")
    monkeypatch.setattr(resolution, "choose_quant", lambda e: "Q4_K_M")  # the planner's pick is not local
    roomy = hardware.profile("laptop-16gb")
    monkeypatch.setattr(hardware, "detect", lambda **kw: roomy)
    assert api.resolve("tinyllama").quant == "Q8_0"  # it fits: the better quality
    pi = hardware.profile("rpi4-2gb")
    monkeypatch.setattr(hardware, "detect", lambda **kw: pi)
    assert api.resolve("tinyllama").quant == "Q2_K"  # Q8_0 would not fit: the one that does


def test_a_held_lock_times_out_with_the_next_step():
    with store.lock("tiny", "Q8_0"):
        with pytest.raises(StoreLockedError) as exc:
            with store.lock("tiny", "q8_0", timeout=0.3):
                pass
        with store.lock("tiny", "q4_0", timeout=0.3):  # another file of the same model is free
            pass
    assert "tiny:q8_0" in exc.value.message and "0.3 s" in exc.value.message
    assert isinstance(exc.value, TimeoutError) and "wait" in exc.value.hint
    with store.lock("tiny", "q8_0", timeout=0.3):  # released on exit
        pass


def test_a_lock_dies_with_the_process_that_held_it():
    """Another process holds the lock; while it lives we time out, once it is killed (no clean
    exit, as in a crash) the lock is free."""
    import signal
    import subprocess
    import sys

    code = ("import sys, time, slmrun.store as s\n"
            "with s.lock('tiny', 'q8_0'):\n"
            "    print('held', flush=True); time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError):
            with store.lock("tiny", "q8_0", timeout=0.5):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with store.lock("tiny", "q8_0", timeout=5):
        pass
