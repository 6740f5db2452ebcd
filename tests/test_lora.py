"""LoRA adapters, checked against arithmetic: a tiny model's greedy output with an adapter at
scale s is the output of the same model whose weights the test merged by hand
(W + s * alpha / r * B @ A); scale 0 is the base. Per-request adapter sets never share a
decode or a cached prefix (llama.cpp#26207 cannot happen), and every bad adapter is refused
before llama.cpp sees it."""

from __future__ import annotations

import shutil
import subprocess
import threading

import pytest

import slmrun
from slmrun import api
from slmrun.errors import InvalidAdapterError, InvalidArgumentError, ModelFileNotFoundError
from slmrun.runtime.lora import Turns

from conftest import slmrun_cmd
from tinymodels import write_tiny_gguf, write_tiny_lora

P = "the a is of and to in what hello world"
N = 24
BASE = dict(chat_template=None, seed=11)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    base = write_tiny_gguf(d / "base.gguf", **BASE)
    return {"dir": d, "base": base,
            "a": write_tiny_lora(d / "a.gguf", base, rank=4, alpha=8.0, seed=1),
            "b": write_tiny_lora(d / "b.gguf", base, rank=2, alpha=1.0, seed=2, magnitude=0.6,
                                 targets=("attn_k", "ffn_gate", "ffn_down"))}


def greedy(model, prompt=P, **kw) -> list[int]:
    return model.generate(model.tokenize(prompt), max_tokens=N, temperature=0, **kw).tokens


def load(path, **kw):
    return slmrun.load(path, n_ctx=128, n_threads=1, **kw)


def merged(files, name, *hooks) -> list[int]:
    def hook(tensor, array):
        for h in hooks:
            array = h(tensor, array)
        return array
    path = write_tiny_gguf(files["dir"] / name, **BASE, tensor_hook=hook)
    with load(path) as m:
        return greedy(m)


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, -0.8])
def test_an_adapter_at_scale_s_is_the_hand_merged_model(files, scale):
    with load(files["base"]) as m:
        base = greedy(m)
    with load(files["base"], lora=[(files["a"].path, scale)]) as m:
        got = greedy(m)
    assert got == merged(files, f"merged-a-{scale}.gguf", files["a"].merge_hook(scale))
    assert (got == base) == (scale == 0.0)


def test_two_adapters_add_up(files):
    with load(files["base"], lora=[(files["a"].path, 0.7), files["b"].path]) as m:
        assert [a["scale"] for a in m.adapters] == [0.7, 1.0]
        both = greedy(m)
        only_b = greedy(m, adapters=[{"id": 1, "scale": 1.0}])
    assert both == merged(files, "merged-ab.gguf", files["a"].merge_hook(0.7), files["b"].merge_hook(1.0))
    assert only_b == merged(files, "merged-b.gguf", files["b"].merge_hook(1.0))


def test_another_architecture_is_merged_the_same_way(tmp_path):
    base = write_tiny_gguf(tmp_path / "phi.gguf", arch="phi2", chat_template=None, seed=4)
    lora = write_tiny_lora(tmp_path / "phi-lora.gguf", base, targets=("attn_qkv", "ffn_up", "attn_output"), seed=3)
    with load(base, lora=[(lora.path, 1.0)]) as m:
        got = greedy(m)
    hand = write_tiny_gguf(tmp_path / "phi-merged.gguf", arch="phi2", chat_template=None, seed=4,
                           tensor_hook=lora.merge_hook(1.0))
    with load(hand) as m:
        assert got == greedy(m)


def solo(files, adapters, prompt=P) -> list[int]:
    with load(files["base"], lora=[files["a"].path, files["b"].path], n_parallel=1) as m:
        return greedy(m, prompt, adapters=adapters)


A, B, NONE = [{"id": 0, "scale": 1.0}], [{"id": 1, "scale": 1.0}], []


@pytest.mark.parametrize("first,second", [(A, B), (B, A), (NONE, A), (A, NONE)])
def test_requests_that_differ_only_in_adapter_never_share_a_cached_prefix(files, first, second):
    """llama.cpp#26207: one slot, the same prompt, another adapter: the cells of the first
    request are not reused by the second, which gives exactly what it gives alone."""
    alone = {id(first): solo(files, first), id(second): solo(files, second)}
    assert alone[id(first)] != alone[id(second)]
    with load(files["base"], lora=[files["a"].path, files["b"].path], n_parallel=1) as m:
        r1 = m.generate(m.tokenize(P), max_tokens=N, temperature=0, adapters=first)
        assert r1.tokens == alone[id(first)]
        r2 = m.generate(m.tokenize(P), max_tokens=N, temperature=0, adapters=second)
        assert r2.tokens == alone[id(second)] and r2.stats.cached_tokens == 0
        r3 = m.generate(m.tokenize(P), max_tokens=N, temperature=0, adapters=second)
        assert r3.tokens == alone[id(second)] and r3.stats.cached_tokens > 0  # the same set reuses it


