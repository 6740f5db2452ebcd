"""Prompt-lookup speculative decoding (runtime/speculative.py): the n-gram index, the cost
model's decisions (tables), and the engine's verification on tiny models and the real one:
the same tokens with and without drafts, greedy and sampled, under grammars, limits, stops."""

from __future__ import annotations

import pytest

import slmrun
from slmrun.errors import InvalidArgumentError
from slmrun.runtime.speculative import K_ON, Lookup, StepCosts, check_mode, choose_k, drafts_allowed


# --- the n-gram index ---------------------------------------------------------------------------

def test_a_draft_is_what_followed_the_latest_earlier_occurrence_of_the_suffix():
    look = Lookup([5, 6, 7, 8, 9, 1, 2, 6, 7, 3, 4, 6, 7])
    # suffix (6, 7): latest earlier occurrence at 7..8, followed by 3, 4, 6, 7
    assert look.draft(3) == [3, 4, 6]
    assert look.draft(10) == [3, 4, 6, 7]  # never past the end of what exists
    look.extend([8])  # suffix (6, 7, 8) occurred at 1..3: the longest match wins over (7, 8)
    assert look.draft(2) == [9, 1]


def test_no_draft_without_an_earlier_occurrence():
    assert Lookup([1, 2, 3, 4]).draft(4) == []
    assert Lookup([1]).draft(4) == []
    assert Lookup([]).draft(4) == []
    assert Lookup([3, 3]).draft(2) == []  # the suffix itself is no earlier occurrence
    assert Lookup([3, 3, 3]).draft(2) == [3]


def test_extend_token_by_token_equals_building_at_once():
    tokens = [1, 2, 3, 1, 2, 4, 1, 2, 3, 5, 1, 2]
    one = Lookup(tokens)
    step = Lookup()
    for t in tokens:
        step.extend([t])
    assert one.index == step.index and one.draft(5) == step.draft(5) == [3, 5, 1, 2]


# --- the cost model -------------------------------------------------------------------------------

def _costs(table: dict[int, float]) -> StepCosts:
    c = StepCosts(slope=0.5)
    for b, s in table.items():
        c.record(b, s)
    return c


def test_step_costs_interpolate_between_measured_sizes_and_extrapolate_with_the_slope():
    c = _costs({1: 0.010, 9: 0.030})
    assert c.cost(1) == pytest.approx(0.010) and c.cost(5) == pytest.approx(0.020)
    assert c.cost(11) == pytest.approx(0.030 + 0.010 * 0.5 * 2)
    assert StepCosts().cost(4) is None
    c.record(1, 0.020)  # an EMA: one slow step moves the figure a fifth of the way
    assert c.cost(1) == pytest.approx(0.012)


@pytest.mark.parametrize("name, table, p, expect", [
    # memory-bound (a Pi): 5 tokens cost about one step; drafts pay even at a modest acceptance
    ("memory-bound", {1: 0.100, 2: 0.102, 4: 0.106, 8: 0.115}, 0.6, "draft"),
    # compute-bound: every token costs a full step; nothing pays
    ("compute-bound", {1: 0.010, 2: 0.020, 4: 0.040, 8: 0.080}, 0.9, "none"),
    # this machine's two x86 cores, roughly: +30% a token; a high acceptance pays, a low one does not
    ("x86 two cores, copying", {1: 0.010, 2: 0.013, 4: 0.019, 8: 0.031}, 0.9, "draft"),
    ("x86 two cores, free text", {1: 0.010, 2: 0.013, 4: 0.019, 8: 0.031}, 0.2, "none"),
])
def test_auto_drafts_only_where_the_measured_costs_say_it_pays(name, table, p, expect):
    k = choose_k(p, _costs(table), batch=1, yielded=1.0, available=8, mode="auto")
    assert (k > 0) == (expect == "draft"), name


def test_on_always_drafts_off_never_and_a_busy_batch_needs_more_to_pay():
    c = _costs({1: 0.010, 2: 0.020, 4: 0.040, 8: 0.080})
    assert choose_k(0.9, c, 1, 1.0, 8, "on") == K_ON
    assert choose_k(0.99, _costs({1: 0.1, 8: 0.1}), 1, 1.0, 8, "off") == 0
    assert choose_k(0.9, c, 1, 1.0, 2, "on") == 2  # never more than the draft has
    x86 = _costs({1: 0.010, 2: 0.013, 4: 0.019, 5: 0.022, 8: 0.031, 12: 0.043})
    alone = choose_k(0.8, x86, 1, 1.0, 8, "auto")
    busy = choose_k(0.8, x86, 4, 4.0, 8, "auto")  # 4 streams: a draft's rows cost the same, yield a quarter
    assert alone > 0 and busy < alone


