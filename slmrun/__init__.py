"""slmrun: run small language models locally, fast and offline.

    import slmrun
    with slmrun.load("smollm2-135m") as model:
        print(model.chat([{"role": "user", "content": "What is 2+2?"}], temperature=0).text)

The public API is what ``__all__`` lists. Everything is imported lazily so that
``import slmrun`` (and ``slmrun --help``) stays instant.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load": "slmrun.api", "pull": "slmrun.api", "list_models": "slmrun.api", "resolve": "slmrun.api",
    "import_model": "slmrun.api", "remove": "slmrun.api",
    "plan": "slmrun.planner",
    "create": "slmrun.custom.catalog", "copy": "slmrun.custom.catalog",
    "quantize": "slmrun.quantizer", "evaluate_perplexity": "slmrun.evaluate", "evaluate_classify": "slmrun.evaluate",
    "evaluate_extract": "slmrun.evaluate", "evaluate_generate": "slmrun.evaluate",
    "Model": "slmrun.runtime", "Response": "slmrun.runtime", "Stats": "slmrun.runtime",
    "Embeddings": "slmrun.runtime",
    "EmbeddingClassifier": "slmrun.classification",
    "knowledge_base": "slmrun.knowledge", "create_knowledge_base": "slmrun.knowledge",
    "list_knowledge_bases": "slmrun.knowledge", "remove_knowledge_base": "slmrun.knowledge",
    "KnowledgeBase": "slmrun.knowledge", "Answer": "slmrun.knowledge",
    # Every error (tests/test_api_surface.py checks that none is missing).
    **dict.fromkeys(("SlmrunError", "ModelNotFoundError", "ModelNotPulledError", "ModelFileNotFoundError",
                     "InvalidModelFileError", "UnsupportedModelError", "ModelLoadError", "ContextOverflowError", "InvalidArgumentError",
                     "RegistryError", "UnknownQuantError", "DownloadError", "OfflineError",
                     "RemoteFileNotFoundError", "ChecksumMismatchError", "InsufficientDiskSpaceError",
                     "InsufficientMemoryError", "StoreLockedError", "ChatFormatError", "ModelClosedError",
                     "QueueFullError", "GenerationError", "InvalidSchemaError", "InvalidGrammarError",
                     "UnsupportedSchemaError", "StructuredOutputError", "UnknownPromptFormatError",
                      "ChatTemplateError", "ModelCapabilityError", "TemplateTimeoutError", "TemplateMemoryError",
                      "TemplateOutputError", "RpcUnavailableError", "RpcServerError", "RpcBindError",
                      "VocabularyMismatchError", "QuantizeError", "ModelfileError", "InvalidAdapterError",
                      "ModelInUseError", "KnowledgeBaseNotFoundError", "KnowledgeBaseExistsError",
                      "KnowledgeBaseError", "NoDocumentsError"),
                    "slmrun.errors"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'slmrun' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
