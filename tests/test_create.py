"""`slmrun create` and created models through the library and the command line, on tiny models
loaded by the real llama.cpp: resolution, the settings a Modelfile adds and their precedence,
FROM chains, removal, and every refusal leaving the store as it was."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import slmrun
from slmrun import api, store
from slmrun.custom import manifest
from slmrun.errors import (InvalidArgumentError, InvalidModelFileError, ModelfileError, ModelFileNotFoundError,
                           ModelInUseError, ModelNotFoundError)

from conftest import slmrun_cmd

CHATML_LEGACY = ('{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}'
                 '<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n')
HI = [{"role": "user", "content": "hello world"}]


def created_files(home: Path) -> list[str]:
    d = home / "created"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


@pytest.fixture
def tiny(tiny_llama):
    api.import_model(tiny_llama, name="tiny", link=True)
    return "tiny"


def make(name: str, text: str, base_dir=None):
    return slmrun.create(name, text, base_dir=base_dir)


def test_a_created_model_chats_with_its_system_few_shot_and_parameters(tiny):
    make("bot", "FROM tiny\nPARAMETER temperature 0\nPARAMETER num_predict 4\nPARAMETER num_ctx 200\n"
                "PARAMETER stop zzz\nSYSTEM Be terse.\nMESSAGE user hi\nMESSAGE assistant hello\n")
    assert api.resolve("bot").key == "bot" and api.resolve("bot:latest").key == "bot"
    with slmrun.load("bot", n_threads=1) as m:
        assert m.name == "bot" and m.n_ctx == 200
        assert m.defaults == {"temperature": 0.0, "max_tokens": 4, "stop": ["zzz"]}
        placed = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"}] + HI
        with slmrun.load(api.resolve("tiny").path, n_ctx=200, n_threads=1) as plain:
            assert m.chat_tokens(HI) == plain.chat_tokens(placed)
            # The request's own system message replaces SYSTEM; the few-shot turns stay after it.
            own = [{"role": "system", "content": "Be long."}] + HI
            assert m.chat_tokens(own) == plain.chat_tokens([own[0]] + placed[1:3] + HI)
            r = m.chat(HI)
            assert r.stats.generated_tokens <= 4 and r.text == plain.chat(placed, temperature=0, max_tokens=4).text
        assert m.chat(HI, max_tokens=7, stop=[]).stats.generated_tokens == 7  # a request's own values win
    with slmrun.load("bot", n_ctx=128, n_threads=1) as m:
        assert m.n_ctx == 128  # the caller's context wins over num_ctx


def test_template_becomes_a_named_format_and_format_overrides(tiny_llama_plain):
    api.import_model(tiny_llama_plain, name="plain", link=True)
    make("viatemplate", f'FROM plain\nTEMPLATE """{CHATML_LEGACY}"""\n')
    make("viaformat", "FROM plain\nFORMAT zephyr\n")
    with slmrun.load("viatemplate", n_ctx=128, n_threads=1) as m:
        assert (m.chat_format.source, m.chat_format.fmt.name) == ("modelfile", "chatml")
        assert m.chat_tokens(HI) == m.tokenize("<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n")
    with slmrun.load("viaformat", n_ctx=128, n_threads=1, chat_format="gemma") as m:
        assert m.chat_format.fmt.name == "gemma"  # --format beats the Modelfile
    assert api.describe("viaformat", verify=False)["prompt_format"] == "zephyr (from the Modelfile)"
    assert "TEMPLATE" in manifest.read("viatemplate").modelfile_text()
    with pytest.raises(ModelfileError) as exc:
        make("weird", 'FROM plain\n\nTEMPLATE """### Q: {{ .Prompt }}"""\n')
    assert exc.value.message.startswith("(line 3): ") and "FORMAT NAME" in exc.value.message
    make("weird", 'FROM plain\nTEMPLATE """### Q: {{ .Prompt }}"""\nFORMAT phi2\n')  # FORMAT says what it means


def test_chains_inherit_and_override(tiny, tmp_path):
    make("base-bot", "FROM tiny\nPARAMETER temperature 0.5\nPARAMETER top_k 7\nSYSTEM one\nMESSAGE user a\n"
                     "MESSAGE assistant b\nLICENSE MIT\n")
    make("child", "FROM base-bot\nPARAMETER temperature 0\nSYSTEM two\n")
    c = api.created("child")
    assert c.chain == ("child", "base-bot") and c.base == "tiny"
    assert c.parameters == {"temperature": 0.0, "top_k": 7} and c.system == "two" and len(c.messages) == 2
    assert c.license == ("MIT",)
    assert api.describe("child", verify=False)["from"] == "base-bot -> tiny"
    target, quant = api.plan_target("child")
    assert target.name == "tiny" and quant is None


