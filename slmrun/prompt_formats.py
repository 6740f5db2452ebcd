"""Named chat prompt formats, and the choice of one for a model.

Pure: plain data in, text out; no I/O, no llama_cpp. Every format llama.cpp also knows
by name renders exactly what llama.cpp's built-in set does (src/llama-chat.cpp,
``llama_chat_apply_template(name, ...)``); tests/test_prompt_formats.py checks that
against llama.cpp itself. Where llama.cpp and a model card disagree, llama.cpp's text
is kept, so a prompt means the same in slmrun as in llama-server.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .errors import UnknownPromptFormatError

_WS = " \t\n\v\f\r"  # what llama.cpp's trim() strips (C isspace), not str.strip()'s Unicode set


@dataclass(frozen=True)
class PromptFormat:
    """How a conversation becomes one prompt.

    ``system``/``user``/``assistant`` render one turn each (``{content}`` is the
    message); ``generation`` is the cue that asks for the reply; ``stop`` strings end
    a reply that runs on into the next turn. Any of them may say ``{bos}``/``{eos}``,
    the model's own begin/end-of-sequence text: a Zephyr turn ends with the model's
    EOS (``</s>`` for TinyLlama, ``<|endoftext|>`` for StableLM, which is what
    llama.cpp writes literally).

    ``bos``: the format starts with the BOS token (its reference template begins with
    ``bos_token``); otherwise the tokenizer adds one only if the GGUF asks for it.
    ``system_in_user``: the system text goes inside the next user turn, before its
    content (Llama 2's ``[INST] <<SYS>>``, Gemma: formats without a system turn).
    ``trim``: roles whose content is stripped of surrounding white space.
    """

    system: str
    user: str
    assistant: str
    generation: str
    stop: tuple[str, ...] = ()
    name: str | None = None
    bos: bool = False
    system_in_user: bool = False
    trim: tuple[str, ...] = ()

    def shape(self) -> str:
        """One user turn and the cue, for messages: 'Instruct: {content}\\nOutput:'."""
        return self.name or repr(self.user + self.generation)


def _fill(template: str, content: str, bos: str, eos: str) -> str:
    # Placeholders are filled in the template's own text only, never inside the message.
    return content.join(part.replace("{bos}", bos).replace("{eos}", eos) for part in template.split("{content}"))


def render(fmt: PromptFormat, messages: list[dict], *, bos: str = "", eos: str = "",
           add_generation_prompt: bool = True) -> str:
    """The prompt for validated ``messages`` (dicts with role and content)."""
    out = [bos] if fmt.bos and bos else []
    pending = ""  # system text waiting for the next user turn
    for m in messages:
        role, content = m["role"], m["content"]
        if role in fmt.trim:
            content = content.strip(_WS)
        if role == "system" and fmt.system_in_user:
            pending += _fill(fmt.system, content, bos, eos)
            continue
        if role == "user" and pending:
            content, pending = pending + content, ""
        out.append(_fill(getattr(fmt, role), content, bos, eos))
    out.append(pending)  # a system message that no user turn followed
    if add_generation_prompt:
        out.append(_fill(fmt.generation, "", bos, eos))
    return "".join(out)


def stop_strings(fmt: PromptFormat, *, bos: str = "", eos: str = "") -> tuple[str, ...]:
    filled = (_fill(s, "", bos, eos) for s in fmt.stop)
    return tuple(s for s in filled if s)


# --- the named formats --------------------------------------------------------------

def _chatml_like(start: str, sep: str, end: str, **kw) -> dict:
    turn = lambda role: f"{start}{role}{sep}{{content}}{end}"  # noqa: E731
    return dict(system=turn("system"), user=turn("user"), assistant=turn("assistant"),
                generation=f"{start}assistant{sep}", **kw)


_ALL = ("system", "user", "assistant")
_SPECS: dict[str, dict] = {
    "chatml": _chatml_like("<|im_start|>", "\n", "<|im_end|>\n", stop=("<|im_end|>", "<|im_start|>")),
    "phi4": _chatml_like("<|im_start|>", "<|im_sep|>", "<|im_end|>", stop=("<|im_end|>", "<|im_start|>")),
    "phi3": _chatml_like("<|", "|>\n", "<|end|>\n", stop=("<|end|>", "<|user|>")),
    "zephyr": _chatml_like("<|", "|>\n", "{eos}\n", stop=("{eos}", "<|user|>")),
    "falcon3": _chatml_like("<|", "|>\n", "\n", stop=("<|user|>",)),
    "granite": dict(_chatml_like("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>\n"),
                    stop=("<|end_of_text|>", "<|start_of_role|>")),
    "llama3": dict(_chatml_like("<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>"),
                   stop=("<|eot_id|>", "<|start_header_id|>"), bos=True, trim=_ALL),
    # Microsoft's card: "Instruct: {prompt}\nOutput:"; earlier turns keep that shape.
    "phi2": dict(system="{content}\n", user="Instruct: {content}\n", assistant="Output: {content}\n",
                 generation="Output:", stop=("Instruct:", "<|endoftext|>")),
    "gemma": dict(system="{content}\n\n", user="<start_of_turn>user\n{content}<end_of_turn>\n",
                  assistant="<start_of_turn>model\n{content}<end_of_turn>\n", generation="<start_of_turn>model\n",
                  stop=("<end_of_turn>", "<start_of_turn>"), bos=True, system_in_user=True, trim=_ALL),
    # The [INST] family has no cue of its own: a prompt ends with the user's [/INST].
    "llama2": dict(system="{content}\n", user="[INST] {content} [/INST]", assistant="{content}</s>",
                   generation="", stop=("</s>", "[INST]"), bos=True, system_in_user=True),
    "llama2-sys": dict(system="<<SYS>>\n{content}\n<</SYS>>\n\n", user="[INST] {content} [/INST]",
                       assistant="{content}</s>", generation="", stop=("</s>", "[INST]"), bos=True,
                       system_in_user=True),
    "mistral-v1": dict(system="{content}\n\n", user=" [INST] {content} [/INST]", assistant=" {content}</s>",
                       generation="", stop=("</s>", "[INST]"), bos=True, system_in_user=True),
    "mistral-v3": dict(system="{content}\n\n", user="[INST] {content}[/INST]", assistant=" {content}</s>",
                       generation="", stop=("</s>", "[INST]"), bos=True, system_in_user=True,
                       trim=("assistant",)),
    "mistral-v3-tekken": dict(system="{content}\n\n", user="[INST]{content}[/INST]", assistant="{content}</s>",
                              generation="", stop=("</s>", "[INST]"), bos=True, system_in_user=True),
    "mistral-v7": dict(system="[SYSTEM_PROMPT] {content}[/SYSTEM_PROMPT]", user="[INST] {content}[/INST]",
                       assistant=" {content}</s>", generation="", stop=("</s>", "[INST]"), bos=True),
    "mistral-v7-tekken": dict(system="[SYSTEM_PROMPT]{content}[/SYSTEM_PROMPT]", user="[INST]{content}[/INST]",
                              assistant="{content}</s>", generation="", stop=("</s>", "[INST]"), bos=True),
    "vicuna": dict(system="{content}\n\n", user="USER: {content}\n", assistant="ASSISTANT: {content}</s>\n",
                   generation="ASSISTANT:", stop=("</s>", "USER:")),
    "vicuna-orca": dict(system="SYSTEM: {content}\n", user="USER: {content}\n",
                        assistant="ASSISTANT: {content}</s>\n", generation="ASSISTANT:", stop=("</s>", "USER:")),
    "deepseek": dict(system="{content}", user="### Instruction:\n{content}\n",
                     assistant="### Response:\n{content}\n<|EOT|>\n", generation="### Response:\n",
                     stop=("<|EOT|>", "### Instruction:")),
    "openchat": dict(system="{content}<|end_of_turn|>", user="GPT4 Correct User: {content}<|end_of_turn|>",
                     assistant="GPT4 Correct Assistant: {content}<|end_of_turn|>",
                     generation="GPT4 Correct Assistant:", stop=("<|end_of_turn|>", "GPT4 Correct User:")),
    "command-r": dict(system="<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{content}<|END_OF_TURN_TOKEN|>",
                      user="<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{content}<|END_OF_TURN_TOKEN|>",
                      assistant="<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{content}<|END_OF_TURN_TOKEN|>",
                      generation="<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
                      stop=("<|END_OF_TURN_TOKEN|>", "<|START_OF_TURN_TOKEN|>"), trim=_ALL),
}
# llama.cpp reads the bare name "mistral" as its Llama 2 format; so does Mistral 7B
# Instruct v0.1's own template (no system turn, no space before the reply).
_SPECS["mistral"] = _SPECS["llama2"]
_SPECS["llama2-sys-strip"] = dict(_SPECS["llama2-sys"], trim=_ALL)

FORMATS: dict[str, PromptFormat] = {name: PromptFormat(name=name, **spec) for name, spec in _SPECS.items()}
ALIASES = {"phi-2": "phi2", "phi-3": "phi3", "phi-4": "phi4", "llama-3": "llama3", "gemma2": "gemma",
           "gemma3": "gemma", "qwen": "chatml", "qwen2": "chatml"}
NONE = "none"  # --format none: no chat format, plain completion


def names() -> list[str]:
    return sorted(FORMATS)


def get_format(name: str) -> PromptFormat:
    """The named format (case-insensitive, a few aliases); a clear error listing the rest."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key in FORMATS:
        return FORMATS[key]
    close = difflib.get_close_matches(key, names(), n=2, cutoff=0.6)
    hint = f"Did you mean {' or '.join(close)}? " if close else ""
    raise UnknownPromptFormatError(f"unknown prompt format {name!r}",
                                   hint=f"{hint}Known formats: {', '.join(names())} (or 'none' for plain completion).")


# --- inference for GGUFs without a chat template ----------------------------------------

# Special tokens that only one family's chat format uses, most specific first.
_VOCAB_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("<|im_start|>", "<|im_end|>", "<|im_sep|>"), "phi4"),
    (("<|im_start|>", "<|im_end|>"), "chatml"),
    (("<start_of_turn>", "<end_of_turn>"), "gemma"),
    (("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "llama3"),
    (("[SYSTEM_PROMPT]", "[INST]", "[/INST]"), "mistral-v7"),
    (("[INST]", "[/INST]"), "mistral-v3"),  # v0.3's control tokens; v0.1/0.2 spell [INST] in text
    (("<|user|>", "<|assistant|>", "<|end|>"), "phi3"),
    (("<|user|>", "<|assistant|>"), "zephyr"),
    (("<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>"), "command-r"),
    (("<|start_of_role|>", "<|end_of_role|>"), "granite"),
    (("<|end_of_turn|>",), "openchat"),
    (("<|EOT|>",), "deepseek"),
)
_TEKKEN = {"mistral-v3": "mistral-v3-tekken", "mistral-v7": "mistral-v7-tekken"}
_ARCH_RULES = {"phi2": "phi2", "phi3": "phi3", "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma",
               "qwen": "chatml", "qwen2": "chatml", "qwen3": "chatml", "command-r": "command-r",
               "granite": "granite"}
# Words in general.name or the file name (lower case, '-' for spaces): first match wins.
_NAME_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("tinyllama",), "zephyr"),  # TinyLlama Chat v1.0 was trained on Zephyr's format
    (("zephyr",), "zephyr"),
    (("llama-2", "chat"), "llama2-sys"),
    (("llama2", "chat"), "llama2-sys"),
    (("mistral", "instruct"), "mistral"),
    (("vicuna",), "vicuna"),
    (("openchat",), "openchat"),
    (("deepseek-coder", "instruct"), "deepseek"),
    (("phi-2",), "phi2"),
    (("phi-3",), "phi3"),
    (("gemma",), "gemma"),
    (("qwen",), "chatml"),
    (("smollm",), "chatml"),
    (("falcon3",), "falcon3"),
    (("granite",), "granite"),
)


