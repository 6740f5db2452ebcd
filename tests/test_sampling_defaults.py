"""Per-task sampling defaults and the DRY sampler: the parameters from tables, the chain on a
tiny model, the knobs through the server's translation and the CLI."""

from __future__ import annotations

import subprocess

import pytest

import slmrun
from conftest import slmrun_cmd
from slmrun.errors import InvalidArgumentError
from slmrun.runtime import params as P
from slmrun.runtime.params import TASK_DEFAULTS, make_params, penalty_prefilter
from slmrun.server import translate as T


@pytest.mark.parametrize("task", ["text", "chat", "constrained"])
def test_a_task_gets_its_defaults_unless_the_caller_says(task):
    p = make_params(task=task, seed=1)
    assert p.repeat_penalty == TASK_DEFAULTS[task]["repeat_penalty"]
    assert p.dry_multiplier == TASK_DEFAULTS[task]["dry_multiplier"]
    mine = make_params(task=task, seed=1, repeat_penalty=1.0, dry_multiplier=0.0)
    assert mine.repeat_penalty == 1.0 and mine.dry is None and not mine.penalized


def test_constrained_output_is_penalised_by_default():
    # chosen by measurement: benchmarks/STRUCTURED.md, "Sampling that lets small models finish"
    p = make_params(task="constrained", seed=1)
    assert p.penalized and p.dry == (0.8, 1.75, 2, -1)


@pytest.mark.parametrize("task, counted", [("text", True), ("chat", False), ("constrained", False)])
def test_only_a_raw_continuation_penalises_the_prompts_words(task, counted):
    # a reply repeats its question ("What is 2+2?" -> "2+2 is 4"): chat and constrained replies are
    # penalised for repeating themselves only (benchmarks/STRUCTURED.md, "Short factual questions")
    assert make_params(task=task, seed=1).penalize_prompt is counted
    assert make_params(task=task, seed=1, repeat_penalty=1.3).penalize_prompt is counted


def test_chat_replies_are_penalised_by_default():
    p = make_params(task="chat", seed=1)
    assert p.repeat_penalty == 1.1 and p.dry is None  # Ollama's default; DRY measured no better on chat
    assert not make_params(task="text", seed=1).penalized  # llama.cpp's own defaults for a continuation


@pytest.mark.parametrize("kwargs, message", [
    ({"dry_multiplier": -1}, "dry_multiplier"), ({"dry_multiplier": float("nan")}, "dry_multiplier"),
    ({"dry_base": 0.5}, "dry_base"), ({"dry_allowed_length": -1}, "dry_allowed_length"),
    ({"dry_allowed_length": 1.5}, "dry_allowed_length"), ({"dry_penalty_last_n": -2}, "dry_penalty_last_n"),
    ({"dry_multiplier": True}, "dry_multiplier"),
])
def test_bad_dry_values_are_refused_by_name(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        make_params(**kwargs)


def test_dry_penalty_last_n_zero_turns_it_off():
    assert make_params(dry_multiplier=0.8, dry_penalty_last_n=0).dry is None


def test_the_dry_sampler_runs_deterministically(tiny_llama):
    with slmrun.load(str(tiny_llama)) as m:
        runs = [m.complete("a b a b a b", temperature=0, max_tokens=24, ignore_eos=True, dry_multiplier=3.0,
                           dry_allowed_length=1, repeat_penalty=1.2).tokens for _ in range(2)]
        assert len(runs[0]) == 24 and runs[0] == runs[1]


BASE = dict(temperature=0.8, top_k=40, repeat_penalty=1.1, presence_penalty=0.0, frequency_penalty=0.0,
            penalty_last_n=64, dry=False, n_vocab=49152)


@pytest.mark.parametrize("change, expected", [
    ({}, 104),                                            # top-40 after penalties lies in the top 40 + 64
    ({"temperature": 0}, 65),                             # greedy: the top one
    ({"repeat_penalty": 1.0}, None),                      # no penalty, nothing to save
    ({"repeat_penalty": 1.0, "presence_penalty": 0.5}, 104),
    ({"dry": True}, None),                                # DRY can lower any number of tokens
    ({"repeat_penalty": 0.9}, None),                      # raises logits: a token from below could rise
    ({"frequency_penalty": -0.5}, None), ({"presence_penalty": -0.1}, None),
    ({"top_k": 0}, None),                                 # no top-k: every candidate may be drawn
    ({"penalty_last_n": 0}, None),
    ({"n_vocab": 300}, None),                             # the cut would keep most of a small vocabulary
])
def test_the_penalty_prefilter_keeps_what_the_penalties_could_reach(change, expected):
    assert penalty_prefilter(**{**BASE, **change}) == expected


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=0.8, seed=7), dict(temperature=1.5, seed=3,
                                                                                       top_k=5, presence_penalty=0.7)])