def test_from_a_path_is_relative_to_the_modelfile(tiny_llama, tmp_path):
    (tmp_path / "sub").mkdir()
    os.link(tiny_llama, tmp_path / "sub" / "m.gguf")
    made = make("frompath", "FROM ./sub/m.gguf\n", base_dir=tmp_path)
    assert made.from_ == str(tmp_path / "sub" / "m.gguf")
    with slmrun.load("frompath", n_ctx=64, n_threads=1) as m:
        assert m.path == tmp_path / "sub" / "m.gguf"
    with pytest.raises(ModelFileNotFoundError):
        make("nofile", "FROM ./missing.gguf\n", base_dir=tmp_path)


def test_refusals_leave_the_store_as_it_was(tiny, isolated_home, tmp_path):
    make("a", "FROM tiny\nSYSTEM first\n")
    make("b", "FROM a\n")
    before = (isolated_home / "created" / "a.json").read_bytes()
    with pytest.raises(ModelfileError, match="FROM cycle"):
        make("a", "FROM b\n")  # a -> b -> a
    with pytest.raises(ModelfileError, match="FROM cycle"):
        make("a", "FROM a\n")
    with pytest.raises(ModelfileError, match="no FROM line"):
        make("c", "SYSTEM x\n")
    with pytest.raises(ModelfileError, match="got 'hot'"):
        make("c", "FROM tiny\nPARAMETER temperature hot\n")
    with pytest.raises(ModelfileError, match="role"):
        make("c", "FROM tiny\nMESSAGE robot hi\n")
    with pytest.raises(ModelNotFoundError, match="FROM nosuchmodel"):
        make("c", "FROM nosuchmodel\n")
    for name in ("../evil", "a/b", "/abs", "two words", "-x", ".hidden", "x" * 65, "a:b"):
        with pytest.raises(InvalidArgumentError, match="invalid model name"):
            make(name, "FROM tiny\n")
    with pytest.raises(InvalidArgumentError, match="registry's name"):
        make("smollm2-135m", "FROM tiny\n")
    with pytest.raises(InvalidArgumentError, match="model file in the store"):
        make("tiny", "FROM tiny\n")
    assert (isolated_home / "created" / "a.json").read_bytes() == before
    assert created_files(isolated_home) == ["a.json", "b.json"]
    assert not (tmp_path.parent / "evil.json").exists()
    with pytest.raises(InvalidArgumentError, match="created with `slmrun create`"):
        api.import_model(api.resolve("tiny").path, name="a")


def test_removing_a_base_is_refused_naming_its_dependents(tiny, tiny_llama):
    make("a", "FROM tiny\n")
    make("b", "FROM a\n")
    with pytest.raises(ModelInUseError) as exc:
        api.remove("tiny")
    assert exc.value.message == "tiny is the base of a" and "--force" in exc.value.hint
    with pytest.raises(ModelInUseError, match="a is the base of b"):
        api.remove("a")
    assert [m.ref for m in api.remove("b")] == ["b"]
    assert [m.ref for m in api.remove("tiny", force=True)] == ["tiny:f32"]
    with pytest.raises(ModelNotFoundError) as exc:  # a created model whose base went says so
        api.load("a")
    assert exc.value.message.startswith("a is built on tiny:") and "slmrun rm a" in exc.value.hint
    api.remove("a")
    assert manifest.list_all() == []


def test_copy(tiny):
    make("a", "FROM tiny\nSYSTEM s\n")
    slmrun.copy("a", "a2")
    slmrun.copy("tiny", "t2")
    assert api.created("a2").system == "s" and api.created("a2").chain == ("a2",)  # independent of a
    assert api.created("t2").base == "tiny:f32"
    api.remove("a")
    assert api.created("a2").system == "s"


def test_a_damaged_manifest_is_named(tiny, isolated_home):
    make("a", "FROM tiny\n")
    (isolated_home / "created" / "a.json").write_text("{not json")
    with pytest.raises(ModelfileError, match="manifest of the created model a is damaged"):
        api.resolve("a")
    assert manifest.list_all() == []


def test_an_adapter_is_no_base(tiny, tmp_path):
    from tinymodels import write_tiny_lora

    lora = write_tiny_lora(tmp_path / "l.gguf", api.resolve("tiny").path).path
    with pytest.raises(InvalidModelFileError, match="is a LoRA adapter, not a model"):
        make("x", f"FROM {lora}\n")


