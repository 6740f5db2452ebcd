"""The Modelfile parser (Ollama's syntax and meaning), PARAMETER checks, the Go-template subset
against Ollama's own template outputs, and TEMPLATE recognised as a named prompt format. Pure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmrun.custom import gotemplate as gt
from slmrun.custom import templates as T
from slmrun.custom.modelfile import Adapter, parse, quote, split_scale
from slmrun.custom.parameters import convert, describe, sampling_defaults
from slmrun.errors import ModelfileError

OLLAMA = Path(__file__).parent / "data" / "ollama_templates"

FULL = '''# a support bot
FROM smollm2-135m:q4_1
parameter temperature 0.2
PARAMETER stop "<|im_end|>"
PARAMETER stop User:
PARAMETER num_ctx 1024
PARAMETER seed 42
SYSTEM """You are Mario.
Be brief."""
MESSAGE user Is Toronto in Canada?
MESSAGE assistant """yes"""
MESSAGE user "Is Paris in Canada?"
ADAPTER ./style.gguf:0.5
ADAPTER /abs/other.gguf
LICENSE """MIT
(see LICENSE)"""
TEMPLATE """{{ .Prompt }}"""
FORMAT ChatML
REQUIRES 0.14.0
'''


def test_every_instruction_is_read_with_ollamas_meaning():
    mf = parse(FULL)
    assert mf.from_ == "smollm2-135m:q4_1" and mf.from_line == 2
    assert mf.parameters == {"temperature": 0.2, "stop": ("<|im_end|>", "User:"), "num_ctx": 1024, "seed": 42}
    assert mf.system == "You are Mario.\nBe brief."
    assert mf.messages == ({"role": "user", "content": "Is Toronto in Canada?"},
                           {"role": "assistant", "content": "yes"},
                           {"role": "user", "content": "Is Paris in Canada?"})
    assert mf.adapters == (Adapter("./style.gguf", 0.5), Adapter("/abs/other.gguf", 1.0))
    assert mf.license == ("MIT\n(see LICENSE)",) and mf.template == "{{ .Prompt }}"
    assert mf.format == "chatml" and mf.requires == "0.14.0"
    assert mf.lines == {"adapter:0": 13, "adapter:1": 14, "template": 17, "format": 18}


def test_to_text_parses_back_to_the_same_modelfile():
    mf = parse(FULL)
    again = parse(mf.to_text(header="printed back\nby a test"))
    assert again == mf
    tricky = parse('FROM x\nSYSTEM "  padded  "\nMESSAGE user """say "hi"\nplease"""\nPARAMETER stop " end"\n')
    assert tricky.system == "  padded  " and tricky.messages[0]["content"] == 'say "hi"\nplease'
    assert parse(tricky.to_text()) == tricky
    with pytest.raises(ModelfileError, match='contains """'):
        quote('a """ b')


@pytest.mark.parametrize("text,value", [
    ("FROM     FOOO BAR    ", "FOOO BAR"),  # Ollama's own cases (parser_test.go)
    ('FROM "FOO  BAR  "', "FOO  BAR  "),
    ("FROM /path/to/model", "/path/to/model"),
    ("FROM llama3:latest", "llama3:latest"),
    ("\ufeffFROM x\r\n", "x"),
    ("  # leading comment\n\nfrom x # not a comment here\n", "x # not a comment here"),
])
def test_from_values(text, value):
    assert parse(text).from_ == value


