"""The public API is what slmrun.__all__ lists, and it includes every error the library raises."""

from __future__ import annotations

import inspect
import subprocess
import sys

import slmrun
from slmrun import errors


def test_every_error_is_exported():
    classes = {name for name, obj in vars(errors).items()
               if inspect.isclass(obj) and issubclass(obj, errors.SlmrunError)}
    assert {"ChatFormatError", "StoreLockedError", "SlmrunError"} <= classes
    assert classes <= set(slmrun.__all__)
    for name in classes:
        assert getattr(slmrun, name) is getattr(errors, name)


def test_every_exported_name_resolves_and_import_stays_light():
    for name in slmrun.__all__:
        assert getattr(slmrun, name) is not None, name
    code = "import sys, slmrun; print(sorted(m for m in ('llama_cpp', 'huggingface_hub', 'rich') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
