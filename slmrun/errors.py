"""Every error slmrun raises.

Each class also subclasses the builtin a caller would naturally catch (KeyError for
an unknown model, FileNotFoundError for a missing file, ...), so code that does not
know slmrun still handles them sensibly. Every error carries a ``hint``: the next
step for the user. The CLI prints ``message`` and ``hint`` on one line each; nothing
in the library prints.
"""

from __future__ import annotations


class SlmrunError(Exception):
    """Base class. ``hint`` says what to do next."""

    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.message


class ModelNotFoundError(SlmrunError, KeyError):
    """A name that is neither in the registry nor in the store."""

    default_hint = "Run `slmrun list` to see local models, or `slmrun pull NAME` to fetch one."


class ModelNotPulledError(SlmrunError, FileNotFoundError):
    """A registry model (or quant) that is known but not in the local store."""


class ModelFileNotFoundError(SlmrunError, FileNotFoundError):
    """A path given by the user does not exist."""

    default_hint = "Check the path, or use a registry name (`slmrun list`)."


class InvalidModelFileError(SlmrunError, ValueError):
    """A file that is not GGUF, or a GGUF that is truncated or corrupt."""

    default_hint = "Download the file again (`slmrun pull NAME --force`) or check where it came from."


class UnsupportedModelError(InvalidModelFileError):
    """A Hugging Face model directory of an architecture slmrun cannot convert to GGUF."""

    default_hint = ("Convert it with llama.cpp's convert_hf_to_gguf.py (or download a .gguf build) and run "
                    "`slmrun import FILE.gguf`.")


class ModelLoadError(SlmrunError, RuntimeError):
    """llama.cpp refused the model (unsupported architecture, out of memory, ...)."""

    default_hint = "Set SLMRUN_DEBUG=1 and run again with --verbose to see llama.cpp's log."


class ContextOverflowError(SlmrunError, ValueError):
    """The prompt (plus what must be generated) does not fit the context window."""

    default_hint = "Shorten the prompt or raise the context with --ctx."


class InvalidArgumentError(SlmrunError, ValueError):
    """A parameter out of range (negative token counts, too many threads, ...)."""


class ModelCapabilityError(SlmrunError, ValueError):
    """A task the model cannot do: text from an embedding-only model, embeddings from one that
    gives none."""

    default_hint = ("Embedding models (`slmrun list` marks them) embed: `slmrun embed`, model.embed(); "
                    "chat and completion need a generative model such as smollm2-135m.")


class ModelClosedError(SlmrunError, RuntimeError):
    """The model was closed: before a call, or while a request was still running."""

    default_hint = "Load the model again with slmrun.load()."


class QueueFullError(SlmrunError, RuntimeError):
    """Every slot is busy and the waiting queue is at its limit (``max_queue``)."""

    default_hint = "Try again shortly, or load with a larger max_queue or more parallel slots (n_parallel)."


class GenerationError(SlmrunError, RuntimeError):
    """llama.cpp failed while decoding a request (the model stays usable for others)."""

    default_hint = "Set SLMRUN_DEBUG=1 to see llama.cpp's log; a smaller context or fewer slots may help."


class RegistryError(SlmrunError, ValueError):
    """models.toml (or the user's registry file) is malformed or unsafe."""

    default_hint = "Fix the file named above; see README.md, section 'Registry', for the schema."


class UnknownQuantError(SlmrunError, KeyError):
    """A quant the model does not publish."""


class DownloadError(SlmrunError, ConnectionError):
    """A fetch failed (network, server error, missing remote file)."""

    default_hint = ("Check the network and try again (downloads resume). "
                    "Without a network, copy the .gguf over by hand and run `slmrun import PATH`.")


class OfflineError(DownloadError):
    """A fetch was needed but the hub cannot be reached or offline mode is on."""


class RemoteFileNotFoundError(DownloadError, FileNotFoundError):
    """The server says the file or repository does not exist (404)."""

    default_hint = "The registry entry may be out of date; check the repo and file name."


class ChecksumMismatchError(SlmrunError, ValueError):
    """A downloaded or stored file whose SHA-256 (or size) is not what it must be."""

    default_hint = "Nothing was stored. Run the pull again; if it keeps failing, the source has changed."


class InsufficientDiskSpaceError(SlmrunError, OSError):
    """Not enough free disk for a download or import."""

    default_hint = "Free some space, or point SLMRUN_HOME at a larger disk."


class InsufficientMemoryError(SlmrunError, MemoryError):
    """No quantization of the model fits this machine's memory."""

    default_hint = "Use a smaller model or context (--ctx), or pass --force to load anyway."


class StoreLockedError(SlmrunError, TimeoutError):
    """Another process holds the lock on a model file for too long."""

    default_hint = "Another slmrun is pulling this model; wait for it to finish, then try again."


class ChatFormatError(SlmrunError, ValueError):
    """A model with neither a chat template in its GGUF nor a prompt format in the registry."""

    default_hint = ("Name a prompt format with --format NAME (chatml, llama3, gemma, zephyr, ...), use plain "
                    "completion (`slmrun run --raw`), or add a prompt_format for the model in your registry file.")


class UnknownPromptFormatError(InvalidArgumentError):
    """A prompt format name that is not one of slmrun's named formats."""


