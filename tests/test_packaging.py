"""What an installed slmrun carries and needs: models.toml lives at the repository's top
level and must reach both a wheel install and an editable one (the test suite runs in the
latter); every package the code imports is declared in pyproject.toml.

The wheel is built by pip from a copy of the files a source distribution holds, so the
check also covers MANIFEST.in, and installed with --no-deps into a throwaway venv; the
venv borrows this environment's dependencies through PYTHONPATH, whose directory holds
no slmrun package of its own (the editable install is a finder, not files).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

SDIST_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "models.toml")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SDIST_FILES:
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "slmrun", src / "slmrun", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(out),
                        "--disable-pip-version-check"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    (whl,) = out.glob("slmrun-*.whl")
    return whl


@pytest.mark.slow
def test_the_wheel_carries_models_toml_once(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.endswith("models.toml")] == ["slmrun/models.toml"]
    assert zipfile.ZipFile(wheel).read("slmrun/models.toml") == (REPO / "models.toml").read_bytes()
    record = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("dist-info/RECORD"))).decode()
    assert "slmrun/models.toml," in record


@pytest.mark.slow
def test_an_installed_wheel_reads_its_registry(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    p = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                        "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    code = ("import slmrun, slmrun.registry as r; p = r.builtin_registry(); "
            "print(slmrun.__file__); print(p); print(len(r.load_registry().models))")
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    p = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, env=env,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    package_file, registry_path, n_models = p.stdout.split()
    installed = Path(package_file).parent
    assert env_dir in installed.parents  # the wheel's package, not this checkout's
    assert Path(registry_path) == installed / "models.toml"
    from slmrun.registry import load_registry
    assert int(n_models) == len(load_registry().models)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports(folder: Path) -> dict[str, str]:
    """Top-level names imported (absolutely) by the .py files under `folder` -> one file that does."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        if any(part.startswith("_") for part in path.relative_to(folder).parts[:-1]):
            continue  # benchmarks/_build/, _work/: llama.cpp's source and old checkouts, not ours
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("folder, groups", [("slmrun", ()), ("tests", ("test",)), ("benchmarks", ("bench",))])
def test_every_imported_package_is_declared(folder, groups):
    import importlib.metadata as md
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = project["dependencies"] + [r for g in groups for r in project["optional-dependencies"][g]]
    declared = {_canonical(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements}
    local = {"slmrun"} | {p.stem for p in (REPO / folder).glob("*.py")}
    if folder == "benchmarks":  # benchmarks reuse the tests' helpers (tiny models, the server harness)
        local |= {p.stem for p in (REPO / "tests").glob("*.py")}
    owners = md.packages_distributions()
    missing = {}
    for name, where in _imports(REPO / folder).items():
        if name in sys.stdlib_module_names or name in local:
            continue
        dists = {_canonical(d) for d in owners.get(name, [name])}
        if not dists & declared:
            missing[name] = where
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"
