"""The runtime, one request at a time, on tiny random-weight models loaded by the real llama.cpp.

The tiny models' control tokens have zero output rows (tinymodels.py), so greedy
decoding never picks end-of-text: at temperature 0 a reply is always max_tokens long.
"""

from __future__ import annotations

import math

import pytest

import slmrun
from slmrun.errors import ChatFormatError, ContextOverflowError, InvalidArgumentError, ModelClosedError
from slmrun.runtime import Response, Stats


@pytest.fixture(scope="module")
def model(tiny_llama):
    with slmrun.load(tiny_llama, n_ctx=256, n_threads=1, n_parallel=2) as m:
        yield m


def test_load_applies_fast_defaults(tiny_llama):
    with slmrun.load(tiny_llama) as m:
        o = m.options
        assert o.flash_attn is True and o.use_mmap is True
        assert o.n_threads >= 1 and o.n_threads_batch == o.n_threads
        assert m.n_ctx == 512  # the tiny model's own context (below the automatic cap)
        assert m.info.architecture == "llama"
        assert m.n_parallel >= 2  # a tiny model on a 24 GiB machine: several slots fit


def test_complete_returns_a_response_with_text_reason_and_stats(model):
    r = model.complete("the world is", max_tokens=8, temperature=0)
    assert isinstance(r, Response) and isinstance(r.stats, Stats)
    assert r.finish_reason == "length"
    s = r.stats
    assert s.prompt_tokens == len(model.tokenize("the world is", special=False))
    assert s.prompt_eval_tokens + s.cached_tokens == s.prompt_tokens
    assert s.generated_tokens == 8 and len(r.tokens) == 8
    assert s.load_s > 0 and s.ttft_s > 0 and s.prompt_tps > 0 and s.gen_tps > 0 and s.total_s >= s.ttft_s
    assert set(Stats().to_dict()) >= {"prompt_tokens", "generated_tokens", "load_s", "prompt_tps", "gen_tps",
                                      "ttft_s", "queue_s"}
    assert r.text == model.detokenize(r.tokens, special=False)  # the text is what the tokens spell


def test_max_tokens_gives_length(model):
    r = model.complete("hello", max_tokens=1, temperature=0)
    assert r.stats.generated_tokens == 1 and r.finish_reason == "length"


def test_iterating_streams_the_same_text_and_replays(model):
    r = model.complete("the a is", max_tokens=12, temperature=0)
    pieces = list(r)
    assert len(pieces) >= 1 and "".join(pieces) == r.text
    assert list(r) == pieces  # a second reader gets the whole reply again
    assert model.complete("the a is", max_tokens=12, temperature=0).text == r.text  # greedy: repeatable


def test_seed_makes_sampling_repeatable(model):
    a = model.complete("hello world", max_tokens=16, temperature=1.0, seed=42).text
    b = model.complete("hello world", max_tokens=16, temperature=1.0, seed=42).text
    c = [model.complete("hello world", max_tokens=16, temperature=1.5, seed=s).text for s in (1, 2, 3, 4)]
    assert a == b
    assert len(set(c)) > 1  # different seeds explore different continuations


def test_stop_strings_end_the_text(model):
    text = model.complete("the", max_tokens=40, temperature=0).text
    assert len(text) >= 4  # the tiny model writes on (its end-of-text logit is held at 0)
    stop = text[2:4]
    cut = model.complete("the", max_tokens=40, temperature=0, stop=[stop])
    assert cut.text == text[:text.find(stop)]
    assert cut.finish_reason == "stop"
    streamed = "".join(model.complete("the", max_tokens=40, temperature=0, stop=stop))
    assert streamed == cut.text  # no piece of the stop string ever reaches a reader


def test_chat_uses_the_gguf_template(model):
    msgs = [{"role": "user", "content": "hello"}]
    tokens = model.chat_tokens(msgs)
    rendered = model.detokenize(tokens)
    # The template's special tokens are parsed as single tokens, not spelled out.
    assert rendered.count("<|im_start|>") == 2 and "hello<|im_end|>" in rendered
    assert tokens.count(m_special := model.tokenize("<|im_start|>", add_bos=False)[0]) == 2 and m_special == 3
    r = model.chat(msgs, max_tokens=4, temperature=0)
    assert isinstance(r, Response) and r.stats.prompt_tokens == len(tokens) and r.stats.generated_tokens == 4
    assert "".join(r) == r.text


def test_chat_without_any_format_is_a_clear_error(tiny_llama_plain):
    with slmrun.load(tiny_llama_plain, n_ctx=128) as m:
        with pytest.raises(ChatFormatError, match="no chat template"):
            m.chat([{"role": "user", "content": "hi"}])
        assert m.complete("hello", max_tokens=2).stats.prompt_tokens > 0  # plain completion still works


def test_phi2_architecture_loads_and_generates(tiny_phi2):
    with slmrun.load(tiny_phi2, n_ctx=128, n_threads=1) as m:
        assert m.info.architecture == "phi2"
        r = m.complete("what is", max_tokens=4, temperature=0)
        assert r.stats.prompt_tokens > 0 and r.stats.generated_tokens > 0


def test_prompt_longer_than_context_is_refused(tiny_llama):
    with slmrun.load(tiny_llama, n_ctx=32, n_threads=1) as m:
        with pytest.raises(ContextOverflowError, match="context holds 32"):
            m.complete("hello world " * m.n_ctx)
        assert m.complete("hello", max_tokens=2).stats.generated_tokens > 0  # and the model still works


