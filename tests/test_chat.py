"""Prompt formats (exact text), conversation state, context trimming, and the chat loop."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

import slmrun
from slmrun.chat import ChatSession, Conversation, fit_history, render_format, render_prompt, render_template
from slmrun.errors import ChatFormatError, InvalidArgumentError
from slmrun.registry import load_registry

from conftest import paced, slmrun_cmd

Q = [{"role": "user", "content": "What is 2+2?"}]


def test_phi2_format_is_the_model_cards():
    fmt = load_registry().get("phi-2").prompt_format
    assert render_format(fmt, Q) == "Instruct: What is 2+2?\nOutput:"
    two = Q + [{"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]
    assert render_format(fmt, two) == "Instruct: What is 2+2?\nOutput: 4\nInstruct: And 3+3?\nOutput:"
    assert "Instruct:" in fmt.stop


def test_tinyllama_zephyr_format():
    fmt = load_registry().get("tinyllama").prompt_format
    msgs = [{"role": "system", "content": "Be brief."}] + Q
    assert render_format(fmt, msgs) == "<|system|>\nBe brief.</s>\n<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n"


def test_every_registry_model_has_a_format_or_a_template():
    """Every generative one; an embedding model does not chat (test_registry_data checks it has neither)."""
    for entry in load_registry().models.values():
        if entry.embedding_model:
            continue
        assert entry.prompt_format is not None or entry.has_chat_template, entry.name
        if entry.prompt_format:
            text = render_format(entry.prompt_format, Q)
            assert "What is 2+2?" in text and text.endswith(entry.prompt_format.generation)


def test_gguf_template_wins_and_renders_in_a_sandbox(tiny_llama):
    from slmrun.gguf_info import read_info
    template = read_info(tiny_llama).chat_template
    assert render_template(template, Q) == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    fmt = load_registry().get("phi-2").prompt_format
    text, _ = render_prompt(Q, template=template, fmt=fmt)
    assert text.startswith("<|im_start|>")  # the GGUF's own template, not the registry's


def test_hostile_template_is_stopped_by_the_sandbox():
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatFormatError, match="unsafe|failed"):
        render_template(evil, Q)
    with pytest.raises(ChatFormatError, match="does not compile"):
        render_template("{% for %}", Q)


def test_no_format_at_all_is_an_error_not_a_fallback():
    with pytest.raises(ChatFormatError):
        render_prompt(Q, template=None, fmt=None)


@pytest.mark.parametrize("bad", [[], [{"role": "robot", "content": "x"}], [{"role": "user"}], "hi"])
def test_bad_messages(bad):
    with pytest.raises(InvalidArgumentError):
        render_prompt(bad, template=None, fmt=load_registry().get("phi-2").prompt_format)


def test_fit_history_drops_oldest_exchanges_and_keeps_the_system_prompt():
    msgs = [{"role": "system", "content": "S"}]
    for i in range(5):
        msgs += [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"a{i}"}]
    msgs.append({"role": "user", "content": "now"})
    count = lambda ms: 10 * len(ms)  # noqa: E731  (10 tokens a message)
    kept, dropped = fit_history(msgs, count, n_ctx=70, reserve=20)
    assert kept[0]["content"] == "S" and kept[-1]["content"] == "now"
    assert count(kept) + 20 <= 70 and dropped == 8
    assert [m["role"] for m in kept[1:]] == ["user", "assistant", "user"]
    assert fit_history(msgs, count, n_ctx=10_000, reserve=20) == (msgs, 0)


def test_fit_history_in_quanta_keeps_the_same_cut_for_turns_so_the_cache_serves_them():
    n_ctx, reserve = 400, 40
    count = lambda ms: sum(len(m["content"]) // 4 + 4 for m in ms)  # noqa: E731  (~tokens, as rendered)
    history = [{"role": "system", "content": "S" * 40}]
    cuts, prefixes = [], []
    for turn in range(60):
        history.append({"role": "user", "content": f"question {turn}: " + "q" * 30})
        kept, dropped = fit_history(history, count, n_ctx=n_ctx, reserve=reserve, quantum=n_ctx // 4)
        one_by_one, least = fit_history(history, count, n_ctx=n_ctx, reserve=reserve)
        assert count(kept) + reserve <= n_ctx and kept[0] == history[0] and kept[-1] == history[-1]
        assert least <= dropped <= least + 2 * 6  # a quantum (100 tokens) is ~3 exchanges of ~30 tokens
        cuts.append(dropped)
        prefixes.append(kept[:2])
        history.append({"role": "assistant", "content": f"answer {turn}: " + "a" * 30})
    trimmed = [c for c in cuts if c]
    assert len(trimmed) > 30
    changes = sum(a != b for a, b in zip(trimmed, trimmed[1:]))
    # One message at a time would move the cut every turn; in quanta it moves every few turns,
    # and between moves the kept prompt starts the same (the slot's KV cache covers it).
    assert changes <= len(trimmed) // 2
    assert sum(a == b for a, b in zip(prefixes, prefixes[1:])) >= len(prefixes) // 2


def test_conversation_json_round_trip(tmp_path):
    c = Conversation("S", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    again = Conversation.from_json(json.loads(json.dumps(c.to_json())))
    assert again.messages() == c.messages()
    with pytest.raises(InvalidArgumentError):
        Conversation.from_json({"messages": [{"role": "x"}]})


def test_long_conversation_trims_instead_of_crashing(tiny_llama):
    with slmrun.load(tiny_llama, n_ctx=256, n_threads=1) as m:
        s = ChatSession(m, system="be brief", temperature=0, max_tokens=24)
        for i in range(12):
            list(s.send("hello world what is the a of the " * 2))
        assert s.dropped_total > 0
        assert s.conversation.system == "be brief"
        assert len(m.chat_tokens(s.conversation.messages())) <= m.n_ctx


def test_partial_reply_is_kept_when_the_reader_stops(tiny_llama):
    with slmrun.load(tiny_llama, n_ctx=256, n_threads=1) as m:
        s = ChatSession(m, temperature=0, max_tokens=50)
        with paced(m):
            response = s.send("hello")
            first = next(iter(response))
            response.cancel()  # what Ctrl-C does in the CLI
            response.wait()
        assert response.finish_reason == "cancelled"
        assert s.conversation.turns == [{"role": "user", "content": "hello"},
                                        {"role": "assistant", "content": first}]
        again = s.send("again")  # and the session goes on
        list(again)
        assert len(s.conversation.turns) == 4 and s.conversation.turns[3]["content"] == again.text
        # Per-request stats: the cancelled reply's time is not the next one's (the chat /stats bug).
        st = again.stats
        assert st.prompt_s <= st.ttft_s <= st.total_s
        assert st.prompt_eval_tokens + st.cached_tokens == st.prompt_tokens


def test_piped_chat_answers_each_line(tiny_llama):
    p = subprocess.run([*slmrun_cmd(), "chat", "-m", str(tiny_llama), "-t", "0", "-n", "5"],
                       input="hello\n\nwhat is\n", capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.strip("\n").split("\n")) >= 2  # one reply per non-empty line
    assert ">>>" not in p.stdout and "\x1b[" not in p.stdout  # no prompts, no colours


def test_piped_plain_model_says_so_and_completes(tiny_llama_plain):
    p = subprocess.run([*slmrun_cmd(), "chat", "-m", str(tiny_llama_plain), "-n", "3"],
                       input="hello\n", capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "plain completion" in p.stderr


# --- the chat command's parts -----------------------------------------------------------

def _wrapped(pieces, width):
    from slmrun.cli.output import WordWrap

    out = []
    wrap = WordWrap(out.append, width)
    for piece in pieces:
        wrap.write(piece)
    wrap.close()
    return "".join(out)


@pytest.mark.parametrize("seed", range(40))
def test_streamed_text_wraps_like_textwrap_whatever_the_pieces(seed):
    """Random words (some longer than a line) streamed in random pieces, cut mid-word: the
    same lines textwrap makes of the whole text at once."""
    import random
    import textwrap

    rng = random.Random(seed)
    width = rng.randint(8, 40)
    words = ["".join(rng.choice("abcdefgh,.") for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 50])))
             for _ in range(rng.randint(1, 60))]
    text = " ".join(words)
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 30)))) if len(text) > 1 else []
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert "".join(pieces) == text
    expected = [line.rstrip() for line in textwrap.wrap(text, width, break_on_hyphens=False)]
    assert _wrapped(pieces, width).split("\n") == expected  # (textwrap leaves a trailing space at times)


def test_wrapping_keeps_the_models_newlines_and_indentation():
    text = "Steps:\n  1. open the door\n  2. walk in\n\nDone."
    assert _wrapped([text], 12) == "Steps:\n  1. open\nthe door\n  2. walk in\n\nDone."
    assert _wrapped(["a b"], 80) == "a b"  # short replies are untouched


def test_wrapping_counts_terminal_cells():
    assert _wrapped(["漢字漢字 漢字"], 8) == "漢字漢字\n漢字"  # each character is two cells wide
    assert _wrapped(["ab\tc"], 80) == "ab\tc"


def test_last_dropped_exists_before_the_first_turn(tiny_llama):
    with slmrun.load(tiny_llama, n_ctx=256, n_threads=1) as m:
        s = ChatSession(m)
        assert s.last_dropped == 0 and s.dropped_total == 0


def test_show_works_for_a_plain_text_model(tiny_llama_plain):
    import io

    from slmrun.cli.chat import ChatUI

    with slmrun.load(tiny_llama_plain, n_ctx=256, n_threads=1) as m:
        s = ChatSession(m, temperature=0, max_tokens=3)
        assert s.plain
        err = io.StringIO()
        ui = ChatUI(s, interactive=True, show_stats=False, out=io.StringIO(), err=err)
        ui.reply("hello world")
        assert ui.command("/show")
        used = s.count_tokens(s.conversation.messages())
        assert used > 0 and f"context:  {used} / {m.n_ctx} tokens used" in err.getvalue()


def test_chat_format_error_is_exported():
    assert slmrun.ChatFormatError is ChatFormatError and "ChatFormatError" in slmrun.__all__


# --- the interactive program in a pseudo-terminal ------------------------------------

pexpect = pytest.importorskip("pexpect")


def _spawn(model, tmp_path, *args, columns=80):
    env = dict(os.environ, TERM="dumb", PYTHONUNBUFFERED="1")
    for name in ("COLUMNS", "LINES"):  # the terminal's own size counts
        env.pop(name, None)
    child = pexpect.spawn(slmrun_cmd()[0], [*slmrun_cmd()[1:], "chat", "-m", str(model), *args],
                          env=env, encoding="utf-8", timeout=30, cwd=str(tmp_path), dimensions=(24, columns))
    child.expect("Type /help")
    child.expect(">>> ")
    return child


def test_interactive_session_in_a_pty(tiny_llama, tmp_path):
    child = _spawn(tiny_llama, tmp_path, "-t", "0", "-n", "6")
    child.sendline("hello")
    child.expect(">>> ")
    assert len(child.before.strip()) > 0  # a streamed reply came back
    child.sendline("/set temperature 0.5")
    child.expect("Set temperature to 0.5")
    child.sendline("/set top_k nope")
    child.expect("must be a int")
    child.sendline("/save conv.json")
    child.expect("Saved 2 messages")
    child.sendline("/show")
    child.expect(r"context:\s+\d+ / 512 tokens used")
    child.sendline("/clear")
    child.expect("Cleared")
    child.sendline("/load conv.json")
    child.expect("Loaded 2 messages")
    child.sendline('"""')
    child.sendline("line one")
    child.sendline('line two"""')
    child.expect(">>> ")
    child.sendline("/stats")
    child.expect("Stats on")
    child.sendline("what is")
    child.expect("eval rate:")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    saved = json.loads((tmp_path / "conv.json").read_text())
    assert saved["messages"][0] == {"role": "user", "content": "hello"}