def test_the_prefilter_changes_no_draw(tiny_llama, monkeypatch, kw):
    """Strong penalties over a short window on a random tiny model: the same tokens with and
    without the cut before the penalties."""
    with slmrun.load(str(tiny_llama)) as m:
        def run():
            return m.complete("a b a b a b", max_tokens=48, ignore_eos=True, repeat_penalty=1.5, repeat_last_n=8,
                              dry_multiplier=0.0, **kw).tokens
        assert penalty_prefilter(**{**BASE, "top_k": 40, **{k: v for k, v in kw.items() if k != "seed"},
                                    "repeat_penalty": 1.5, "penalty_last_n": 8, "n_vocab": m.n_vocab}) is not None
        cut = run()
        monkeypatch.setattr(P, "penalty_prefilter", lambda **_: None)
        assert run() == cut and len(cut) == 48


def _longest_repeat(tokens: list[int], n: int = 4) -> int:
    from collections import Counter
    return max(Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)).values())


@pytest.mark.real_model
def test_dry_breaks_the_default_models_greedy_loop(default_model_file):
    # A loop the prompt starts, which greedy decoding carries on whatever the CPU's kernels (a chat
    # question, "Count from one to twenty in words.", looped on one machine and not on another).
    prompt = "red, green, blue, red, green, blue, red, green, blue,"
    with slmrun.load(str(default_model_file), n_parallel=1) as m:
        plain = m.complete(prompt, temperature=0, max_tokens=64, dry_multiplier=0.0, repeat_penalty=1.0).wait()
        dry = m.complete(prompt, temperature=0, max_tokens=64, dry_multiplier=0.8, repeat_penalty=1.0).wait()
    assert _longest_repeat(plain.tokens) >= 4  # "red, green, blue, red, green, blue, ...": the loop DRY is for
    assert _longest_repeat(dry.tokens) < _longest_repeat(plain.tokens)


def test_openai_bodies_carry_llama_servers_dry_options():
    call = T.openai_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}], "dry_multiplier": 0.8,
                          "dry_base": 2, "dry_allowed_length": 3, "dry_penalty_last_n": 128})
    assert {k: call.params[k] for k in ("dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n")} \
        == {"dry_multiplier": 0.8, "dry_base": 2, "dry_allowed_length": 3, "dry_penalty_last_n": 128}


def test_ollama_options_take_the_dry_options_too():
    from slmrun.server import schema
    options = schema.validate(schema.Options, {"dry_multiplier": 0.5, "repeat_penalty": 1.2, "mirostat": 1})
    params, ignored = T.ollama_options(options)
    assert params == {"dry_multiplier": 0.5, "repeat_penalty": 1.2} and ignored == ["mirostat"]


def test_run_takes_the_penalties(tiny_llama):
    r = subprocess.run([*slmrun_cmd(), "run", "--raw", "a b", "-m", str(tiny_llama), "-n", "4", "-t", "0",
                        "--repeat-penalty", "1.3", "--dry-multiplier", "0.8"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    bad = subprocess.run([*slmrun_cmd(), "run", "a b", "-m", str(tiny_llama), "--dry-multiplier", "-1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--dry-multiplier must be >= 0.0" in bad.stderr