@pytest.mark.parametrize("spec", ["off", "on"])
def test_concurrent_requests_on_different_adapters_each_get_their_own(files, spec):
    """Four requests at once, the same prompt, four adapter sets: every step decodes one set's
    sequences, so each gets exactly what it gets alone (one decode mixing sets would give
    every one of them another model's tokens). Sequences of one set batch together; LoRA's
    matmuls are not batch-invariant in ggml (a near-tie, 0.003 apart, flips at token 11 of a
    batch of four on this tiny model), so that case is not compared token for token here.
    With prompt-lookup drafts on, a step may give a sequence more than one token (its
    accepted drafts), and drafts are made only for the set whose turn it is."""
    sets = [A, B, NONE, [{"id": 0, "scale": 0.5}, {"id": 1, "scale": -1.0}]]
    with load(files["base"], lora=[files["a"].path, files["b"].path], n_parallel=4, speculative=spec) as m:
        want = [greedy(m, adapters=s) for s in sets]  # one at a time
        assert len({tuple(w) for w in want}) == len(want)
        for rep in range(3):
            before = m.status()["steps"]
            start = threading.Barrier(len(sets))
            got = {}

            def one(j):
                start.wait()
                got[j] = m.generate(m.tokenize(P), max_tokens=N, temperature=0, adapters=sets[j]).wait()

            threads = [threading.Thread(target=one, args=(j,)) for j in range(len(sets))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert [got[j].tokens for j in range(len(sets))] == want
            # No step served two sets: each sequence needed its own steps, one per token it
            # generated less the drafts it had accepted.
            needed = sum(N - (got[j].stats.accepted_tokens or 0) for j in range(len(sets)))
            assert m.status()["steps"] - before >= needed


def test_turns_are_fair():
    t = Turns(quantum=2)
    picks = [t.pick(["a", "b", "a"]) for _ in range(6)]
    assert picks == ["a", "a", "b", "b", "a", "a"]
    assert [t.pick(["b"]) for _ in range(3)] == ["b", "b", "b"]  # alone, a set keeps going
    t = Turns(quantum=1)
    assert [t.pick(["x", "y", "z"]) for _ in range(4)] == ["x", "y", "z", "x"]
    assert t.pick(["y", "z"]) == "y" and t.pick(["z"]) == "z"


# --- refusals ----------------------------------------------------------------------------------

def test_mismatched_damaged_and_wrong_files_are_refused(files, tmp_path):
    base = files["base"]
    cases = {
        "arch": (write_tiny_lora(tmp_path / "arch.gguf", base, arch="phi2").path, "is for phi2 models"),
        "shape": (write_tiny_lora(tmp_path / "shape.gguf", base, bad_shape=True).path, "does not fit base.gguf"),
        "model": (base, "is a model, not an adapter"),
    }
    bigger = write_tiny_gguf(tmp_path / "bigger.gguf", n_layer=3, **BASE)
    cases["tensor"] = (write_tiny_lora(tmp_path / "deep.gguf", bigger, layers=[2]).path, "blk.2.")
    trunc = tmp_path / "trunc.gguf"
    shutil.copy(files["a"].path, trunc)
    with open(trunc, "r+b") as f:
        f.truncate(trunc.stat().st_size - 100)
    cases["truncated"] = (trunc, "truncated")
    for what, (path, words) in cases.items():
        with pytest.raises(InvalidAdapterError) as exc:
            load(base, lora=[path])
        assert words in exc.value.message and exc.value.hint, what
    with pytest.raises(ModelFileNotFoundError):
        load(base, lora=[tmp_path / "nope.gguf"])
    with load(base, lora=[files["a"].path]) as m:
        for bad in ([{"id": 1, "scale": 1.0}], [{"id": 0}], "x", [(0, 1.0), (0, 2.0)]):
            with pytest.raises(InvalidArgumentError, match="adapters"):
                m.complete(P, adapters=bad)
    with load(base) as m:
        with pytest.raises(InvalidArgumentError, match="loaded without LoRA adapters"):
            m.complete(P, adapters=A)


# --- created models and the command line -------------------------------------------------------

def test_adapter_in_a_modelfile(files, tmp_path):
    api.import_model(files["base"], name="base", link=True)
    shutil.copy(files["a"].path, tmp_path / "style.gguf")
    (tmp_path / "Modelfile").write_text("FROM base\nADAPTER ./style.gguf:0.5\n")
    slmrun.create("styled", (tmp_path / "Modelfile").read_text(), base_dir=tmp_path)
    slmrun.create("styled2", "FROM styled\n")  # a chain keeps its base's adapters
    with load("styled2") as m:
        assert [(a["path"], a["scale"]) for a in m.adapters] == [(str(tmp_path / "style.gguf"), 0.5)]
        assert greedy(m) == merged(files, "merged-a-0.5b.gguf", files["a"].merge_hook(0.5))
    wrong = write_tiny_lora(tmp_path / "wrong.gguf", files["base"], arch="phi2").path
    with pytest.raises(InvalidAdapterError, match="is for phi2"):
        slmrun.create("bad", f"FROM base\nADAPTER {wrong}\n")
    with open(tmp_path / "style.gguf", "ab") as f:
        f.write(b"\0" * 32)
    with pytest.raises(InvalidAdapterError, match="changed since the model was created"):
        load("styled")


def test_cli_lora(files):
    def run(*args):
        p = subprocess.run([*slmrun_cmd(), "run", "--raw", "-m", str(files["base"]), "--ctx", "128", "--threads", "1",
                            "-n", "12", "-t", "0", *args, P], capture_output=True, text=True, timeout=300)
        return p
    plain, zero, one = run(), run("--lora", f"{files['a'].path}:0"), run("--lora", str(files["a"].path))
    assert plain.returncode == zero.returncode == one.returncode == 0, one.stderr
    assert plain.stdout == zero.stdout and plain.stdout != one.stdout
    bad = run("--lora", f"{files['a'].path}:1.x")
    assert bad.returncode == 2 and "must be a number" in bad.stderr
    wrong = run("--lora", str(files["base"]))
    assert wrong.returncode == 5 and "is a model, not an adapter" in wrong.stderr


def test_chat_takes_lora(files):
    def chat(*args):
        p = subprocess.run([*slmrun_cmd(), "chat", "-m", str(files["base"]), "--ctx", "128", "--threads", "1",
                            "-n", "12", "-t", "0", *args], input=P + "\n", capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return p.stdout
    plain = chat()
    assert plain.strip() and chat("--lora", f"{files['a'].path}:0") == plain
    assert chat("--lora", str(files["a"].path)) != plain


@pytest.mark.real_model
def test_a_random_adapter_on_the_default_model(default_model_file, tmp_path):
    lora = write_tiny_lora(tmp_path / "smol-lora.gguf", default_model_file, rank=8, alpha=16, magnitude=0.05,
                           targets=("attn_q", "attn_v", "ffn_up"))
    prompt = "The capital of France is"
    # Token for token: without prompt-lookup drafts, whose verify rows are decoded in a batch of
    # another shape (ggml's quantized matmuls are not batch-invariant; a near-tie may flip).
    kw = dict(n_ctx=256, n_parallel=2, speculative="off")
    with slmrun.load(default_model_file, **kw) as m:
        base = greedy(m, prompt)
    with slmrun.load(default_model_file, lora=[lora.path], **kw) as m:
        adapted = greedy(m, prompt)
        assert adapted != base
        assert greedy(m, prompt, adapters=[]) == base
        rs = [m.generate(m.tokenize(prompt), max_tokens=N, temperature=0, adapters=a) for a in (A, NONE, A, NONE)]
        assert [r.tokens for r in rs] == [adapted, base, adapted, base]


def test_serve_lora_and_per_request_lora(files, tmp_path):
    from serverutil import Server, store_model

    home = tmp_path / "home"
    store_model(home, files["base"], "base")
    with load(files["base"], lora=[(files["a"].path, 1.0), (files["b"].path, 0.5)], n_parallel=2) as m:
        want = {key: m.complete(P, max_tokens=N, temperature=0, adapters=lora).text
                for key, lora in (("default", None), ("a", A), ("none", NONE))}
    with Server(home, "-m", "base", "--lora", str(files["a"].path), "--lora", f"{files['b'].path}:0.5",
                "--ctx", "128", "--parallel", "2", "--threads", "1") as s:
        for key, lora in (("default", None), ("a", A), ("none", NONE)):
            body = {"model": "base", "prompt": P, "max_tokens": N, "temperature": 0, **({"lora": lora} if lora is not None else {})}
            status, r = s.json("POST", "/v1/completions", body)
            assert status == 200 and r["choices"][0]["text"] == want[key], key
        status, r = s.json("POST", "/api/generate", {"model": "base", "prompt": P, "raw": True, "stream": False,
                                                     "options": {"num_predict": N, "temperature": 0}, "lora": A})
        assert r["response"] == want["a"]
        for bad, words in (([{"id": 5, "scale": 1.0}], "no adapter 5"), ("x", "lora must be"),
                           ([{"id": 0}], "lora[0].scale is required")):
            status, r = s.json("POST", "/v1/completions", {"model": "base", "prompt": P, "lora": bad})
            assert status == 400 and words in r["error"]["message"], r
    p = subprocess.run([*slmrun_cmd(), "serve", "--lora", str(files["a"].path)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "--lora needs the model it applies to" in p.stderr
