"""llama.cpp's C API through llama_cpp's ctypes bindings, without llama_cpp's high-level package.

``import llama_cpp`` runs the package's ``__init__``, which also imports its ``Llama``
class and with it numpy, jinja2, diskcache and the chat-format machinery: ~90 ms of a
~250 ms `slmrun run` that uses none of them (benchmarks/STARTUP.md). slmrun needs only
the ``llama_cpp.llama_cpp`` module (the C functions and constants), so ``lib()`` loads
that module under a package object whose ``__init__`` has not run yet. The first time
anything else asks that package for a name it lacks (``llama_cpp.Llama``,
``llama_cpp.__version__``, ``from llama_cpp import LlamaGrammar``), the real ``__init__``
runs on it then, so a program that uses both slmrun and llama_cpp's own classes sees the
whole package. (llguidance's llama.cpp tokenizer does that for every structured request.)
That ``__init__`` installs llama_cpp's own log callback over slmrun's; the functions in
``after_init`` (llama.py's: put slmrun's back) run once it has.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

_NAME = "llama_cpp"
after_init: list = []  # called (no arguments) once the package's real __init__ has run


def lib():
    """The ``llama_cpp.llama_cpp`` module: llama.cpp's functions and constants."""
    mod = sys.modules.get(f"{_NAME}.llama_cpp")
    if mod is not None:
        return mod
    if _NAME not in sys.modules:
        spec = importlib.util.find_spec(_NAME)
        if spec is None or spec.loader is None or not spec.submodule_search_locations:
            return importlib.import_module(f"{_NAME}.llama_cpp")  # an odd install: the ordinary way
        pkg = importlib.util.module_from_spec(spec)

        def complete(name: str):
            """PEP 562's hook: a name the bare package lacks; run its real __init__ once."""
            if name.startswith("__") and name != "__version__":
                raise AttributeError(name)  # introspection (__wrapped__, __file__ lookups...): not a reason
            pkg.__dict__.pop("__getattr__", None)
            spec.loader.exec_module(pkg)
            for fn in after_init:
                fn()
            try:
                return pkg.__dict__[name]
            except KeyError:
                raise AttributeError(f"module {_NAME!r} has no attribute {name!r}") from None

        pkg.__getattr__ = complete
        sys.modules[_NAME] = pkg
    return importlib.import_module(f"{_NAME}.llama_cpp")


def package_dir():
    """Where llama_cpp is installed (its shared libraries are in ``lib/`` there)."""
    from pathlib import Path

    return Path(lib().__file__).parent
