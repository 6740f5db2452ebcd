"""`slmrun run` and `slmrun chat`: generation from the command line."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from .. import config
from . import app, fail
from .rpc import describe_placement, rpc_option


def format_verbose(stats, total_s: float, served_by: str | None = None) -> str:
    """What Ollama's --verbose prints after a reply (and which server answered, if one did)."""
    def dur(s: float) -> str:
        return f"{s * 1000:.2f}ms" if s < 1 else f"{s:.3f}s"

    eval_s = stats.gen_s
    return "\n".join([
        *([f"served by:            slmrun serve at {served_by}"] if served_by else []),
        f"total duration:       {dur(total_s)}",
        f"load duration:        {dur(stats.load_s)}",
        f"prompt eval count:    {stats.prompt_eval_tokens} token(s)"
        + (f" ({stats.cached_tokens} cached)" if stats.cached_tokens else ""),
        f"prompt eval duration: {dur(stats.prompt_s)}",
        f"prompt eval rate:     {stats.prompt_tps:.2f} tokens/s",
        f"eval count:           {stats.generated_tokens} token(s)",
        f"eval duration:        {dur(eval_s)}",
        f"eval rate:            {stats.gen_tps:.2f} tokens/s",
        f"time to first token:  {dur(stats.ttft_s)}",
    ])


def check_sampling(**params) -> None:
    """Sampling options, checked before the model loads (a typo costs no load), each named
    as it was typed (--top-p, not top_p)."""
    from ..errors import InvalidArgumentError
    from ..runtime.params import make_params

    try:
        make_params(**params)
    except InvalidArgumentError as exc:
        name = exc.message.split(" ", 1)[0]
        if name in params:
            raise InvalidArgumentError("--" + name.replace("_", "-") + exc.message[len(name):],
                                       hint=exc.hint or None) from None
        raise


FORMAT_HELP = ("Chat with this prompt format instead of the model's own: chatml, llama3, gemma, zephyr, "
               "mistral, phi3, phi2, ... ('none' for plain completion).")


SPEC_HELP = ("Prompt-lookup speculative decoding: auto (drafts where this machine's measured step costs say "
             "they pay), on, or off.")


def spec_option():
    return typer.Option("auto", "--spec", help=SPEC_HELP)


LORA_HELP = "A LoRA adapter (GGUF) to apply, FILE or FILE:SCALE (llama.cpp's --lora / --lora-scaled); repeatable."


def lora_option():
    return typer.Option(None, "--lora", help=LORA_HELP)


def parse_lora(values) -> list[tuple[str, float]]:
    """--lora FILE[:SCALE] values as (path, scale)."""
    if not values:
        return []
    from ..custom.modelfile import split_scale

    out = []
    for value in values or ():
        path, scale = split_scale(value)
        if scale is None:
            fail(f"--lora {value}: the scale after ':' must be a number", "Example: --lora style.gguf:0.5", 2)
        out.append((path, scale))
    return out


NO_SERVER_HELP = "Load the model here even when a running `slmrun serve` (at $SLMRUN_HOST) has it loaded."


def no_server_option():
    return typer.Option(False, "--no-server", help=NO_SERVER_HELP)


def served_or_none(model: Optional[str], spec: str, **given):
    """The model as a running `slmrun serve` on this machine has it loaded, when none of the
    options ``given`` needs a model of one's own (client.why_local); else None: load it.
    ``spec`` (--spec) is checked here, as a load would check it."""
    from ..client.discover import why_local
    from ..runtime.speculative import check_mode

    check_mode(spec)
    if why_local(**given) is not None:
        return None
    from ..client import served_model

    return served_model(model)


def load_for_cli(model: Optional[str], *, ctx: Optional[int], threads: Optional[int], seed: Optional[int],
                 force: bool = False, chat_format: Optional[str] = None, announce: bool = True,
                 rpc: Optional[str] = None, n_parallel: Optional[int] = 1, speculative: str = "auto", lora=None,
                 kv_unified: bool = False):
    from ..api import load
    if force:
        typer.echo("Warning: --force skips the memory check; the model may not fit.", err=True)
    if rpc is not None:
        from .rpc import exit_on_rpc_failure
        exit_on_rpc_failure()  # a server lost mid-reply: one line and the exit code, not a stuck terminal
    # One person at a terminal sends one request at a time: one slot, no KV cache for others
    # (n_parallel=None for bulk commands: the planner's slots).
    m = load(model or config.default_model(), n_ctx=ctx, n_threads=threads, seed=seed, force=force,
             chat_format=chat_format, n_parallel=n_parallel, rpc=rpc, speculative=speculative, lora=parse_lora(lora),
             kv_unified=kv_unified)
    if m.placement is not None:
        typer.echo(f"Split: {describe_placement(m.placement)}", err=True)
    choice = getattr(m, "chat_format", None)
    if announce and choice is not None and choice.source == "inferred":
        typer.echo(f"Note: {m.name} has no chat template; using the {choice.fmt.name} prompt format, "
                   f"inferred because {choice.reason} (--format NAME chooses another).", err=True)
    return m


