"""The runtime on tiny random-weight models loaded by the real llama.cpp.

The tiny models' control tokens have zero output rows (tinymodels.py), so greedy
decoding never picks end-of-text: at temperature 0 a reply is always max_tokens long.
"""

from __future__ import annotations

import pytest

import slmrun
from slmrun.errors import ChatFormatError, ContextOverflowError, InvalidArgumentError
from slmrun.runtime import Completion, Stats


@pytest.fixture(scope="module")
def model(tiny_llama):
    with slmrun.load(tiny_llama, n_ctx=256, n_threads=1) as m:
        yield m


def test_load_applies_fast_defaults(tiny_llama):
    with slmrun.load(tiny_llama) as m:
        o = m.options
        assert o.flash_attn is True and o.use_mmap is True
        assert o.n_threads >= 1 and o.n_threads_batch == o.n_threads
        assert m.n_ctx == 512  # the tiny model's own context (below the automatic cap)
        assert m.info.architecture == "llama"


def test_complete_returns_text_reason_and_stats(model):
    c = model.complete("the world is", max_tokens=8, temperature=0)
    assert isinstance(c, Completion) and isinstance(c.stats, Stats)
    assert c.finish_reason == "length"
    s = c.stats
    assert s.prompt_tokens == len(model.tokenize("the world is", special=False))
    assert s.generated_tokens == 8
    assert s.load_s > 0 and s.ttft_s > 0 and s.prompt_tps > 0 and s.gen_tps > 0
    assert set(Stats().to_dict()) >= {"prompt_tokens", "generated_tokens", "load_s", "prompt_tps", "gen_tps", "ttft_s"}


def test_max_tokens_gives_length(model):
    c = model.complete("hello", max_tokens=1, temperature=0)
    assert c.stats.generated_tokens == 1 and c.finish_reason == "length"


def test_stream_yields_the_same_text_as_complete(model):
    full = model.complete("the a is", max_tokens=12, temperature=0).text
    pieces = list(model.stream("the a is", max_tokens=12, temperature=0))
    assert "".join(pieces) == full
    assert len(pieces) >= 1


def test_seed_makes_sampling_repeatable(model):
    a = model.complete("hello world", max_tokens=16, temperature=1.0, seed=42).text
    b = model.complete("hello world", max_tokens=16, temperature=1.0, seed=42).text
    c = [model.complete("hello world", max_tokens=16, temperature=1.5, seed=s).text for s in (1, 2, 3, 4)]
    assert a == b
    assert len(set(c)) > 1  # different seeds explore different continuations


def test_stop_strings_end_the_text(model):
    text = model.complete("the", max_tokens=40, temperature=0).text
    assert len(text) >= 4
    stop = text[2:4]
    cut = model.complete("the", max_tokens=40, temperature=0, stop=[stop])
    assert cut.text == text[:text.find(stop)]
    assert cut.finish_reason == "stop"


def test_chat_uses_the_gguf_template(model):
    msgs = [{"role": "user", "content": "hello"}]
    tokens = model.chat_tokens(msgs)
    rendered = model.detokenize(tokens)
    # The template's special tokens are parsed as single tokens, not spelled out.
    assert rendered.count("<|im_start|>") == 2 and "hello<|im_end|>" in rendered
    assert tokens.count(m_special := model.tokenize("<|im_start|>", add_bos=False)[0]) == 2 and m_special == 3
    c = model.chat(msgs, max_tokens=4, temperature=0)
    assert isinstance(c, Completion) and c.stats.generated_tokens == 4
    assert "".join(model.chat(msgs, stream=True, max_tokens=4, temperature=0)) == c.text


def test_chat_without_any_format_is_a_clear_error(tiny_llama_plain):
    with slmrun.load(tiny_llama_plain, n_ctx=128) as m:
        with pytest.raises(ChatFormatError, match="no chat template"):
            m.chat([{"role": "user", "content": "hi"}])
        assert m.complete("hello", max_tokens=2).stats.prompt_tokens > 0  # plain completion still works


def test_phi2_architecture_loads_and_generates(tiny_phi2):
    with slmrun.load(tiny_phi2, n_ctx=128, n_threads=1) as m:
        assert m.info.architecture == "phi2"
        c = m.complete("what is", max_tokens=4, temperature=0)
        assert c.stats.prompt_tokens > 0


