"""A Modelfile's TEMPLATE (Ollama's Go template) -> one of slmrun's named prompt formats.

Go templates are not Jinja and slmrun does not render them. It recognises one by what it
does: the template runs (gotemplate.py, Ollama's way: ``.Messages`` templates on the whole
conversation, older ``.System``/``.Prompt``/``.Response`` ones turn by turn, the last cut at
``.Response``) on a few fixed conversations, and so does every named format; the format
whose prompts are the same is the template's meaning. Exactly the same first; else the same
but for white space, the BOS/EOS texts ``<s>``/``</s>`` and an empty ``<<SYS>>`` block (Ollama's
Gemma puts one newline after the system text where llama.cpp's puts two; its Llama 2 a space
after ``[/INST]``). Anything else is refused with one line that names FORMAT NAME. Pure.
"""

from __future__ import annotations

import difflib
import re

from ..errors import ModelfileError
from . import gotemplate as gt

_SYS, _U1, _A1, _U2 = ("You are a helpful assistant.", "Hello, how are you?",
                       "I'm doing great. How can I help you today?", "I'd like to show off how chat templating works!")
# Ollama's own template tests' conversations (template/template_test.go), and a system + user one.
SAMPLES = (
    [{"role": "user", "content": _U1}],
    [{"role": "system", "content": _SYS}, {"role": "user", "content": _U1}],
    [{"role": "user", "content": _U1}, {"role": "assistant", "content": _A1}, {"role": "user", "content": _U2}],
    [{"role": "system", "content": _SYS}, {"role": "user", "content": _U1}, {"role": "assistant", "content": _A1},
     {"role": "user", "content": _U2}],
)
# Where two named formats render the same, the first named here is the answer.
PREFERRED = ("chatml", "llama3", "gemma", "phi3", "zephyr", "mistral-v3", "mistral", "llama2-sys", "llama2",
             "mistral-v1", "mistral-v7", "mistral-v3-tekken", "mistral-v7-tekken", "phi4", "falcon3", "granite",
             "vicuna", "vicuna-orca", "deepseek", "openchat", "command-r", "phi2")


def refusal(detail: str = "") -> str:
    return ("TEMPLATE is a Go template slmrun does not recognise" + (f" ({detail})" if detail else "")
            + "; name the prompt format it spells with FORMAT NAME (chatml, llama3, gemma, phi3, mistral, zephyr, ...)")


def _message(m: dict) -> dict:
    return {"Role": m["role"], "Content": m["content"], "Thinking": "", "Images": [], "ToolCalls": [],
            "ToolName": "", "ToolCallID": ""}


def _base(system: str) -> dict:
    return {"System": system, "Tools": [], "Response": "", "Prompt": "", "Suffix": "", "Think": False,
            "ThinkLevel": "", "IsThinkSet": False}


def render(nodes, src: str, messages: list[dict]) -> str:
    """What Ollama's template.Execute writes for ``messages`` (no tools, no images)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    names = gt.identifiers(src)
    if "messages" in names:
        return gt.execute(nodes, {**_base(system), "Messages": [_message(m) for m in messages]})
    appended = "response" not in names  # Ollama appends {{ .Response }} to such templates
    out, system, prompt, response = [], "", "", ""

    def turn():
        nonlocal system, prompt, response
        text = gt.execute(nodes, {**_base(system), "Prompt": prompt, "Response": response})
        out.append(text + (response if appended else ""))
        system = prompt = response = ""

    for m in messages:
        if m["role"] == "system":
            if prompt or response:
                turn()
            system = m["content"]
        elif m["role"] == "user":
            if response:
                turn()
            prompt = m["content"]
        else:
            response = m["content"]
    out.append(gt.execute(nodes, {**_base(system), "Prompt": prompt, "Response": response},
                          stop_at_response=True))
    return "".join(out)


def _loose(text: str) -> str:
    text = re.sub(r"<<SYS>>\s*<</SYS>>", "", text).replace("<s>", "").replace("</s>", "")
    return re.sub(r"\s+", "", text)


def recognise(template: str) -> str:
    """The named format ``template`` spells; ModelfileError (refusal()) when none does."""
    from ..prompt_formats import FORMATS, render as render_format

    if not isinstance(template, str) or not template.strip():
        raise ModelfileError(refusal("it is empty"))
    try:
        nodes = gt.parse(template)
        ours = [render(nodes, template, list(s)) for s in SAMPLES]
    except gt.TemplateUnsupported as exc:
        raise ModelfileError(refusal(str(exc))) from None
    order = [n for n in PREFERRED if n in FORMATS] + sorted(set(FORMATS) - set(PREFERRED))
    theirs = {n: [render_format(FORMATS[n], list(s), bos="", eos="</s>") for s in SAMPLES] for n in order}
    exact = [n for n in order if theirs[n] == ours]
    if exact:
        return exact[0]
    loose = [n for n in order if all(_loose(a) == _loose(b) for a, b in zip(ours, theirs[n]))]
    if not loose:
        raise ModelfileError(refusal())
    # The closest text among them (max keeps the first of equals: PREFERRED's order).
    return max(loose, key=lambda n: sum(difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
                                        for a, b in zip(ours, theirs[n])))