class ChatTemplateError(ChatFormatError):
    """A GGUF chat template that does not compile, fails, or tried something unsafe."""

    default_hint = ("Chat with one of slmrun's named prompt formats instead: --format NAME "
                    "(chatml, llama3, gemma, zephyr, ...).")


class TemplateTimeoutError(ChatTemplateError, TimeoutError):
    """A chat template still rendering when its time ran out (it was stopped)."""


class TemplateMemoryError(ChatTemplateError, MemoryError):
    """A chat template that allocated more memory than rendering is allowed."""


class TemplateOutputError(ChatTemplateError):
    """A chat template whose output grew past the size bound."""


class InvalidSchemaError(SlmrunError, ValueError):
    """A JSON Schema that is not JSON, not a schema object, or fails the JSON Schema metaschema."""

    default_hint = ("Fix the schema at the place named above; check it with any JSON Schema validator "
                    "(e.g. `python -m jsonschema`), or see https://json-schema.org/understanding-json-schema.")


class InvalidGrammarError(SlmrunError, ValueError):
    """A grammar that neither llguidance's Lark syntax nor llama.cpp's GBNF accepts."""

    default_hint = ("Fix the grammar at the place named above. The syntax is llguidance's Lark-like one "
                    "(https://github.com/guidance-ai/llguidance/blob/main/docs/syntax.md) or llama.cpp's GBNF.")


class UnsupportedSchemaError(SlmrunError, ValueError):
    """A valid schema using a feature the grammar engine cannot enforce: refused before generating."""

    default_hint = ("Remove or simplify the feature named above (or validate that part yourself after "
                    "generation); https://github.com/guidance-ai/llguidance/blob/main/docs/json_schema.md "
                    "lists what is supported.")


class StructuredOutputError(SlmrunError, ValueError):
    """Generated text that is incomplete, not JSON, or does not validate against the schema."""

    default_hint = ("Raise max_tokens so the value can finish, or tighten the schema "
                    "(maxLength, maxItems, enum) so it stays short.")


RPC_REINSTALL = 'CMAKE_ARGS="-DGGML_RPC=ON" pip install --force-reinstall --no-cache-dir llama-cpp-python'


class RpcUnavailableError(SlmrunError, RuntimeError):
    """The installed llama-cpp-python was built without llama.cpp's RPC backend."""

    default_hint = (f"Reinstall it with the RPC backend: {RPC_REINSTALL} "
                    "(or `make setup` in a checkout of slmrun).")


class RpcServerError(SlmrunError, ConnectionError):
    """An RPC server that is not there, refuses, is busy, speaks another protocol, or went away."""

    default_hint = ("Start it on that machine with `slmrun rpc-server --host ADDRESS --port PORT` "
                    "(or llama.cpp's ggml-rpc-server), and check the address and any firewall between.")


class RpcBindError(SlmrunError, OSError):
    """`slmrun rpc-server` cannot listen where it was asked to."""

    default_hint = "Choose another port with --port, or stop the program that holds this one."


class VocabularyMismatchError(InvalidArgumentError):
    """Two models compared token by token (KL divergence) whose vocabularies differ."""

    default_hint = "Compare quants of one model: the same GGUF conversion, another quant."


class QuantizeError(SlmrunError, RuntimeError):
    """llama.cpp's quantizer failed on a file (nothing was stored)."""

    default_hint = "Set SLMRUN_DEBUG=1 to see llama.cpp's log; check that the source file is complete."


class ModelfileError(InvalidArgumentError):
    """A Modelfile (or /api/create request) that cannot be read or means nothing slmrun can
    do; ``line`` is where, when it came from a file (also in the message, as Ollama gives it)."""

    default_hint = "Fix the line named above; `slmrun show --modelfile NAME` prints a created model's."

    def __init__(self, message: str, *, hint: str | None = None, line: int | None = None):
        super().__init__(message, hint=hint)
        self.line = line


class InvalidAdapterError(InvalidModelFileError):
    """A LoRA adapter file that is not a GGUF adapter, is damaged, or does not fit the model."""

    default_hint = ("Use a GGUF LoRA adapter made for this base model (llama.cpp's "
                    "convert_lora_to_gguf.py writes one from a PEFT adapter).")


class ModelInUseError(SlmrunError, RuntimeError):
    """A model that created models are built on: removing it would break them."""

    default_hint = "Remove the models built on it first (`slmrun rm NAME`), or pass --force."
class KnowledgeBaseNotFoundError(SlmrunError, KeyError):
    """A knowledge base name with no index under slmrun's home."""

    default_hint = "Run `slmrun kb list` to see them, or `slmrun kb create NAME PATH...` to make one."


class KnowledgeBaseExistsError(SlmrunError, FileExistsError):
    """`kb create` with a name that is already taken."""

    default_hint = "Run `slmrun kb update NAME` to re-index it, or `slmrun kb rm NAME` first, or pick another name."


class KnowledgeBaseError(SlmrunError, RuntimeError):
    """A knowledge base that cannot be read or written: damaged, made by a newer slmrun, or busy."""

    default_hint = "Rebuild it: `slmrun kb rm NAME` then `slmrun kb create NAME PATH...`."


class NoDocumentsError(SlmrunError, ValueError):
    """Nothing indexable in the paths given (every file skipped, or none there)."""

    default_hint = ("Give Markdown, text, HTML, PDF, CSV or JSONL files (or folders holding them); "
                    "the lines above say why each file was skipped.")
