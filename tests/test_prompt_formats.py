"""Named prompt formats: llama.cpp's own text, the registry's, inference, the choice for a model."""

from __future__ import annotations

import ctypes

import pytest

from slmrun.errors import RegistryError, UnknownPromptFormatError
from slmrun.prompt_formats import (FORMATS, choose_chat_format, get_format, infer_format, names, render,
                                   stop_strings)
from slmrun.registry import load_registry, parse_text

from tinymodels import VOCAB_STYLES, write_tiny_gguf

SYS = {"role": "system", "content": "Be brief."}
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [SYS, {"role": "user", "content": "What is 2+2?"}],
    [SYS, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "2+2?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}],
    # White space round the content (some formats trim it) and text that looks like a placeholder.
    [{"role": "system", "content": "  Answer in {content} form.\n"},
     {"role": "user", "content": "\n  say {eos} and {bos}  \t"},
     {"role": "assistant", "content": " ok \n"}, {"role": "user", "content": "más ✓"}],
]
# llama.cpp writes StableLM-Zephyr's EOS literally; slmrun writes the model's own ({eos}).
LLAMA_CPP_EOS = {"zephyr": "<|endoftext|>"}
# Formats slmrun has that llama.cpp's built-in set does not.
SLMRUN_ONLY = {"phi2"}


def llama_cpp_apply(name: str, messages: list[dict], add_generation_prompt: bool) -> str | None:
    """llama.cpp's rendering with a built-in template name (None: it does not know the name)."""
    import llama_cpp

    chat = (llama_cpp.llama_chat_message * len(messages))()
    keep = []
    for i, m in enumerate(messages):
        role, content = m["role"].encode(), m["content"].encode()
        keep += [role, content]
        chat[i].role, chat[i].content = role, content
    n = llama_cpp.llama_chat_apply_template(name.encode(), chat, len(messages), add_generation_prompt, None, 0)
    if n < 0:
        return None
    buf = ctypes.create_string_buffer(n + 1)
    llama_cpp.llama_chat_apply_template(name.encode(), chat, len(messages), add_generation_prompt, buf, n + 1)
    return buf.raw[:n].decode("utf-8")


def test_every_format_llama_cpp_knows_renders_exactly_as_llama_cpp():
    unknown_to_llama_cpp = set()
    compared = 0
    for name in names():
        fmt = FORMATS[name]
        for conversation in CONVERSATIONS:
            for add in (True, False):
                want = llama_cpp_apply(name, conversation, add)
                if want is None:
                    unknown_to_llama_cpp.add(name)
                    continue
                got = render(fmt, conversation, eos=LLAMA_CPP_EOS.get(name, ""), add_generation_prompt=add)
                assert got == want, (name, conversation, add)
                compared += 1
    assert unknown_to_llama_cpp == SLMRUN_ONLY
    assert compared == (len(names()) - len(SLMRUN_ONLY)) * len(CONVERSATIONS) * 2
    assert {"chatml", "zephyr", "llama2", "llama3", "mistral", "gemma", "phi2", "phi3"} <= set(names())


def test_the_registry_tables_are_the_named_formats():
    """The registry spells out its models' formats; each is a named one (stops aside)."""
    reg = load_registry()
    same = {"smollm2-135m": ("chatml", ""), "tinyllama": ("zephyr", "</s>"), "phi-2": ("phi2", "")}
    for model, (name, eos) in same.items():
        table = reg.get(model).prompt_format
        for conversation in CONVERSATIONS[:4]:
            for add in (True, False):
                assert render(table, conversation, add_generation_prompt=add) == \
                    render(get_format(name), conversation, eos=eos, add_generation_prompt=add), model
    assert stop_strings(get_format("phi2")) == reg.get("phi-2").prompt_format.stop
    # Llama 3.2's table only lacks llama.cpp's trimming of each message.
    table = reg.get("llama3.2-1b").prompt_format
    assert render(table, CONVERSATIONS[2]) == render(get_format("llama3"), CONVERSATIONS[2])


def test_zephyr_ends_turns_with_the_models_own_eos():
    msgs = CONVERSATIONS[1]
    tinyllama = "<|system|>\nBe brief.</s>\n<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n"
    assert render(get_format("zephyr"), msgs, eos="</s>") == tinyllama
    assert stop_strings(get_format("zephyr"), eos="</s>") == ("</s>", "<|user|>")
    assert stop_strings(get_format("zephyr")) == ("<|user|>",)  # no EOS known: no empty stop string


