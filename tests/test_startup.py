"""What `slmrun run` does at start: the modules it imports, the bindings, typer without pydantic.

Timings are in benchmarks/STARTUP.md; these tests check the means (what is imported, what is
cached), never a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Heavy modules `slmrun run --raw` uses none of (once the GGUF header is cached).
NOT_ON_THE_RUN_PATH = ("numpy", "pydantic", "gguf", "llama_cpp.llama", "jinja2", "diskcache", "psutil",
                       "starlette", "uvicorn", "huggingface_hub", "llguidance", "slmrun.server",
                       "slmrun.cli.bench", "slmrun.cli.serve", "slmrun.template_sandbox")

PROBE = r"""
import json, sys
from slmrun.cli import main
sys.argv = ["slmrun", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
sys.stdout.flush()
sys.stderr.write("MODULES " + json.dumps(sorted(sys.modules)) + "\n")
"""


def _run_and_list_modules(args: list[str]) -> tuple[str, set[str]]:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stderr.splitlines() if x.startswith("MODULES "))
    return out.stdout, set(json.loads(line[len("MODULES "):]))


def test_run_raw_imports_nothing_it_does_not_use(tiny_llama):
    args = ["run", "--raw", "-m", str(tiny_llama), "-n", "4", "-t", "0", "Hello"]
    first, _ = _run_and_list_modules(args)  # validates the header, and caches it
    again, modules = _run_and_list_modules(args)
    assert again == first and first.strip()
    assert "llama_cpp.llama_cpp" in modules and "slmrun.cli.run" in modules
    assert sorted(m for m in NOT_ON_THE_RUN_PATH if m in modules) == []


def test_the_bare_bindings_complete_into_the_whole_package_on_demand():
    code = r"""
import sys
from slmrun.runtime.binding import lib
lib().llama_backend_init()
assert "llama_cpp.llama" not in sys.modules and "numpy" not in sys.modules
import llama_cpp
assert llama_cpp.llama_cpp is lib()
print(llama_cpp.__version__, llama_cpp.Llama.__name__, "llama_cpp.llama" in sys.modules)
from llama_cpp import LlamaGrammar
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    version, cls, loaded = out.stdout.split()
    assert version[0].isdigit() and cls == "Llama" and loaded == "True"


def test_slmruns_log_stays_silent_after_llama_cpp_completes_itself(tiny_llama):
    """A structured request imports llguidance's llama.cpp tokenizer, which completes the package,
    whose __init__ installs llama_cpp's own (printing) log callback: slmrun's is put back."""
    code = r"""
import sys, slmrun
with slmrun.load(sys.argv[1], n_ctx=256, n_parallel=1) as m:
    import llama_cpp
    llama_cpp.Llama  # completes the package now
    m.complete("Hello", max_tokens=4).wait()
"""
    out = subprocess.run([sys.executable, "-c", code, str(tiny_llama)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "llama_context" not in out.stderr and "llama_model" not in out.stderr


def test_each_command_is_registered_by_the_module_named_for_it():
    from slmrun import cli

    cli._register([])  # every module
    by_module = {}
    for command in cli.app.registered_commands:
        name = command.name or command.callback.__name__.replace("_", "-")
        by_module[name] = command.callback.__module__.rsplit(".", 1)[1]
    for group in cli.app.registered_groups:  # `slmrun kb ...`: a group's commands come from its module
        modules = {c.callback.__module__.rsplit(".", 1)[1] for c in group.typer_instance.registered_commands}
        assert len(modules) == 1, (group.name, modules)
        by_module[group.name] = modules.pop()
    assert by_module == cli.COMMAND_MODULES


@pytest.mark.parametrize("args, message", [
    (["run", "-n", "abc", "Hi"], "'abc' is not a valid integer."),
    (["run", "--temperature", "warm", "Hi"], "'warm' is not a valid float."),
    (["run", "-n", "2.5", "Hi"], "'2.5' is not a valid integer."),
])
def test_plain_parameters_are_checked_without_pydantic(args, message):
    from conftest import slmrun_cmd

    out = subprocess.run([*slmrun_cmd(), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in " ".join(out.stderr.split())


def test_plain_conversions():
    from typing import Optional

    from slmrun.cli.params import _plain

    to_int, _ = _plain(Optional[int])
    assert to_int("12") == 12 and to_int(3) == 3
    with pytest.raises(ValueError):
        to_int(True)
    to_bool, _ = _plain(bool)
    assert to_bool("yes") is True and to_bool("0") is False and to_bool(False) is False
    assert _plain(Optional[Path])[0]("a/b") == Path("a/b")
    to_strs, _ = _plain(Optional[list[str]])  # a repeatable option (--lora A --lora B)
    assert to_strs(("a.gguf", "b.gguf:0.5")) == ["a.gguf", "b.gguf:0.5"] and to_strs(()) == []
    with pytest.raises(ValueError):
        to_strs("a.gguf")
    assert _plain(list[int]) is None and _plain(Optional[list[Path]]) is None


def test_memory_from_proc_meminfo_agrees_with_psutil():
    import psutil

    from slmrun.hardware.linux import memory

    if not os.path.isfile("/proc/meminfo"):
        pytest.skip("not Linux")
    total, available, swap = memory(Path("/"), True)
    vm = psutil.virtual_memory()
    assert total == vm.total and swap == psutil.swap_memory().total
    assert abs(available - vm.available) < 64 << 20  # read a moment apart