@pytest.mark.parametrize("mode, n_active, allowed", [
    ("auto", 1, True), ("auto", 2, False), ("auto", 8, False),
    ("on", 1, True), ("on", 4, True), ("off", 1, False), ("off", 4, False)])
def test_auto_drafts_only_for_a_sequence_decoded_alone(mode, n_active, allowed):
    assert drafts_allowed(mode, n_active) is allowed


def test_modes():
    assert [check_mode(v) for v in (None, True, False, "AUTO", " on ", "off")] == ["auto", "on", "off", "auto",
                                                                                   "on", "off"]
    with pytest.raises(InvalidArgumentError, match="auto, on, off"):
        check_mode("sometimes")


# --- the engine ---------------------------------------------------------------------------------

PROMPTS = ["the world is the world is the", "hello a of hello a of", "a a a", "what is 2+2? what is",
           "and to in the and to in the and"]


@pytest.fixture(scope="module")
def repetitive(tiny_dir):
    """A tiny model that mostly continues from the current token (mixing 0.005): its greedy and
    low-temperature output soon repeats itself, so drafts are found, some kept, some not."""
    from tinymodels import write_tiny_gguf

    return write_tiny_gguf(tiny_dir / "tiny-repetitive.gguf", arch="llama", mixing=0.005)


@pytest.fixture(scope="module")
def tiny(repetitive):
    with slmrun.load(repetitive, n_ctx=256, n_threads=1, n_parallel=4) as m:
        yield m


def _gen(model, prompt, mode, **kw):
    r = model.complete(prompt, max_tokens=48, speculative=mode, **kw).wait()
    return r.tokens, r.stats


def test_greedy_output_is_the_same_with_and_without_drafts(tiny):
    drafted = accepted = 0
    for prompt in PROMPTS:
        off, _ = _gen(tiny, prompt, "off", temperature=0)
        on, stats = _gen(tiny, prompt, "on", temperature=0)
        assert on == off, prompt
        drafted += stats.draft_tokens
        accepted += stats.accepted_tokens
    assert accepted > 0 and drafted > accepted  # drafts were decoded; some kept, some removed


def test_sampled_output_with_a_seed_is_the_same_with_and_without_drafts(tiny):
    """Each token is drawn from the model's distribution at its row by the request's own seeded
    sampler, one draw per token, drafts or not: the same seed gives the same tokens, so the
    accepted ones follow the target distribution exactly as unspeculated ones do."""
    accepted = 0
    for i, prompt in enumerate(PROMPTS):
        for temperature in (0.1, 0.3):
            kw = dict(temperature=temperature, seed=100 + i, top_k=0, top_p=1.0, min_p=0.0)
            off, _ = _gen(tiny, prompt, "off", **kw)
            on, stats = _gen(tiny, prompt, "on", **kw)
            assert on == off, (prompt, temperature)
            accepted += stats.accepted_tokens
    assert accepted > 0


def test_penalties_logprobs_and_limits_see_every_token_once(tiny):
    kw = dict(temperature=0, repeat_penalty=1.3, logprobs=True, top_logprobs=2)
    off = tiny.complete(PROMPTS[0], max_tokens=37, speculative="off", **kw).wait()
    on = tiny.complete(PROMPTS[0], max_tokens=37, speculative="on", **kw).wait()
    assert on.tokens == off.tokens and len(on.tokens) <= 37
    assert [e["token"] for e in on.logprobs] == on.tokens
    assert [e["logprob"] for e in on.logprobs] == pytest.approx([e["logprob"] for e in off.logprobs], abs=1e-3)
    exact = tiny.complete(PROMPTS[2], max_tokens=29, ignore_eos=True, temperature=0, speculative="on").wait()
    assert exact.stats.generated_tokens == 29 and exact.finish_reason == "length"


def test_a_stop_string_inside_an_accepted_draft_ends_the_reply_there(tiny):
    full = tiny.complete(PROMPTS[1], max_tokens=48, temperature=0, speculative="off").text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    if not stop.strip():
        stop = full.strip()[-3:]
    off = tiny.complete(PROMPTS[1], max_tokens=48, temperature=0, stop=[stop], speculative="off").text
    on = tiny.complete(PROMPTS[1], max_tokens=48, temperature=0, stop=[stop], speculative="on").text
    assert on == off and stop not in on