def test_bos_is_written_by_the_formats_whose_templates_start_with_it():
    msgs = CONVERSATIONS[0]
    for name in ("gemma", "llama2", "llama3", "mistral", "mistral-v7"):
        assert FORMATS[name].bos and render(FORMATS[name], msgs, bos="<s>").startswith("<s>"), name
        assert render(FORMATS[name], msgs, bos="<s>").count("<s>") == 1
    for name in ("chatml", "zephyr", "phi2", "phi3"):
        assert not FORMATS[name].bos and not render(FORMATS[name], msgs, bos="<s>").startswith("<s>"), name
    # The generation cue for each turn-taking family, and none for the [INST] family.
    cues = {"chatml": "<|im_start|>assistant\n", "gemma": "<start_of_turn>model\n", "phi2": "Output:",
            "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n", "phi3": "<|assistant|>\n",
            "mistral": " [/INST]"}
    for name, cue in cues.items():
        assert render(FORMATS[name], msgs).endswith(cue), name


def test_phi2_is_the_model_cards_instruct_output():
    q = [{"role": "user", "content": "What is 2+2?"}]
    assert render(get_format("phi2"), q) == "Instruct: What is 2+2?\nOutput:"
    assert render(get_format("PHI-2"), q) == render(get_format("phi2"), q)  # case and an alias


def test_unknown_format_names_list_the_known_ones():
    with pytest.raises(UnknownPromptFormatError) as exc:
        get_format("chatmll")
    assert "unknown prompt format 'chatmll'" in exc.value.message
    assert "Did you mean chatml" in exc.value.hint
    for name in ("gemma", "llama3", "phi2", "zephyr", "none"):
        assert name in exc.value.hint
    assert isinstance(exc.value, ValueError)


REGISTRY_HEAD = """
[models.x]
description = "d"
license = "MIT"
architecture = "llama"
n_params = 1000
block_count = 2
embedding_length = 64
feed_forward_length = 128
head_count = 4
head_count_kv = 2
context_length = 512
vocab_size = 300
{line}

[[models.x.files]]
quant = "F32"
repo = "a/b"
filename = "x.gguf"
"""


def test_the_registry_may_name_a_format():
    entry = parse_text(REGISTRY_HEAD.format(line='prompt_format = "gemma"'), "test.toml")["x"]
    assert entry.prompt_format is FORMATS["gemma"]
    with pytest.raises(RegistryError) as exc:
        parse_text(REGISTRY_HEAD.format(line='prompt_format = "gemmma"'), "test.toml")
    assert "[models.x] prompt_format" in exc.value.message and "unknown prompt format 'gemmma'" in exc.value.message
    assert "Known formats:" in exc.value.hint and "chatml" in exc.value.hint


