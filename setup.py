"""The build's one hook: models.toml lives at the repository's top level and ships inside
the package, as slmrun/models.toml in the wheel (the registry reads it from there).

Everything else about the build is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

REGISTRY = "models.toml"


class build_py_with_registry(build_py):
    """build_py, plus the top-level models.toml copied into the built package."""

    def _registry_target(self) -> str:
        return str(Path(self.build_lib, "slmrun", REGISTRY))

    def run(self):
        super().run()
        if not self.editable_mode:  # an editable install reads the file where it is
            self.copy_file(REGISTRY, self._registry_target())

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), self._registry_target()]

    def get_output_mapping(self):
        return {**super().get_output_mapping(), self._registry_target(): REGISTRY}


setup(cmdclass={"build_py": build_py_with_registry})