# --- the command line -------------------------------------------------------------------------

def run(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run([*slmrun_cmd(), *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_cli_create_run_show_list_rm(tiny, tmp_path):
    (tmp_path / "Modelfile").write_text("FROM tiny\nPARAMETER num_predict 3\nPARAMETER temperature 0\n"
                                        'SYSTEM """Be\nbrief."""\n')
    out = run("create", "bot", cwd=tmp_path).stdout
    assert out.splitlines()[0] == "parsing modelfile" and out.splitlines()[-1] == "success"
    r = run("run", "-m", "bot", "--ctx", "128", "--threads", "1", "hello", "--verbose")
    assert "eval count:           3 token(s)" in r.stderr
    r = run("run", "-m", "bot", "--ctx", "128", "--threads", "1", "-n", "5", "hello", "--verbose")
    assert "eval count:           5 token(s)" in r.stderr  # the command line's -n wins
    r = subprocess.run([*slmrun_cmd(), "chat", "-m", "bot", "--ctx", "128", "--threads", "1", "--verbose"],
                       input="hello\nagain\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stderr.count("eval count:           3 token(s)") == 2, r.stderr
    shown = run("show", "bot", "--modelfile").stdout
    assert 'SYSTEM """Be\nbrief."""' in shown and "FROM tiny" in shown
    (tmp_path / "again").write_text(shown)
    run("create", "bot2", "-f", str(tmp_path / "again"), "-q")
    assert run("show", "bot2", "--modelfile").stdout.split("\n", 1)[1] == shown.split("\n", 1)[1]
    listing = run("list").stdout
    table = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
    assert table["bot"][4] == "created" and table["bot"][-2:] == ["FROM", "tiny"] and "bot2" in table
    assert table["tiny"][4] == "generative"
    rows = json.loads(run("list", "--json").stdout)
    assert {r["name"] for r in rows if r.get("created")} == {"bot", "bot2"}
    p = run("rm", "tiny", check=False)
    assert p.returncode == 22 and "tiny is the base of bot, bot2" in p.stderr
    p = run("create", "bad", "-f", str(tmp_path / "nope"), check=False)
    assert p.returncode == 4 and "cannot read the Modelfile" in p.stderr
    (tmp_path / "bad").write_text("FROM tiny\nPARAMETER top_p 7\n")
    p = run("create", "x", "-f", str(tmp_path / "bad"), check=False)
    assert p.returncode == 2 and "Error: (line 2): PARAMETER top_p must be from 0 to 1, got 7" in p.stderr
    plan = run("plan", "bot", "--json").stdout
    assert json.loads(plan)["n_ctx"] > 0
    c = json.loads(run("classify", "-m", "bot", "--ctx", "400", "--threads", "1", "--labels", "yes,no", "hi").stdout)
    assert set(c["probabilities"]) == {"yes", "no"}
    b = json.loads(run("bench", "-m", "bot", "-p", "8", "-n", "4", "-r", "1", "--ctx", "400", "-t", "1", "--json",
                       "-q").stdout)
    assert b["results"] and all(r["model"].startswith("bot") for r in b["results"])
    assert "bot" in run("show", "bot").stdout
    run("rm", "bot")
    run("rm", "bot2")
    run("rm", "tiny")
    assert store.list_models() == []


@pytest.mark.real_model
def test_a_created_model_of_the_default_model_extracts_and_classifies(default_model_in_store, tmp_path):
    """The tasks on a created model of a real one: its SYSTEM and few-shot turns go before the
    task's own messages, and a request's own parameters (extract's temperature 0) win."""
    (tmp_path / "Modelfile").write_text("FROM smollm2-135m\nPARAMETER temperature 1.5\nPARAMETER num_ctx 512\n"
                                        "SYSTEM You read support emails.\n")
    run("create", "mail", "-q", cwd=tmp_path)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    (tmp_path / "person.json").write_text(json.dumps(schema))
    out = run("extract", "-m", "mail", "--schema", str(tmp_path / "person.json"), "--threads", "1",
              "Alice is 31 years old.").stdout
    value = json.loads(out)
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)
    with slmrun.load("mail", n_threads=1) as m:
        assert m.n_ctx == 512 and m.defaults == {"temperature": 1.5}
        assert m.extract("Alice is 31 years old.", schema) == value  # greedy: the request's temperature 0 wins
        c = m.classify("My parcel never arrived", ["delivery", "billing"])
        assert set(c.probabilities) == {"delivery", "billing"} and c.label in c.probabilities