@pytest.mark.parametrize("text,line,words", [
    ("PARAMETER temperature 1\n", None, "no FROM line"),
    ("FROM x\n\nPARAMETER temperature hot\n", 3, "temperature must be a number, got 'hot'"),
    ("FROM x\nPARAMETER top_p 2\n", 2, "top_p must be from 0 to 1, got 2"),
    ("FROM x\nPARAMETER top_k 1.5\n", 2, "top_k must be an integer"),
    ("FROM x\nPARAMETER num_ctx 8\n", 2, "num_ctx must be from 16 tokens up"),
    ("FROM x\nPARAMETER temperature -1\n", 2, "temperature must be >= 0"),
    ("FROM x\nPARAMETER temperature nan\n", 2, "must be a number"),
    ("FROM x\nPARAMETER seed -2\n", 2, "seed must be an integer >= -1"),
    ("FROM x\nPARAMETER mirostat 1\n", 2, "mirostat is Ollama's; slmrun does not support it"),
    ("FROM x\nPARAMETER foo 1\n", 2, "unknown parameter 'foo'"),
    ("FROM x\nMESSAGE bot hi\n", 2, "MESSAGE role must be one of system, user or assistant, got 'bot'"),
    ("FROM x\nFOO bar\n", 2, "unknown instruction 'FOO'"),
    ("FROM x\nDRAFT ./d.gguf\n", 2, "DRAFT (a draft model for speculative decoding) is Ollama's"),
    ('FROM x\nSYSTEM """never\nclosed\n', 2, 'the """ opened here is never closed'),
    ('FROM x\nSYSTEM """a""" b\n', 2, 'text after the closing """'),
    ("FROM\n", 1, "FROM needs a value"),
    ("FROM x\nFROM y\n", 2, "a second FROM (the first is on line 1)"),
    ("FROM x\nFORMAT chatmel\n", 2, "unknown prompt format 'chatmel'"),
    ("FROM x\nADAPTER a.gguf:1.x\n", 2, "the scale after ':' must be a number"),
    ("FROM x\nPARAMETER temperature\n", 2, "PARAMETER needs a parameter name and a value"),
    ("FROM x\nPARAMETER\n", 2, "PARAMETER needs a value"),
])
def test_bad_modelfiles_name_the_line(text, line, words):
    with pytest.raises(ModelfileError) as exc:
        parse(text)
    assert words in exc.value.message and exc.value.hint
    assert exc.value.line == line
    if line:
        assert exc.value.message.startswith(f"(line {line}): ")


def test_parameter_conversion_from_json_and_what_it_becomes():
    assert convert("temperature", 1) == 1.0 and convert("top_k", 40.0) == 40
    for bad in (True, "x", [1], float("inf")):
        with pytest.raises(ModelfileError):
            convert("temperature", bad)
    params = {"temperature": 0.0, "num_predict": -1, "seed": -1, "stop": ("a", "b"), "num_ctx": 512,
              "repeat_last_n": 0}
    assert sampling_defaults(params) == {"temperature": 0.0, "max_tokens": None, "stop": ["a", "b"],
                                         "repeat_last_n": 0}
    assert describe({"stop": ("a", "b"), "top_k": 5}).splitlines() == [f"{'stop':<30}\"a\"", f"{'stop':<30}\"b\"",
                                                                      f"{'top_k':<30}5"]


def test_adapter_scales():
    assert split_scale("a.gguf") == ("a.gguf", 1.0)
    assert split_scale("/x/a.gguf:0.25") == ("/x/a.gguf", 0.25)
    assert split_scale(r"C:\models\a.gguf") == (r"C:\models\a.gguf", 1.0)
    assert split_scale("a.gguf:-1") == ("a.gguf", -1.0)


# --- Go templates -----------------------------------------------------------------------------

CASES = {"user": T.SAMPLES[0], "user-assistant-user": T.SAMPLES[2], "system-user-assistant-user": T.SAMPLES[3]}
TEMPLATES = sorted(p.name for p in OLLAMA.glob("*.gotmpl"))


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_go_template_subset_writes_what_ollama_writes(name):
    src = (OLLAMA / name).read_text()
    nodes = gt.parse(src)
    for case, messages in CASES.items():
        out = T.render(nodes, src, list(messages))
        want = (OLLAMA / "testdata" / name / case).read_text()
        # Ollama's own test drops one trailing space for these templates (template_test.go).
        if name in ("chatqa.gotmpl", "llama2-chat.gotmpl", "mistral-instruct.gotmpl", "openchat.gotmpl",
                    "vicuna.gotmpl") and out.endswith(" "):
            out = out[:-1]
        assert out == want, (name, case)


RECOGNISED = {"chatml.gotmpl": "chatml", "llama3-instruct.gotmpl": "llama3", "gemma-instruct.gotmpl": "gemma",
              "gemma3-instruct.gotmpl": "gemma", "phi-3.gotmpl": "phi3", "zephyr.gotmpl": "zephyr",
              "mistral-instruct.gotmpl": "mistral-v3", "llama2-chat.gotmpl": "llama2-sys",
              "vicuna.gotmpl": "vicuna"}


