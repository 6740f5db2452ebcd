"""`slmrun embed` from the command line, on a tiny BERT written by the tests."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from conftest import slmrun_cmd
from tinymodels import write_tiny_bert


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("bert-cli") / "tiny-bert.gguf")


def _run(*args, input=None):
    return subprocess.run([*slmrun_cmd(), *args], capture_output=True, text=True, timeout=180, input=input)


def test_one_json_line_per_text(bert):
    p = _run("embed", "-m", str(bert), "the bike shop", "what are your opening hours?")
    assert p.returncode == 0, p.stderr
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert [x["text"] for x in lines] == ["the bike shop", "what are your opening hours?"]
    assert all(len(x["embedding"]) == 32 for x in lines)
    assert [x["n_tokens"] for x in lines] == [5, 8] and "truncated" not in lines[0]
    assert np.linalg.norm(lines[0]["embedding"]) == pytest.approx(1.0, abs=1e-5)


def test_stdin_lines_and_an_npy_file(bert, tmp_path):
    out = tmp_path / "v.npy"
    p = _run("embed", "-m", str(bert), "--npy", str(out), input="the bike shop\n\n  \nrepair a wheel\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "" and "wrote 2 vectors of 32 dimensions" in p.stderr
    vectors = np.load(out)
    assert vectors.shape == (2, 32) and vectors.dtype == np.float32
    lines = _run("embed", "-m", str(bert), "-", input="the bike shop\nrepair a wheel\n").stdout.splitlines()
    assert np.allclose([json.loads(x)["embedding"] for x in lines], vectors, atol=1e-6)


def test_a_long_text_is_cut_and_says_so_or_refused(bert):
    long = " ".join(["the bike shop is open"] * 30)
    p = _run("embed", "-m", str(bert), long)
    assert p.returncode == 0, p.stderr
    line = json.loads(p.stdout)
    assert line["truncated"] is True and line["n_tokens"] == 64
    p = _run("embed", "-m", str(bert), "--no-truncate", long)
    assert p.returncode == 7 and "embeds at most 64" in p.stderr and p.stdout == ""


def test_bad_input_is_one_line(bert, tmp_path):
    p = _run("embed", "-m", str(bert), "")
    assert p.returncode == 2 and "Error: text 1 is empty" in p.stderr
    p = _run("embed", "-m", str(bert), "a", "--npy", str(tmp_path / "v.txt"))
    assert p.returncode == 2 and "must end in .npy" in p.stderr
    p = _run("embed", "-m", str(bert), "a", "--pooling", "max")
    assert p.returncode == 2 and "pooling='max' is not one of mean, cls, last" in p.stderr
    p = _run("run", "-m", str(bert), "hi")
    assert p.returncode == 20 and "is an embedding model: it cannot generate text" in p.stderr