@pytest.mark.real_model
def test_ctrl_c_stops_an_answer_and_ctrl_d_leaves(default_model_in_store, tmp_path):
    # The real model: a long answer takes seconds, so the interrupt lands mid-answer.
    child = _spawn("smollm2-135m", tmp_path, "-n", "4000")
    child.sendline("Write a very long story about a dragon.")
    child.expect(r"dragon\.\r?\n")  # the terminal's echo of the line: it need not have been read yet
    child.expect(r"\w+\W+\w+\W+\w+")  # the answer has started streaming ("One day, the")
    child.sendintr()
    child.expect(r"\(stopped\)")
    child.expect(">>> ")
    child.sendline("/show")
    child.expect("tokens used")
    child.expect(">>> ")  # readline is reading again: a Ctrl-D sent earlier could land before it takes the terminal
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.real_model
def test_a_long_reply_wraps_at_word_boundaries_in_a_terminal(default_model_in_store, tmp_path):
    """In a 40-column terminal every line of the reply fits and no word is cut; in a pipe the
    same reply comes out unwrapped."""
    prompt = "Describe a lighthouse."
    piped = subprocess.run([*slmrun_cmd(), "chat", "-t", "0", "-n", "48"], input=prompt + "\n",
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    reply = piped.stdout.strip()
    assert len(max(reply.splitlines(), key=len)) > 40  # a pipe gets the model's own lines
    child = _spawn("smollm2-135m", tmp_path, "-t", "0", "-n", "48", columns=40)
    child.sendline(prompt)
    child.expect(">>> ", timeout=120)
    lines = [line for line in child.before.replace("\r", "").split("\n")[1:] if line.strip()]  # [0]: the echo
    child.sendeof()
    child.expect(pexpect.EOF)
    assert len(lines) > 2 and max(len(line) for line in lines) <= 40
    assert " ".join(lines).split() == reply.split()  # the same words, none cut in two
