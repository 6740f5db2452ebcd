"""The runtime: the only package that imports llama_cpp."""

from .model import Completion, LoadOptions, Model, Stats, set_llama_log, system_info

__all__ = ["Completion", "LoadOptions", "Model", "Stats", "set_llama_log", "system_info"]