@app.command()
def run(
    prompt: str = typer.Argument(..., help="The prompt; '-' reads it from stdin."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="NAME[:QUANT] or a path to a .gguf "
                                        "(default: $SLMRUN_MODEL or smollm2-135m)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", "-n", help="Most tokens to generate "
                                             "(default: the model's num_predict, else 512)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t", help="0 = greedy, deterministic "
                                                "(default: the model's, else 0.8)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Default: the model's, else 0.95."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Default: the model's, else 40."),
    repeat_penalty: Optional[float] = typer.Option(None, "--repeat-penalty", help="Penalise recent tokens "
                                                   "(1.0 = off; default: the model's, else 1.1 for --json-schema/"
                                                   "--grammar, else off)."),
    dry_multiplier: Optional[float] = typer.Option(None, "--dry-multiplier", help="DRY: penalise repeating "
                                                   "what the reply already said (0 = off; default: the model's, "
                                                   "else 0.8 constrained, else off)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Fix the sampling seed for repeatable output."),
    ctx: Optional[int] = typer.Option(None, "--ctx", help="Context size in tokens (default: the model's, capped)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: the performance cores)."),
    raw: bool = typer.Option(False, "--raw", help="Send the prompt as plain text, without the chat template."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print timings and rates after the answer."),
    force: bool = typer.Option(False, "--force", help="Load even if the model does not seem to fit in memory."),
    chat_format: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP + " 'json': the reply is "
                                              "any JSON object (as Ollama's --format json)."),
    json_schema: Optional[Path] = typer.Option(None, "--json-schema", help="A JSON Schema file: the reply is "
                                               "constrained to it and checked against it."),
    grammar: Optional[Path] = typer.Option(None, "--grammar", help="A grammar file (llguidance's Lark syntax, "
                                           "or GBNF) the reply is constrained to."),
    rpc: Optional[str] = rpc_option(),
    spec: str = spec_option(),
    lora: Optional[List[str]] = lora_option(),
    no_server: bool = no_server_option(),
):
    """Answer one prompt, streaming the reply to stdout. When a `slmrun serve` on this machine
    has the model loaded, it answers (no load here), as `ollama run` asks its server."""
    t0 = time.perf_counter()
    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        fail("the prompt is empty", "Give a prompt, or '-' to read it from stdin.", 2)
    given = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                 repeat_penalty=repeat_penalty, dry_multiplier=dry_multiplier)
    params = {k: v for k, v in given.items() if v is not None}  # the rest: the model's own, else the defaults
    check_sampling(**params)
    json_object = chat_format is not None and chat_format.strip().lower() == "json"
    params.update(structured_params(json_schema, grammar, json_object))
    # --raw never chats: "none" spares the chat template's sandbox worker (a process start
    # that would contend with the load for the cores).
    fmt = "none" if raw else (None if json_object else chat_format)
    served = served_or_none(model, spec, no_server=no_server, ctx=ctx, threads=threads, force=force, rpc=rpc, lora=lora,
                            chat_format=None if raw else chat_format, grammar=grammar)
    if served is not None:
        params["speculative"] = spec  # a load option here, a request's option there
    with served or load_for_cli(model, ctx=ctx, threads=threads, seed=seed, force=force,
                                chat_format=fmt, announce=not raw, rpc=rpc, speculative=spec, lora=lora) as m:
        if "max_tokens" not in params and "max_tokens" not in m.defaults:
            params["max_tokens"] = 512
        if raw:
            response = m.complete(prompt, **params)
        else:
            response = m.chat([{"role": "user", "content": prompt}], **params)
        stream_to(response, sys.stdout)
        response.check()  # a constrained reply cut short or not valid is an error, never a quiet success
    if verbose:
        typer.echo(format_verbose(response.stats, time.perf_counter() - t0, served and served.url), err=True)


def structured_params(json_schema: Optional[Path], grammar: Optional[Path], json_object: bool = False) -> dict:
    """--json-schema FILE / --grammar FILE / --format json as generation keywords."""
    out = {}
    for key, path in (("json_schema", json_schema), ("grammar", grammar)):
        if path is not None:
            try:
                out[key] = path.read_text(encoding="utf-8")
            except OSError as exc:
                fail(f"cannot read --{key.replace('_', '-')} {path}: {exc.strerror}", "Check the path.", 2)
    if json_object:
        out["json_object"] = True
    return out


def stream_to(response, out):
    """Write each piece as it comes, then a newline; Ctrl-C cancels the generation."""
    write, flush = out.write, out.flush
    try:
        for piece in response:
            write(piece)
            flush()
    except BaseException:
        response.cancel()
        raise
    write("\n")
    flush()
    return response
