"""Planning any local model: an imported name (its local quants) and a .gguf path, from GGUF metadata."""

from __future__ import annotations

import json
import subprocess

import pytest

import slmrun
from slmrun import api, planner
from slmrun.errors import InsufficientMemoryError, ModelNotFoundError, UnknownQuantError

from conftest import slmrun_cmd


@pytest.fixture(scope="module")
def two_quants(tiny_dir):
    """A bigger tiny llama in F32, and the same quantized to Q8_0 by llama.cpp itself."""
    import llama_cpp

    from tinymodels import write_tiny_gguf
    f32 = write_tiny_gguf(tiny_dir / "usb-model.F32.gguf", n_embd=256, n_layer=4, n_head=8, n_head_kv=4,
                          n_ff=1024, seed=11)
    q8 = tiny_dir / "usb-model.Q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    assert llama_cpp.llama_model_quantize(str(f32).encode(), str(q8).encode(), params) == 0
    return f32, q8


@pytest.fixture
def imported(two_quants):
    for path in two_quants:
        slmrun.import_model(path, name="usb-model")
    return two_quants


def _plan(*args):
    return subprocess.run([*slmrun_cmd(), "plan", *args], capture_output=True, text=True, timeout=120)


def test_an_imported_model_is_planned_from_its_local_files(imported):
    target, quant = api.plan_target("usb-model")
    assert quant is None and isinstance(target, planner.LocalModel)
    assert set(target.files) == {"F32", "Q8_0"} and target.spec.block_count == 4
    p = _plan("usb-model", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert {o["quant"] for o in data["options"]} == {"F32", "Q8_0"}
    assert data["quant"] == "Q8_0"  # within noise of F32's quality, a quarter of its bytes: the faster pick
    assert any("parallel slot" in r for r in data["reasons"]) and data["n_parallel"] >= 1
    text = _plan("usb-model").stdout
    assert "Pick: Q8_0" in text and "parallel slot" in text


def test_a_named_local_quant_and_an_unknown_one(imported):
    data = json.loads(_plan("usb-model:f32", "--json").stdout)
    assert data["quant"] == "F32"
    with pytest.raises(UnknownQuantError, match="no local quant Q4_0"):
        api.plan_target("usb-model:q4_0")
    p = _plan("usb-model:q4_0")
    assert p.returncode == 3 and "Local quants: F32, Q8_0" in p.stderr


def test_a_path_is_planned_from_that_file(two_quants):
    p = _plan(str(two_quants[1]), "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert [o["quant"] for o in data["options"]] == ["Q8_0"] and data["model"] == two_quants[1].name


def test_run_and_load_pick_what_the_plan_picks(imported):
    with slmrun.load("usb-model", n_ctx=256, n_parallel=1) as m:
        assert m.info.quant == "Q8_0" and m.name == "usb-model:q8_0"


def test_a_device_too_small_is_refused_the_same_way_as_for_registry_models(imported):
    p = _plan("usb-model", "--ram", "258M", "--cores", "2", "--arch", "x86_64")  # 2 MiB after the reserve
    assert p.returncode == 8 and "does not fit" in p.stderr and "Hint:" in p.stderr
    from slmrun import hardware
    with pytest.raises(InsufficientMemoryError):
        planner.plan(api.plan_target("usb-model")[0], hardware.custom(ram=258 << 20, cores=2, arch="x86_64"))


def test_a_name_neither_registered_nor_imported(isolated_home):
    with pytest.raises(ModelNotFoundError):
        api.plan_target("no-such-model")
    p = _plan("no-such-model")
    assert p.returncode == 3 and p.stderr.startswith("Error: unknown model 'no-such-model'")