def infer_format(special_tokens, *, architecture: str = "", names: tuple[str, ...] = (),
                 tokenizer_pre: str = "") -> tuple[str, str] | None:
    """(format name, why) from what a GGUF says about itself, or None when nothing fits.

    The vocabulary's special tokens are the strongest sign (a model can only have been
    trained on turn markers it has tokens for), then the architecture, then the name.
    """
    vocab = set(special_tokens)
    for needed, fmt in _VOCAB_RULES:
        if all(t in vocab for t in needed):
            if tokenizer_pre == "tekken":
                fmt = _TEKKEN.get(fmt, fmt)
            return fmt, f"its vocabulary has the special tokens {' '.join(needed)}"
    arch = (architecture or "").lower()
    if arch in _ARCH_RULES:
        return _ARCH_RULES[arch], f"its architecture is {arch}"
    for name in names:
        words = str(name or "").lower().replace(" ", "-").replace("_", "-")
        for needed, fmt in _NAME_RULES:
            if all(w in words for w in needed):
                return fmt, f"its name {name!r} says {' '.join(needed)}"
    return None


# --- the choice for one model ------------------------------------------------------------

@dataclass(frozen=True)
class FormatChoice:
    """What a loaded model chats with, and why: for load() and for `slmrun show`."""

    template: str | None  # the GGUF's own chat template (rendered in the sandbox), or
    fmt: PromptFormat | None  # a prompt format, or neither: plain completion
    source: str  # "--format", "modelfile", "import", "gguf", "registry", "inferred" or "none"
    reason: str = ""  # for "inferred": what it was inferred from

    def describe(self) -> str:
        what = "the GGUF's chat template" if self.template else (self.fmt.shape() if self.fmt else "none")
        return {
            "--format": f"{what} (chosen with --format)",
            "modelfile": f"{what} (from the Modelfile)",
            "import": f"{what} (recorded at import with --format)",
            "gguf": what,
            "registry": f"{what} (from the registry)",
            "inferred": f"{what} (inferred: {self.reason})",
        }.get(self.source, "none: no chat template and no format fits, so chat is plain completion")