def test_the_slot_cache_after_drafts_holds_exactly_the_kept_tokens(tiny):
    """Rejected drafts' cells are removed: a follow-up that reuses the slot's cache continues
    exactly as the same prompt evaluated from scratch does."""
    first = tiny.complete(PROMPTS[0], max_tokens=40, temperature=0, speculative="on").wait()
    follow = PROMPTS[0] + first.text + " and"
    cached = tiny.complete(follow, max_tokens=24, temperature=0, speculative="off").wait()
    assert cached.stats.cached_tokens > 0
    tiny._engine.call(lambda h: tiny._engine.forget_cache())
    fresh = tiny.complete(follow, max_tokens=24, temperature=0, speculative="off").wait()
    assert fresh.stats.cached_tokens == 0 and fresh.tokens == cached.tokens


def test_concurrent_streams_draft_beside_each_other(tiny):
    import threading

    alone = {p: _gen(tiny, p, "off", temperature=0)[0] for p in PROMPTS[:4]}
    got = {}

    def ask(p):
        got[p] = _gen(tiny, p, "on", temperature=0)[0]
    threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS[:4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert got == alone


def test_the_models_default_and_a_request_override(repetitive):
    with slmrun.load(repetitive, n_ctx=256, n_threads=1, n_parallel=1, speculative="off") as m:
        assert m.complete(PROMPTS[2], max_tokens=40, temperature=0).wait().stats.draft_tokens == 0
        assert m.complete(PROMPTS[1], max_tokens=40, temperature=0, speculative=True).wait().stats.draft_tokens > 0
        with pytest.raises(InvalidArgumentError, match="speculative"):
            m.complete("x", speculative="maybe")


# --- grammars and forced tokens, on the real model ---------------------------------------------

@pytest.mark.real_model
def test_drafts_compose_with_a_schema_and_its_forced_tokens(default_model_file):
    person = {"type": "object", "properties": {"name": {"type": "string"}, "city": {"type": "string"},
                                               "street": {"type": "string"}},
              "required": ["name", "city", "street"], "additionalProperties": False}
    text = "Alice Marchetti lives at 14 Rue des Lilas, Paris. Alice Marchetti moved to Paris in 2019."
    msgs = [{"role": "user", "content": text}]
    with slmrun.load(default_model_file, n_ctx=1024, n_parallel=1) as m:
        off = m.chat(msgs, json_schema=person, temperature=0, max_tokens=80, speculative="off").wait()
        on = m.chat(msgs, json_schema=person, temperature=0, max_tokens=80, speculative="on").wait()
        assert on.json() == off.json() and on.json()["name"] == "Alice Marchetti"
        assert on.stats.forced_tokens > 0 and on.stats.accepted_tokens > 0


@pytest.mark.real_model
def test_a_draft_the_grammar_forbids_is_cut_before_it_is_decoded(default_model_file):
    """The prompt's own n-grams propose prose inside a value the grammar keeps to digits: each
    draft is cut at its first forbidden token, so none is ever decoded and rejected for that."""
    from slmrun.structured import constraint_spec

    with slmrun.load(default_model_file, n_ctx=1024, n_parallel=1) as m:
        c = m._grammar().constraint(constraint_spec(grammar='root ::= [0-9]+'))
        words = m.tokenize(" the number is", special=False, add_bos=False)
        digits = m.tokenize("123", special=False, add_bos=False)
        assert c.valid_prefix(digits + words) == len(digits) and c.valid_prefix(words) == 0
        r = m.complete("The number is 4242. Again: the number is 4242. The number is",
                       grammar='root ::= " " [0-9]+ "."', temperature=0, max_tokens=12, speculative="on").wait()
        assert r.text.strip().rstrip(".").isdigit()


# --- the command line and the server's request fields --------------------------------------------

def test_run_takes_spec_and_refuses_a_bad_value(repetitive):
    import subprocess

    from conftest import slmrun_cmd

    base = [*slmrun_cmd(), "run", "--raw", "-m", str(repetitive), "-n", "24", "-t", "0", "a a a"]
    off = subprocess.run(base + ["--spec", "off"], capture_output=True, text=True, timeout=120)
    on = subprocess.run(base + ["--spec", "on"], capture_output=True, text=True, timeout=120)
    assert off.returncode == on.returncode == 0 and on.stdout == off.stdout and on.stdout.strip()
    bad = subprocess.run(base + ["--spec", "sometimes"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "auto, on, off" in bad.stderr


def test_the_servers_requests_carry_speculative():
    from slmrun.server import schema, translate

    call = translate.openai_completion(schema.validate(schema.CompletionRequest,
                                                       {"model": "m", "prompt": "x", "speculative": "off"}))
    assert call.params["speculative"] == "off"
    params, ignored = translate.ollama_options(schema.validate(schema.Options, {"speculative": True, "temperature": 0}))
    assert params == {"speculative": True, "temperature": 0} and ignored == []
