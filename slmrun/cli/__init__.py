"""The `slmrun` command: a thin layer over the library.

Commands parse arguments, call the API, and format. Library errors become one-line
messages with a hint and a distinct exit code here, and only here; SLMRUN_DEBUG=1
shows the traceback instead.
"""

from __future__ import annotations

import sys

import typer

from .. import config
from .. import errors as E

app = typer.Typer(
    name="slmrun",
    help="Run small language models locally: fast, offline, sized to your machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Exit codes by error class (first match wins); 1 for anything else we raise.
EXIT_CODES = (
    (E.ModelNotFoundError, 3), (E.ModelNotPulledError, 3), (E.UnknownQuantError, 3),
    (E.ModelFileNotFoundError, 4), (E.InvalidModelFileError, 5), (E.ModelLoadError, 6),
    (E.ContextOverflowError, 7), (E.InsufficientMemoryError, 8), (E.ChecksumMismatchError, 9),
    (E.DownloadError, 10), (E.InsufficientDiskSpaceError, 11), (E.RegistryError, 12),
    (E.StoreLockedError, 13), (E.ChatFormatError, 14), (E.InvalidArgumentError, 2),
    (E.InvalidSchemaError, 2), (E.InvalidGrammarError, 2), (E.UnsupportedSchemaError, 2),
    (E.StructuredOutputError, 15), (E.QueueFullError, 16), (E.ModelClosedError, 1), (E.GenerationError, 6),
    (E.RpcUnavailableError, 17), (E.RpcServerError, 18), (E.RpcBindError, 19), (E.ModelCapabilityError, 20),
    (E.QuantizeError, 21), (E.ModelInUseError, 22),
    (E.KnowledgeBaseNotFoundError, 23), (E.KnowledgeBaseExistsError, 24), (E.KnowledgeBaseError, 25),
    (E.NoDocumentsError, 26),
)


def exit_code_for(exc: BaseException) -> int:
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), 1)


def fail(message: str, hint: str = "", code: int = 1):
    typer.echo(f"Error: {message}", err=True)
    if hint:
        typer.echo(f"Hint: {hint}", err=True)
    raise typer.Exit(code)


@app.callback()
def _group() -> None:
    # A group even when one command is registered (see _register): typer runs a lone
    # command as the whole program, which would read `run` as its first argument.
    pass


# Which module adds each command. A command line that names one imports only that module
# (and what it imports): `slmrun run` need not import the server's or bench's modules nor
# have typer build their options (benchmarks/STARTUP.md); anything else imports them all.
COMMAND_MODULES = {"run": "run", "chat": "chat", "bench": "bench", "embed": "embed", "pull": "models",
                   "list": "models", "rm": "models", "import": "models", "show": "models", "rpc-server": "rpc", "serve": "serve",
                   "ps": "serve", "stop": "serve", "hw": "system", "plan": "system", "classify": "tasks",
                   "extract": "tasks", "eval": "evaluate", "quantize": "quantize", "create": "models",
                   "cp": "models", "kb": "kb", "ask": "kb"}


def _register(argv: list[str] | None = None) -> None:
    import importlib

    argv = sys.argv[1:] if argv is None else argv
    wanted = COMMAND_MODULES.get(argv[0]) if argv else None
    for name in [wanted] if wanted else sorted(set(COMMAND_MODULES.values())):
        importlib.import_module(f"{__name__}.{name}")  # each module adds its commands to `app`


def main() -> None:
    from .params import install

    install()  # plain values converted without typer's pydantic adapters
    _register()
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        sys.exit(130)
    except E.SlmrunError as exc:
        if config.debug():
            raise
        typer.echo(f"Error: {exc.message}", err=True)
        if exc.hint:
            typer.echo(f"Hint: {exc.hint}", err=True)
        sys.exit(exit_code_for(exc))
    except BrokenPipeError:
        # `slmrun run ... | head`: the reader left; not an error.
        sys.exit(0)
    except Exception as exc:  # a bug of ours: one line, the traceback on request
        if config.debug():
            raise
        typer.echo(f"Error: unexpected {type(exc).__name__}: {exc}", err=True)
        typer.echo("Hint: run again with SLMRUN_DEBUG=1 for the traceback, and please report it.", err=True)
        sys.exit(1)