@pytest.mark.parametrize("specials, arch, name, pre, expected", [
    (("<|im_start|>", "<|im_end|>"), "llama", "SmolLM2 135M Instruct", "", "chatml"),
    (("<|im_start|>", "<|im_end|>", "<|im_sep|>"), "phi3", "phi-4", "", "phi4"),
    (("<bos>", "<start_of_turn>", "<end_of_turn>"), "gemma2", "x", "", "gemma"),
    (("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "llama", "x", "", "llama3"),
    (("[INST]", "[/INST]"), "llama", "x", "", "mistral-v3"),
    (("[INST]", "[/INST]", "[SYSTEM_PROMPT]"), "llama", "x", "tekken", "mistral-v7-tekken"),
    (("<|user|>", "<|assistant|>", "<|end|>", "<|system|>"), "phi3", "x", "", "phi3"),
    (("<|user|>", "<|assistant|>"), "stablelm", "x", "", "zephyr"),
    (("<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>"), "command-r", "x", "", "command-r"),
    (("<|endoftext|>",), "phi2", "Phi2", "", "phi2"),  # Phi-2: no turn markers, its architecture
    (("<bos>",), "gemma3", "x", "", "gemma"),
    (("<s>", "</s>"), "llama", "TinyLlama 1.1B Chat v1.0", "", "zephyr"),  # Llama 2's vocab: the name
    (("<s>", "</s>"), "llama", "Llama 2 7B Chat", "", "llama2-sys"),
    (("<s>", "</s>"), "llama", "Mistral 7B Instruct v0.2", "", "mistral"),
    (("<s>", "</s>"), "llama", "my_finetune", "", None),  # nothing fits: plain completion
    ((), "gpt2", "", "", None),
])
def test_inference_from_the_models_own_metadata(specials, arch, name, pre, expected):
    guess = infer_format(specials, architecture=arch, names=(name,), tokenizer_pre=pre)
    if expected is None:
        assert guess is None
        return
    fmt, why = guess
    assert fmt == expected and fmt in FORMATS
    assert why.startswith("its ")
    if specials and any(t in why for t in specials):
        assert "vocabulary" in why


@pytest.fixture(scope="module")
def styled(tmp_path_factory):
    """A tiny GGUF per vocabulary style, without a template; and one chatml-style with."""
    d = tmp_path_factory.mktemp("styled")
    out = {style: write_tiny_gguf(d / f"{style}.gguf", chat_template=None, vocab_style=style, seed=i)
           for i, style in enumerate(VOCAB_STYLES)}
    out["gemma+template"] = write_tiny_gguf(d / "gemma-t.gguf", vocab_style="gemma", seed=9)
    return out


EXPECTED_STYLE = {"chatml": "chatml", "gemma": "gemma", "llama3": "llama3", "mistral": "mistral-v3",
                  "zephyr": "zephyr", "phi3": "phi3", "plain": None}


def test_special_tokens_are_read_from_each_vocabulary(styled):
    from slmrun.gguf_info import read_info

    for style, specials in VOCAB_STYLES.items():
        info = read_info(styled[style])
        assert info.special_tokens == ("<s>", "</s>", *specials), style  # <unk> is UNKNOWN, not special


def test_special_tokens_far_into_a_long_vocabulary(tmp_path):
    """Special tokens spread over a vocabulary of several read strides, checked against gguf's reader."""
    import gguf

    from slmrun.gguf_info import read_info

    extra = []
    for i in range(1400):
        special = i in (0, 255, 256, 257, 700, 1399) or 900 <= i < 905
        extra.append((f"<|sp{i}|>" if special else f"▁w{i}", 3 if special else 1))
    path = write_tiny_gguf(tmp_path / "long.gguf", chat_template=None, extra_tokens=tuple(extra))
    info = read_info(path)
    reader = gguf.GGUFReader(path)
    toks, kinds = reader.fields["tokenizer.ggml.tokens"], reader.fields["tokenizer.ggml.token_type"]
    want = tuple(bytes(toks.parts[i]).decode() for i, k in zip(toks.data, kinds.data)
                 if int(kinds.parts[k][0]) in (3, 4))
    assert info.special_tokens == want and len(want) == 2 + 11


def test_choose_chat_format_first_match_wins(styled):
    from slmrun.gguf_info import read_info

    plain_gemma, templated = read_info(styled["gemma"]), read_info(styled["gemma+template"])
    entry = parse_text(REGISTRY_HEAD.format(line='prompt_format = "phi3"'), "t.toml")["x"]
    table = [  # (info, entry, stored meta, --format) -> (source, format name or None)
        (templated, entry, {"prompt_format": "llama3"}, "chatml", "--format", "chatml"),
        (templated, entry, {"prompt_format": "llama3"}, "none", "--format", None),
        (templated, entry, {"prompt_format": "llama3"}, None, "import", "llama3"),
        (templated, entry, {}, None, "gguf", None),
        (plain_gemma, entry, {}, None, "registry", "phi3"),
        (plain_gemma, None, {}, None, "inferred", "gemma"),
        (read_info(styled["plain"]), None, {}, None, "none", None),
        (None, entry, {}, None, "registry", "phi3"),  # a registry model not downloaded yet
    ]
    for info, e, meta, override, source, fmt in table:
        choice = choose_chat_format(info, e, meta, override)
        assert (choice.source, choice.fmt.name if choice.fmt else None) == (source, fmt)
        assert bool(choice.template) == (source == "gguf")
    inferred = choose_chat_format(plain_gemma, None, {}, None)
    assert inferred.describe() == ("gemma (inferred: its vocabulary has the special tokens "
                                   "<start_of_turn> <end_of_turn>)")
    assert "plain completion" in choose_chat_format(read_info(styled["plain"]), None, {}, None).describe()


def test_an_unknown_recorded_format_says_how_to_fix_it(styled):
    from slmrun.gguf_info import read_info

    with pytest.raises(UnknownPromptFormatError) as exc:
        choose_chat_format(read_info(styled["plain"]), None, {"prompt_format": "bogus"}, None)
    assert "the store records an unknown prompt format 'bogus'" in exc.value.message
    assert exc.value.hint.startswith("Import it again with --format NAME.")
    with pytest.raises(UnknownPromptFormatError, match="unknown prompt format 'bogus'"):
        choose_chat_format(None, None, {}, "bogus")
