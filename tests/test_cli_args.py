"""Every command-line option with a type or a range refuses a bad value with a message that
names it, exit code 2, before anything is loaded or served (no model is in this store: a
check that came after the load would fail on the missing model instead)."""

from __future__ import annotations

import subprocess

import pytest

from conftest import slmrun_cmd

LONG = "x" * 5000


@pytest.mark.parametrize("args, message", [
    # sampling, checked before the model loads
    (["run", "--temperature", "-1", "hi"], "--temperature must be >= 0.0"),
    (["run", "--temperature", "nan", "hi"], "--temperature must be >= 0.0"),
    (["run", "--temperature", "inf", "hi"], "--temperature must be >= 0.0"),
    (["run", "--top-p", "2", "hi"], "--top-p must be >= 0.0 and <= 1.0"),
    (["run", "--top-k", "-1", "hi"], "--top-k must be an integer from 0"),
    (["run", "--top-k", "99999999999", "hi"], "--top-k must be an integer from 0 to 2147483647"),
    (["run", "--max-tokens", "-1", "hi"], "--max-tokens must be an integer >= 0"),
    (["run", "--top-k", "many", "hi"], "'--top-k'"),  # typer's own: "Invalid value for '--top-k'"
    (["run", "--temperature", "hot", "hi"], "'--temperature'"),
    (["chat", "--temperature", "-1"], "--temperature must be >= 0.0"),
    (["chat", "--max-tokens", "-5"], "--max-tokens must be an integer >= 0"),
    (["extract", "--schema", "/dev/null", "--max-tokens", "-1", "x"], "--max-tokens must be an integer >= 0"),
    # names
    (["run", "-m", LONG, "hi"], "invalid model name"),
    (["chat", "-m", "tiny:" + "q" * 40], "invalid quant"),
    (["serve", "-m", LONG], "invalid model name"),
    # the server's settings
    (["serve", "--grace", "nan"], "--grace must be a number of seconds >= 0"),
    (["serve", "--grace", "-1"], "--grace must be a number of seconds >= 0"),
    (["serve", "--threads", "0"], "--threads must be at least 1"),
    (["serve", "--threads", "100000"], "--threads must be at most"),
    (["serve", "--parallel", "1000"], "--parallel must be at most 64"),
    (["serve", "--ctx", "8"], "--ctx must be at least 16"),
    (["serve", "--ctx", "99999999999"], "--ctx must be at most"),
    (["serve", "--max-body", "0"], "--max-body must be at least 1K"),
    (["serve", "--max-body", "lots"], "Not a size"),
    (["serve", "--memory", "-5G"], "Not a size"),
    (["serve", "--keep-alive", "soon"], "keep_alive: cannot read 'soon'"),
    (["serve", "--port", "70000"], "--port must be from 0 to 65535"),
    # the planner and bench
    (["plan", "smollm2-135m", "--min-speed", "nan"], "min_speed must be a finite number >= 0"),
    (["plan", "smollm2-135m", "--min-speed", "-1"], "min_speed must be a finite number >= 0"),
    (["plan", "smollm2-135m", "--ctx", "5"], "n_ctx=5 is too small"),
    (["plan", "smollm2-135m", "--ram", "4G", "--cores", "0"], "cores at least 1"),
    (["plan", "smollm2-135m", "--parallel", "0"], "n_parallel must be an integer >= 1"),
    (["bench", "--n-prompt", "-1"], "-p (prompt tokens) must be at least 1"),
    (["bench", "--reps", "0"], "-r (repetitions) must be at least 1"),
    (["bench", "--depth", "-5"], "-d (depth) must be 0 or more"),
    (["rpc-server", "--port", "70000"], "port 70000 is out of range"),
    (["rpc-server", "--threads", "0"], "--threads must be at least 1"),
])
def test_bad_option_values_are_named(args, message):
    r = subprocess.run([*slmrun_cmd(), *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert message in r.stderr, r.stderr[-2000:]
    assert "unexpected" not in r.stderr and "slmrun serve on" not in r.stderr


def test_a_huge_context_is_refused_not_tried_even_with_force(tiny_llama):
    from slmrun import load
    from slmrun.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="n_ctx=99999999999 is too large"):
        load(tiny_llama, n_ctx=99_999_999_999, force=True)