def test_prompt_longer_than_context_is_refused(tiny_llama):
    with slmrun.load(tiny_llama, n_ctx=32, n_threads=1) as m:
        # llama.cpp rounds the context up to a multiple of 256
        with pytest.raises(ContextOverflowError, match=f"context holds {m.n_ctx}"):
            m.complete("hello world " * m.n_ctx)


def test_generation_never_runs_past_the_context(tiny_llama):
    with slmrun.load(tiny_llama, n_ctx=32, n_threads=1) as m:
        n_prompt = len(m.tokenize("hello world", special=False))
        c = m.complete("hello world", max_tokens=1000, temperature=1.0, seed=1)
        assert c.stats.generated_tokens <= m.n_ctx - n_prompt
        assert c.finish_reason == "length" or c.stats.generated_tokens < m.n_ctx - n_prompt


@pytest.mark.parametrize("kwargs, match", [
    ({"max_tokens": -1}, "max_tokens"),
    ({"temperature": -0.5}, "temperature"),
])
def test_bad_sampling_arguments(model, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        model.complete("hello", **kwargs)


def test_bad_load_arguments(tiny_llama):
    import os
    with pytest.raises(InvalidArgumentError, match="logical cores"):
        slmrun.load(tiny_llama, n_threads=(os.cpu_count() or 1) + 1)
    with pytest.raises(InvalidArgumentError, match="too small"):
        slmrun.load(tiny_llama, n_ctx=4)


def test_close_and_context_manager(tiny_llama):
    m = slmrun.load(tiny_llama, n_ctx=64)
    with m:
        m.complete("hi", max_tokens=1)
    with pytest.raises(InvalidArgumentError, match="closed"):
        m.complete("hi", max_tokens=1)
    m.close()  # closing twice is harmless


def test_follow_up_turn_evaluates_only_new_tokens(tiny_llama):
    """The KV cache of the conversation so far is reused (from llama.cpp's own counters)."""
    from slmrun.chat import ChatSession

    with slmrun.load(tiny_llama, n_ctx=512, n_threads=1) as m:
        s = ChatSession(m, temperature=0, max_tokens=8)
        list(s.send("hello world"))
        first = s.last.stats
        assert first.cached_tokens == 0
        list(s.send("what is the"))
        second = s.last.stats
        prompt = m.chat_tokens(s.conversation.messages()[:-1])
        assert second.prompt_tokens == len(prompt)
        # Only the text after the previous turn is evaluated; the rest comes from the cache.
        assert second.cached_tokens >= first.prompt_tokens
        assert second.prompt_eval_tokens <= second.prompt_tokens - first.prompt_tokens + 1


def test_llama_log_is_silent_by_default(tiny_llama, capfd):
    with slmrun.load(tiny_llama, n_ctx=64) as m:
        m.complete("hi", max_tokens=2)
    err = capfd.readouterr().err
    assert "llama_model_loader" not in err and "llama_context" not in err


def test_llama_log_on_request(tiny_llama, capfd):
    with slmrun.load(tiny_llama, n_ctx=64, verbose=True) as m:
        m.complete("hi", max_tokens=1)
    assert "llama" in capfd.readouterr().err
    slmrun.runtime.set_llama_log(False)


def test_load_refuses_a_model_that_cannot_fit(tiny_llama, monkeypatch):
    from slmrun import hardware
    from slmrun.errors import InsufficientMemoryError

    small = hardware.custom(ram=200 * 2**20, cores=2, arch="x86_64")  # budget: nothing after the reserve
    monkeypatch.setattr(hardware, "detect", lambda **kw: small)
    with pytest.raises(InsufficientMemoryError, match="needs about") as exc:
        slmrun.load(tiny_llama, n_ctx=128)
    assert "--force" in exc.value.hint and "slmrun plan" in exc.value.hint
    with slmrun.load(tiny_llama, n_ctx=128, force=True) as m:
        assert m.complete("hi", max_tokens=1).stats.prompt_tokens > 0


def test_flash_attention_follows_the_environment(tiny_llama, monkeypatch):
    monkeypatch.setenv("SLMRUN_FLASH_ATTN", "off")
    with slmrun.load(tiny_llama, n_ctx=64) as m:
        assert m.options.flash_attn is False
    with slmrun.load(tiny_llama, n_ctx=64, flash_attn=True) as m:  # an explicit argument wins
        assert m.options.flash_attn is True
    with pytest.raises(InvalidArgumentError, match="needs flash attention"):
        slmrun.load(tiny_llama, n_ctx=64, type_v="q8_0", flash_attn=False)
