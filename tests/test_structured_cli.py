"""Structured output from the command line: run --json-schema / --grammar / --format json, classify, extract."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import slmrun_cmd

SMALL = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "n": {"type": "integer"}},
         "required": ["name", "n"], "additionalProperties": False}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny llama plus "▁", which every real SentencePiece vocabulary has: without it a
    space is spelled in byte tokens the grammar engine cannot read back as a space."""
    from tinymodels import write_tiny_gguf
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-cli") / "tiny-cli.gguf", extra_tokens=(("▁", 1),), seed=3)


def _run(*args, input=None):
    return subprocess.run([*slmrun_cmd(), *args], capture_output=True, text=True, timeout=180, input=input)


def test_run_with_a_json_schema_prints_a_valid_value(tiny, tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SMALL))
    p = _run("run", "--raw", "the world is", "-m", str(tiny), "--json-schema", str(schema), "-t", "1",
             "--seed", "3", "-n", "200")
    assert p.returncode == 0, p.stderr
    value = json.loads(p.stdout)
    assert set(value) == {"name", "n"} and isinstance(value["n"], int) and len(value["name"]) <= 8


def test_run_format_json_and_a_gbnf_grammar(tiny, tmp_path):
    p = _run("run", "--raw", "the", "-m", str(tiny), "--format", "json", "-t", "1", "--seed", "1", "-n", "300")
    assert p.returncode == 0, p.stderr
    assert isinstance(json.loads(p.stdout), dict)
    g = tmp_path / "yesno.gbnf"
    g.write_text('root ::= ("yes" | "no") "."\n')
    p = _run("run", "--raw", "the", "-m", str(tiny), "--grammar", str(g), "-t", "1", "-n", "8")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() in ("yes.", "no.")


@pytest.mark.parametrize("schema, code, message", [
    ("{not json", 2, "not valid JSON"),
    ('{"type": "object", "properties": {"a": {"oneOf": [{"type": "integer"}, {"type": "number"}]}}}', 2, "oneOf"),
    ('{"type": "object", "properties": {"a": {"not": {"type": "string"}}}}', 2, '"not"'),
    ('{"type": "array", "items": {"type": "integer"}, "minItems": 50}', 15, "stopped at max_tokens"),
])
def test_run_bad_and_unfinishable_schemas_are_one_line_errors(tiny, tmp_path, schema, code, message):
    f = tmp_path / "s.json"
    f.write_text(schema)
    p = _run("run", "--raw", "the", "-m", str(tiny), "--json-schema", str(f), "-n", "20", "--seed", "1")
    assert p.returncode == code, (p.returncode, p.stderr)
    first = p.stderr.splitlines()[0]
    assert first.startswith("Error: ") and message in first and "Traceback" not in p.stderr
    assert p.stderr.splitlines()[1].startswith("Hint: ")


def test_run_a_schema_file_that_is_missing(tiny, tmp_path):
    p = _run("run", "hi", "-m", str(tiny), "--json-schema", str(tmp_path / "none.json"))
    assert p.returncode == 2 and "cannot read --json-schema" in p.stderr


def test_classify_bad_labels_from_the_cli(tiny):
    p = _run("classify", "-m", str(tiny), "--labels", "spam", "some text")
    assert p.returncode == 2 and "at least two labels" in p.stderr
    p = _run("classify", "-m", str(tiny), "--labels", "spam,,ham", "some text")
    assert p.returncode == 2 and "a label is empty" in p.stderr
    p = _run("classify", "-m", str(tiny), "--labels", "a,b", "--example", "no equals sign", "text")
    assert p.returncode == 2 and "TEXT=LABEL" in p.stderr


def test_classify_on_a_tiny_model_gives_probabilities_that_sum_to_one(tiny):
    p = _run("classify", "-m", str(tiny), "--labels", "hello,world", "-", input="the world\n\nwhat is 2+2?\n")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["the world", "what is 2+2?"]
    for r in rows:
        assert r["label"] in ("hello", "world") and sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5)


@pytest.mark.real_model
def test_classify_and_extract_with_the_default_model(default_model_in_store, tmp_path):
    # (SmolLM2-135M knows "not spam" better than the jargon "ham": benchmarks/STRUCTURED.md.)
    p = _run("classify", "--labels", "spam,not spam", input="WIN a FREE iPhone now!!! Click here\n"
             "Hi Anna, are we still meeting for lunch tomorrow?\n")
    assert p.returncode == 0, p.stderr
    assert [json.loads(line)["label"] for line in p.stdout.splitlines()] == ["spam", "not spam"]
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"name": {"type": "string"},
                                                                   "age": {"type": "integer"}},
                                  "required": ["name", "age"], "additionalProperties": False}))
    p = _run("extract", "--schema", str(schema), "Alice is 31 and lives in Paris.")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"name": "Alice", "age": 31}
