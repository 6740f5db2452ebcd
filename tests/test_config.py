"""slmrun/config.py owns every variable, and the tests' isolation clears them all.

A developer's exported SLMRUN_FLASH_ATTN=off or HF_HUB_OFFLINE=1 must not change what a
test sees: conftest's autouse fixture clears config.ALL and every SLMRUN_*/HF_* variable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, variables_to_clear

from slmrun import config


def test_every_slmrun_variable_the_code_names_is_in_config():
    named = set()
    for path in (REPO / "slmrun").rglob("*.py"):
        named |= set(re.findall(r"\bSLMRUN_[A-Z][A-Z0-9_]*", path.read_text(encoding="utf-8")))
    assert named, "the pattern found nothing: it is broken"
    assert named <= {v.name for v in config.ALL}


def test_every_variable_has_a_default_and_a_description():
    for v in config.ALL:
        assert v.name.startswith("SLMRUN_") and v.description.strip(), v.name
    assert [name for name, _, _ in config.describe()] == [v.name for v in config.ALL]


def test_every_variable_the_hub_source_reads_is_cleared():
    text = (REPO / "slmrun" / "sources" / "hub.py").read_text(encoding="utf-8")
    read = set(re.findall(r'"((?:HF_|TRANSFORMERS_|DISABLE_|DO_NOT_)[A-Z_]+)"', text))
    assert {"HF_ENDPOINT", "HF_HUB_OFFLINE", "DO_NOT_TRACK"} <= read
    with_all_set = dict.fromkeys(read, "1")
    os.environ.update(with_all_set)
    try:
        assert read <= variables_to_clear()
    finally:
        for name in with_all_set:
            del os.environ[name]


def test_a_developers_environment_does_not_reach_the_tests(tmp_path):
    """Run tests that each variable would break, under a hostile environment, in a fresh pytest."""
    hostile = {
        "SLMRUN_HOME": str(tmp_path / "developer-home"), "SLMRUN_FLASH_ATTN": "off", "SLMRUN_MAX_CTX": "256",
        "SLMRUN_MODEL": "no-such-model", "SLMRUN_DEBUG": "1", "SLMRUN_PIP": "false",
        "SLMRUN_EMBED_MODEL": "no-such-model", "SLMRUN_MAX_EMBED_INPUTS": "1",
        "SLMRUN_REGISTRY": str(tmp_path / "missing.toml"),
        "SLMRUN_RPC_CONNECT_TIMEOUT": "0.000001", "SLMRUN_RPC_TIMEOUT": "0.000001",
        "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_not_a_token",
        "TRANSFORMERS_OFFLINE": "1",
        "SLMRUN_HOST": "127.0.0.1:9", "SLMRUN_API_KEY": "developer-key", "SLMRUN_KEEP_ALIVE": "0",
        "SLMRUN_MAX_QUEUE": "0", "SLMRUN_MAX_BODY": "1",
    }
    assert {v.name for v in config.ALL} <= set(hostile)  # a new variable gets a hostile value here too
    tests = ["tests/test_runtime.py::test_load_applies_fast_defaults",
             "tests/test_pull.py::test_clean_pull_then_second_pull_is_a_no_op",
             "tests/test_planner.py::test_cli_plan_json_shape",
             "tests/test_server_api.py::test_chat_streamed_and_not_give_the_same_reply",
             "tests/test_server_embeddings.py::test_bad_requests_are_4xx_in_openais_shape[body6-400-input has 9 items; at most 8]",
             "tests/test_rpc_split.py::test_tiny_model_split_gives_the_local_text[cpu+2-servers]"]
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                       cwd=REPO, env={**os.environ, **hostile}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert f"{len(tests)} passed" in p.stdout
    assert not Path(hostile["SLMRUN_HOME"]).exists()
