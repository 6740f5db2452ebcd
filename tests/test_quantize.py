"""`slmrun quantize`: llama.cpp's quantizer into the store, and every way it must refuse or
fail cleanly (a quantized source without --allow-requantize, a type the source cannot give,
no room on the disk before it starts, a disk that fills while llama.cpp writes)."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import slmrun_cmd
from slmrun import api, quantizer, store
from slmrun.cli import EXIT_CODES
from slmrun.errors import (InsufficientDiskSpaceError, InvalidArgumentError, InvalidModelFileError,
                           QuantizeError, UnknownQuantError)
from slmrun.gguf_info import read_info
from tinymodels import write_tiny_gguf

WIDE = dict(n_embd=256, n_ff=512)  # K-quant blocks are 256 wide


@pytest.fixture(scope="module")
def wide_f32(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("wide") / "wide.F32.gguf", seed=3, **WIDE)


@pytest.fixture
def stored_f32(wide_f32):
    return api.import_model(wide_f32, name="wide")


def _nothing_half_written(name: str, quant: str) -> None:
    assert not [m for m in store.find(name) if m.quant == quant.upper()]
    staging = store.staging_dir(name)
    assert list(staging.iterdir()) == [], list(staging.iterdir())


@pytest.mark.parametrize("source,target,allow,outcome", [
    ("F32", "Q4_K_M", False, "ok"), ("F16", "Q2_K", False, "ok"), ("BF16", "Q8_0", False, "ok"),
    ("F32", "F16", False, "ok"), ("F16", "BF16", False, "ok"),
    ("Q4_1", "Q2_K", False, "requantize"), ("Q4_1", "Q2_K", True, "warn"), ("Q4_1", "Q8_0", True, "warn"),
    ("Q4_1", "F16", True, "cannot give"), ("Q8_0", "F32", True, "cannot give"),
    ("Q4_1", "Q4_1", True, "same"), ("F16", "F16", False, "same"),
    ("F16", "Q7_K", False, "unknown"), ("F16", "IQ2_XXS", False, "unknown"),
])
def test_check_target(source, target, allow, outcome):
    if outcome in ("ok", "warn"):
        warnings = quantizer.check_target(source, target, allow_requantize=allow)
        assert bool(warnings) == (outcome == "warn")
        if warnings:
            assert source in warnings[0] and target in warnings[0]
        return
    error = UnknownQuantError if outcome == "unknown" else InvalidArgumentError
    with pytest.raises(error) as info:
        quantizer.check_target(source, target, allow_requantize=allow)
    message = info.value.message + " " + info.value.hint
    expected = {"requantize": "--allow-requantize", "cannot give": "cannot give", "same": "already",
                "unknown": "Q4_K_M"}[outcome]
    assert expected in message


@pytest.mark.parametrize("name,source,target,expected", [
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1", "Q2_K", "SmolLM2-135M-Instruct.Q2_K.gguf"),
    ("phi-2.Q8_0.gguf", "Q8_0", "q4_k_m", "phi-2.Q4_K_M.gguf"),
    ("model-f16.gguf", "F16", "Q6_K", "model-Q6_K.gguf"),
    ("model_bf16.gguf", "BF16", "Q8_0", "model_Q8_0.gguf"),
    ("wide.gguf", "F32", "Q8_0", "wide.Q8_0.gguf"),
    ("halfq4_1.gguf", "Q4_1", "Q5_0", "halfq4_1.Q5_0.gguf"),  # not a separate quant tag
])
def test_output_filename(name, source, target, expected):
    assert quantizer.output_filename(name, source, target) == expected


def test_quantize_into_the_store(stored_f32):
    seen = []
    m = quantizer.quantize("wide:f32", "Q8_0", progress=lambda done, total, tensor: seen.append((done, total)))
    assert m.ref == "wide:q8_0" and m.path.name == "wide.Q8_0.gguf"
    info = read_info(m.path)
    assert info.quant == "Q8_0" and info.tensor_count == read_info(stored_f32.path).tensor_count
    assert seen[-1] == (info.tensor_count, info.tensor_count)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    meta = store.read_sidecar(m.path)
    assert meta["quantized_from"]["quant"] == "F32" and meta["quantized_from"]["sha256"] == stored_f32.sha256
    assert meta["sha256"] == store.sha256_file(m.path) and meta["source"] == "quantize:wide:f32"
    assert m.size < stored_f32.size / 3  # 8.5 bits per weight instead of 32
    assert list(store.staging_dir("wide").iterdir()) == []
    with api.load("wide:q8_0", n_ctx=64) as model:  # llama.cpp loads what it wrote
        assert model.complete("the", max_tokens=4, temperature=0).finish_reason in ("length", "stop")


def test_a_path_goes_under_its_name_or_the_one_given(wide_f32):
    m = quantizer.quantize(str(wide_f32), "Q4_K_M")
    assert m.ref == "wide:q4_k_m"
    m2 = quantizer.quantize(str(wide_f32), "Q4_K_M", name="mine")
    assert m2.ref == "mine:q4_k_m" and m2.sha256 == m.sha256  # the same llama.cpp, the same bytes


def test_a_quantized_source_needs_allow_requantize_and_is_warned(stored_f32):
    quantizer.quantize("wide:f32", "Q8_0")
    with pytest.raises(InvalidArgumentError) as info:
        quantizer.quantize("wide:q8_0", "Q4_0")
    assert "--allow-requantize" in info.value.hint and "Q8_0" in info.value.message
    _nothing_half_written("wide", "Q4_0")
    warned = []
    m = quantizer.quantize("wide:q8_0", "Q4_0", allow_requantize=True, warn=warned.append)
    assert m.quant == "Q4_0" and len(warned) == 1 and "Q8_0" in warned[0]


def test_a_type_the_source_cannot_give_is_refused(stored_f32):
    quantizer.quantize("wide:f32", "Q4_0")
    with pytest.raises(InvalidArgumentError) as info:
        quantizer.quantize("wide:q4_0", "F16", allow_requantize=True)
    assert "cannot give" in info.value.message
    _nothing_half_written("wide", "F16")
    with pytest.raises(UnknownQuantError):
        quantizer.quantize("wide:f32", "Q9_K")
    _nothing_half_written("wide", "Q9_K")


def test_an_existing_quant_needs_force(stored_f32):
    first = quantizer.quantize("wide:f32", "Q5_0")
    with pytest.raises(InvalidArgumentError) as info:
        quantizer.quantize("wide:f32", "Q5_0")
    assert "--force" in info.value.hint
    again = quantizer.quantize("wide:f32", "Q5_0", force=True)
    assert again.sha256 == first.sha256 and len(store.find("wide", "Q5_0")) == 1


def test_no_room_on_the_disk_refuses_before_writing(stored_f32, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, (1 << 30) - (1 << 20), 1 << 20))
    called = []
    import slmrun.runtime.quantize as rq
    real = rq.quantize_file
    monkeypatch.setattr(rq, "quantize_file", lambda *a, **k: (called.append(k.get("dry_run")), real(*a, **k))[1])
    with pytest.raises(InsufficientDiskSpaceError) as info:
        quantizer.quantize("wide:f32", "Q8_0")
    assert "wide:q8_0" in info.value.message and "free" in info.value.message
    assert called == [True]  # the dry run only: llama.cpp wrote nothing
    _nothing_half_written("wide", "Q8_0")


def test_a_disk_that_fills_while_storing_leaves_nothing(stored_f32, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(store, "_write_json_atomic", full)
    with pytest.raises(InsufficientDiskSpaceError) as info:
        quantizer.quantize("wide:f32", "Q8_0")
    assert "nothing was stored" in info.value.message
    _nothing_half_written("wide", "Q8_0")


def test_a_disk_that_fills_while_llama_cpp_writes_leaves_nothing(stored_f32, isolated_home):
    """A real failed write inside llama.cpp: the quantize runs in a process whose files may not
    grow past 64 KiB (RLIMIT_FSIZE, as a full disk does to a writer: write() fails)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    p = subprocess.run([*slmrun_cmd(), "quantize", "wide:f32", "--to", "Q8_0"], capture_output=True, text=True,
                       env=os.environ.copy(), preexec_fn=limit, timeout=120)
    assert p.returncode == dict((c.__name__, n) for c, n in EXIT_CODES)["QuantizeError"], p.stderr
    assert "could not quantize" in p.stderr and "Hint:" in p.stderr
    _nothing_half_written("wide", "Q8_0")