def test_generation_never_runs_past_the_context(tiny_llama):
    with slmrun.load(tiny_llama, n_ctx=32, n_threads=1, n_parallel=2) as m:
        n_prompt = len(m.tokenize("hello world", special=False))
        r = m.complete("hello world", max_tokens=1000, temperature=1.0, seed=1)
        assert r.stats.generated_tokens <= m.n_ctx - n_prompt
        assert r.finish_reason == "length" or r.stats.generated_tokens < m.n_ctx - n_prompt


@pytest.mark.parametrize("kwargs, match", [
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"min_p": -0.1}, "min_p"),
    ({"repeat_penalty": 0}, "repeat_penalty"),
    ({"presence_penalty": 3.0}, "presence_penalty"),
    ({"seed": "x"}, "seed"),
    ({"stop": 5}, "stop"),
    ({"top_logprobs": 30}, "top_logprobs"),
])
def test_bad_sampling_arguments(model, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        model.complete("hello", **kwargs)
    with pytest.raises(TypeError):
        model.complete("hello", no_such_parameter=1)


def test_bad_load_arguments(tiny_llama):
    import os
    with pytest.raises(InvalidArgumentError, match="logical cores"):
        slmrun.load(tiny_llama, n_threads=(os.cpu_count() or 1) + 1)
    with pytest.raises(InvalidArgumentError, match="too small"):
        slmrun.load(tiny_llama, n_ctx=4)
    with pytest.raises(InvalidArgumentError, match="n_parallel"):
        slmrun.load(tiny_llama, n_parallel=0)
    with pytest.raises(InvalidArgumentError, match="max_queue"):
        slmrun.load(tiny_llama, max_queue=-1)


def test_close_and_context_manager(tiny_llama):
    m = slmrun.load(tiny_llama, n_ctx=64)
    with m:
        m.complete("hi", max_tokens=1).wait()
    with pytest.raises(ModelClosedError, match="closed"):
        m.complete("hi", max_tokens=1)
    with pytest.raises(ModelClosedError):
        m.tokenize("hi")
    assert m.closed
    m.close()  # closing twice is harmless


def test_follow_up_turn_evaluates_only_new_tokens(tiny_llama):
    """The KV cache of the conversation so far is reused: the engine's own count of the tokens it evaluated."""
    from slmrun.chat import ChatSession

    with slmrun.load(tiny_llama, n_ctx=512, n_threads=1, n_parallel=2) as m:
        s = ChatSession(m, temperature=0, max_tokens=8)
        s.send("hello world").wait()
        first = s.last.stats
        assert first.cached_tokens == 0
        list(s.send("what is the"))
        second = s.last.stats
        prompt = m.chat_tokens(s.conversation.messages()[:-1])
        assert second.prompt_tokens == len(prompt)
        # Only the text after the previous turn is evaluated; the rest comes from the cache.
        assert second.cached_tokens >= first.prompt_tokens
        assert second.prompt_eval_tokens <= second.prompt_tokens - first.prompt_tokens + 1
        assert second.slot == first.slot  # the slot holding the conversation was chosen


def test_logprobs_in_openais_shape(model):
    r = model.complete("the world", max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    lps = r.logprobs
    assert len(lps) == r.stats.generated_tokens == len(r.tokens)
    for entry, token in zip(lps, r.tokens):
        assert entry["token"] == token and entry["logprob"] <= 0
        top = entry["top_logprobs"]
        assert len(top) == 3 and [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in top) <= 1 + 1e-6
        assert top[0]["token"] == token  # greedy: the chosen token is the likeliest
        assert top[0]["logprob"] == pytest.approx(entry["logprob"])
    assert model.complete("the world", max_tokens=2, temperature=0).logprobs is None  # only when asked


def test_llama_log_is_silent_by_default(tiny_llama, capfd):
    with slmrun.load(tiny_llama, n_ctx=64) as m:
        m.complete("hi", max_tokens=2).wait()
    err = capfd.readouterr().err
    assert "llama_model_loader" not in err and "llama_context" not in err


def test_llama_log_on_request(tiny_llama, capfd):
    with slmrun.load(tiny_llama, n_ctx=64, verbose=True) as m:
        m.complete("hi", max_tokens=1).wait()
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
        assert m.n_parallel == 1  # nothing to spare: one slot
        assert m.complete("hi", max_tokens=1).stats.prompt_tokens > 0


def test_flash_attention_follows_the_environment(tiny_llama, monkeypatch):
    monkeypatch.setenv("SLMRUN_FLASH_ATTN", "off")
    with slmrun.load(tiny_llama, n_ctx=64) as m:
        assert m.options.flash_attn is False
        assert m.complete("hi", max_tokens=2).stats.generated_tokens > 0
    with slmrun.load(tiny_llama, n_ctx=64, flash_attn=True) as m:  # an explicit argument wins
        assert m.options.flash_attn is True
    with pytest.raises(InvalidArgumentError, match="needs flash attention"):
        slmrun.load(tiny_llama, n_ctx=64, type_v="q8_0", flash_attn=False)


def test_ignore_eos_generates_to_max_tokens(tiny_llama):
    with slmrun.load(tiny_llama, n_ctx=128, n_threads=1, n_parallel=1) as m:
        # At a very high temperature the end token is drawn now and then; with ignore_eos never.
        ended = [m.complete("hello", max_tokens=60, temperature=50.0, seed=s, top_k=0, min_p=0.0, top_p=1.0)
                 for s in range(12)]
        assert any(r.finish_reason == "stop" for r in ended)
        kept = [m.complete("hello", max_tokens=60, temperature=50.0, seed=s, top_k=0, min_p=0.0, top_p=1.0,
                           ignore_eos=True) for s in range(12)]
        assert all(r.finish_reason == "length" and r.stats.generated_tokens == 60 for r in kept)
        with pytest.raises(InvalidArgumentError, match="ignore_eos"):
            m.complete("hello", ignore_eos="yes")