def choose_chat_format(info, entry, stored_meta: dict | None, override: str | None, *,
                       modelfile: str | None = None) -> FormatChoice:
    """The chat format of a model, first match wins:

    ``--format`` > a created model's FORMAT (or the TEMPLATE recognised as one: ``modelfile``)
    > the format recorded by ``import --format`` > the GGUF's own chat
    template > the registry's prompt_format > one inferred from the GGUF's vocabulary,
    architecture and name > none (chat falls back to plain completion).

    ``info`` is a GGUFInfo (or None when the file is not here), ``entry`` a registry
    ModelEntry or None, ``stored_meta`` the store's sidecar dict, ``override`` a name.
    Explicit choices beat the file's template: the user may be replacing a broken one.
    """
    for source, name in (("--format", override), ("modelfile", modelfile),
                         ("import", (stored_meta or {}).get("prompt_format"))):
        if name:
            if str(name).strip().lower() == NONE:
                return FormatChoice(None, None, source)
            try:
                return FormatChoice(None, get_format(name), source)
            except UnknownPromptFormatError as exc:
                if source == "import":
                    exc.message = f"the store records an unknown prompt format {name!r} for this model"
                    exc.args = (exc.message,)
                    exc.hint = "Import it again with --format NAME. " + exc.hint
                raise
    template = getattr(info, "chat_template", None)
    if template:
        return FormatChoice(template, None, "gguf")
    if entry is not None and entry.prompt_format is not None:
        return FormatChoice(None, entry.prompt_format, "registry")
    if info is not None:
        guess = infer_format(info.special_tokens, architecture=info.architecture,
                             names=tuple(dict.fromkeys((info.name, info.path.stem))),
                             tokenizer_pre=str(info.metadata.get("tokenizer.ggml.pre") or ""))
        if guess:
            return FormatChoice(None, FORMATS[guess[0]], "inferred", guess[1])
    return FormatChoice(None, None, "none")
