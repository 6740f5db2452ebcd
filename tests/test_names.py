"""Model names are checked before they touch the filesystem: a name too long, with characters
the store does not allow, or one that would leave the store is an InvalidArgumentError naming
the rule (exit code 2 on the command line), never an OSError; registry names, ``name:quant``,
``name:latest`` and (on the command line) paths still work."""

from __future__ import annotations

import subprocess

import pytest

from conftest import slmrun_cmd
from slmrun import api, registry, store
from slmrun.errors import InvalidArgumentError, ModelFileNotFoundError, ModelNotPulledError

LONG = "x" * 5000

BAD_NAMES = [LONG, "a" * 65, "MODEL!!", "../escape", "a/../../b", "..", "-x", "_x", ".hidden", "a b", "a\x00b",
             "", "  ", "ä"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_name_refuses_what_the_store_cannot_hold(name):
    with pytest.raises(InvalidArgumentError) as e:
        store.check_name(name)
    assert store.MODEL_NAME_RULE in e.value.hint
    assert len(e.value.message) < 120  # a pasted page does not come back whole


@pytest.mark.parametrize("name, canonical", [("tiny", "tiny"), (" Tiny ", "tiny"), ("qwen2.5-0.5b", "qwen2.5-0.5b"),
                                             ("a" * 64, "a" * 64), ("a_b", "a_b")])
def test_check_name_accepts_store_names(name, canonical):
    assert store.check_name(name) == canonical


@pytest.mark.parametrize("ref, parts", [("tiny", ("tiny", None)), ("tiny:q4_k_m", ("tiny", "Q4_K_M")),
                                        ("Tiny:Latest", ("tiny", None)), ("tiny:", ("tiny", None)),
                                        ("smollm2-135m:latest", ("smollm2-135m", None))])
def test_split_ref(ref, parts):
    assert registry.split_ref(ref) == parts


@pytest.mark.parametrize("ref", [LONG, f"tiny:{LONG}", "MODEL!!", "a\x00b", "tiny:q4 k"])
@pytest.mark.parametrize("call", [
    lambda r: api.resolve(r), lambda r: api.resolve(r, allow_path=False), lambda r: api.describe(r),
    lambda r: api.remove(r), lambda r: api.pull(r, progress=False), lambda r: api.plan_target(r),
    lambda r: store.find(r), lambda r: store.remove(r), lambda r: store.install(None, name=r, filename="x.gguf",
                                                                                quant="F32", sha256="", source=""),
])
def test_every_entry_point_refuses_bad_names_before_the_filesystem(ref, call, isolated_home):
    with pytest.raises(InvalidArgumentError):
        call(ref)
    assert not (isolated_home / "models").exists() or not any((isolated_home / "models").iterdir())


def test_quants_cannot_leave_the_store_either():
    for call in (lambda: store.find("tiny", "../../x"), lambda: store.lock("tiny", "q4/../../x").__enter__(),
                 lambda: api.resolve("tiny:q4/../x", allow_path=False)):
        with pytest.raises(InvalidArgumentError):
            call()


def test_a_path_too_long_for_the_filesystem_is_a_missing_file_not_an_oserror(tmp_path):
    for ref in (f"./{LONG}.gguf", f"{tmp_path}/{LONG}.gguf"):
        with pytest.raises(ModelFileNotFoundError, match="File name too long") as e:
            api.resolve(ref)
        assert len(e.value.message) < 200
    with pytest.raises(ModelFileNotFoundError, match="no such model file"):
        api.resolve(str(tmp_path / "absent.gguf"))


def test_registry_names_with_a_quant_or_latest_still_resolve(tiny_llama):
    store_model = api.import_model(tiny_llama, name="tiny", link=True)
    for ref in ("tiny", "tiny:f32", "TINY:F32", "tiny:latest", str(tiny_llama)):
        assert api.resolve(ref).path.resolve() == store_model.path.resolve() or ref == str(tiny_llama)
    with pytest.raises(ModelNotPulledError):
        api.resolve("smollm2-135m:latest")  # known, valid, just not here


@pytest.mark.parametrize("args, code, message", [
    (["run", "-m", LONG, "hi"], 2, "invalid model name"),
    (["show", LONG], 2, "invalid model name"),
    (["rm", LONG], 2, "invalid model name"),
    (["pull", LONG], 2, "invalid model name"),
    (["plan", LONG], 2, "invalid model name"),
    (["chat", "-m", LONG], 2, "invalid model name"),
    (["run", "-m", f"tiny:{LONG}", "hi"], 2, "invalid quant"),
    (["run", "-m", f"./{LONG}.gguf", "hi"], 4, "File name too long"),
    (["import", f"/{LONG}.gguf"], 4, "File name too long"),
    (["show", "MODEL!!"], 2, "invalid model name 'MODEL!!'"),
    (["ask", "--kb", LONG, "hi"], 2, "invalid knowledge base name"),
    (["kb", "show", "../etc"], 2, "invalid knowledge base name '../etc'"),
    (["kb", "create", "a/b", "."], 2, "invalid knowledge base name 'a/b'"),
    (["serve", "--kb", "..", "--port", "0"], 2, "invalid knowledge base name '..'"),
])
def test_the_cli_says_one_line_and_a_hint(args, code, message, isolated_home):
    r = subprocess.run([*slmrun_cmd(), *args], capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr
    assert len(lines) == 2 and lines[0].startswith("Error: ") and message in lines[0] and lines[1].startswith("Hint: ")
    assert "unexpected" not in r.stderr and "OSError" not in r.stderr and len(r.stderr) < 400