@pytest.mark.parametrize("name", TEMPLATES)
def test_ollamas_templates_are_recognised_or_refused(name):
    src = (OLLAMA / name).read_text()
    if name in RECOGNISED:
        assert T.recognise(src) == RECOGNISED[name]
    else:  # alpaca, command-r, falcon, granite's old Question/Answer, ...: no named format spells them
        with pytest.raises(ModelfileError) as exc:
            T.recognise(src)
        assert "FORMAT NAME" in exc.value.message and "\n" not in exc.value.message


LEGACY = {  # the older .System/.Prompt/.Response form many shared Modelfiles still carry
    "chatml": "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n"
              "{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n",
    "llama3": "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
              "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
              "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>",
    "gemma": "<start_of_turn>user\n{{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}<end_of_turn>\n"
             "<start_of_turn>model\n{{ .Response }}<end_of_turn>\n",
    "phi3": "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}{{ if .Prompt }}<|user|>\n{{ .Prompt }}"
            "<|end|>\n{{ end }}<|assistant|>\n{{ .Response }}<|end|>\n",
    "zephyr": "{{ if .System }}<|system|>\n{{ .System }}</s>\n{{ end }}{{ if .Prompt }}<|user|>\n{{ .Prompt }}</s>\n"
              "{{ end }}<|assistant|>\n{{ .Response }}</s>\n",
    "mistral": "[INST] {{ if .System }}{{ .System }} {{ end }}{{ .Prompt }} [/INST]",
}


@pytest.mark.parametrize("fmt", sorted(LEGACY))
def test_legacy_templates_are_recognised(fmt):
    assert T.recognise(LEGACY[fmt]) == fmt


@pytest.mark.parametrize("src,why", [
    ("{{ .Prompt ", "does not end"),
    ('{{ template "x" }}', "template is not supported"),
    ("{{ currentDate }}{{ .Prompt }}", "currentDate is not supported"),
    ("{{ range .Messages }}{{ .Nope }}{{ end }}", "unknown field .Nope"),
    ("### Question: {{ .Prompt }}\n### Answer:", ""),  # valid, but no named format is this
])
def test_unrecognised_templates_are_refused_in_one_line(src, why):
    with pytest.raises(ModelfileError) as exc:
        T.recognise(src)
    assert why in exc.value.message and "FORMAT NAME" in exc.value.message


def test_go_template_details():
    run = lambda src, **v: gt.execute(gt.parse(src), v)  # noqa: E731
    assert run('{{- /* c */ -}}  a  {{- " b " -}}  c') == "a b c"
    assert run('{{ $x := 1 }}{{ if eq $x 1 2 }}{{ $x = 3 }}{{ end }}{{ $x }}') == "3"
    assert run('{{ range $i, $m := .L }}{{ if gt $i 0 }},{{ end }}{{ $m }}{{ end }}', L=["a", "b"]) == "a,b"
    assert run('{{ range .L }}{{ if eq . "b" }}{{ break }}{{ end }}{{ . }}{{ else }}none{{ end }}', L=["a", "b"]) == "a"
    assert run('{{ range .L }}x{{ else }}none{{ end }}', L=[]) == "none"
    assert run('{{ printf "%s-%d" .A 3 }} {{ len .L | printf "%d" }} {{ and .A "" }}|{{ or "" .A }}',
               A="q", L=[1, 2]) == "q-3 2 |q"
    assert run('{{ with .A }}[{{ . }}]{{ end }}{{ index .L 1 }}{{ slice .S 1 3 }}', A="z", L=[5, 6], S="abcd") == "[z]6bc"
    assert json.loads(run("{{ json .M }}", M={"a": [1]})) == {"a": [1]}
    with pytest.raises(gt.TemplateUnsupported, match="too long"):
        gt.execute(gt.parse("{{ range .L }}{{ range $.L }}xxxxxxxxxx{{ end }}{{ end }}"), {"L": list(range(300))})