def _imatrix_for(model: Path, path: Path) -> Path:
    """An importance matrix for every 2-D weight of ``model`` in llama-imatrix's GGUF layout."""
    import gguf

    reader = gguf.GGUFReader(str(model))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["test"])
    w.add_uint32("imatrix.chunk_count", 4)
    w.add_uint32("imatrix.chunk_size", 64)
    rng = np.random.default_rng(7)
    for t in reader.tensors:
        if len(t.shape) == 2 and t.name.startswith("blk."):
            n = int(t.shape[0])  # the input dimension (ggml's ne0)
            w.add_tensor(t.name + ".in_sum2", (rng.random((1, n)) * 100).astype(np.float32) ** 2)
            w.add_tensor(t.name + ".counts", np.array([[256.0]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_an_importance_matrix_weights_the_quantization(stored_f32, wide_f32, tmp_path):
    plain = quantizer.quantize("wide:f32", "Q4_K_M")
    matrix = _imatrix_for(wide_f32, tmp_path / "wide.imatrix.gguf")
    weighted = quantizer.quantize("wide:f32", "Q4_K_M", imatrix=matrix, name="wide-imatrix")
    assert weighted.sha256 != plain.sha256  # the rounding followed the weights
    assert read_info(weighted.path).quant == "Q4_K_M"
    assert store.read_sidecar(weighted.path)["imatrix"] == "wide.imatrix.gguf"
    (tmp_path / "old.dat").write_bytes(b"\x01\x00\x00\x00junk")
    with pytest.raises(InvalidModelFileError) as info:
        quantizer.quantize("wide:f32", "Q4_K_M", imatrix=tmp_path / "old.dat", force=True)
    assert ".dat" in info.value.message


def test_a_registry_model_gets_a_quant_the_registry_does_not_list(wide_f32):
    api.import_model(wide_f32, name="smollm2-135m")  # under a registry name, as `slmrun quantize` leaves it
    m = quantizer.quantize("smollm2-135m:f32", "Q5_0")
    r = api.resolve("smollm2-135m:q5_0")  # not in models.toml
    assert r.path == m.path and r.quant == "Q5_0" and r.entry is not None


def test_cli_quantize(stored_f32):
    p = subprocess.run([*slmrun_cmd(), "quantize", "wide:f32", "--to", "q6_k"], capture_output=True, text=True,
                       env=os.environ.copy(), timeout=120)
    assert p.returncode == 0, p.stderr
    assert "wide:q6_k" in p.stdout
    assert "tensors" in p.stderr  # the progress, a line per twentieth when not a terminal
    listed = json.loads(subprocess.run([*slmrun_cmd(), "list", "--json"], capture_output=True, text=True,
                                       env=os.environ.copy(), check=True).stdout)
    assert {(m["name"], m["quant"]) for m in listed} == {("wide", "F32"), ("wide", "Q6_K")}
    p = subprocess.run([*slmrun_cmd(), "quantize", "wide:q6_k", "--to", "Q4_0"], capture_output=True, text=True,
                       env=os.environ.copy(), timeout=60)
    assert p.returncode == 2 and "--allow-requantize" in p.stderr
