"""`slmrun chat`: an interactive chat loop (and a line-per-message mode for pipes)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from .. import config
from . import app
from .output import WordWrap
from .rpc import rpc_option
from .run import (FORMAT_HELP, check_sampling, format_verbose, load_for_cli, lora_option, no_server_option,
                  served_or_none, spec_option)

HELP = """Commands:
  /help                 this help
  /clear                forget the conversation (the system prompt stays)
  /system TEXT          set the system prompt (and start over)
  /set KEY VALUE        temperature | top_p | top_k | seed | max_tokens | ctx
  /show                 model, quant, context used / available, load settings
  /save FILE            save the conversation as JSON
  /load FILE            load a conversation saved with /save
  /stats                toggle per-reply stats (prompt eval, eval rate, time to first token)
  /bye, /exit           leave (Ctrl-D works too)
  \"\"\"                   start and end multi-line input
Ctrl-C stops an answer; at the prompt it leaves."""

_SETTABLE = {"temperature": float, "top_p": float, "top_k": int, "seed": int, "max_tokens": int, "ctx": int}


class ChatUI:
    def __init__(self, session, *, interactive: bool, show_stats: bool, out=sys.stdout, err=sys.stderr,
                 width=None):
        """`width`: a callable giving the terminal's columns, to wrap replies at word
        boundaries; None writes replies as they come (pipes)."""
        self.session, self.interactive, self.show_stats = session, interactive, show_stats
        self.out, self.err = out, err
        self.width = width
        self.warned_trim = False

    def say(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    # --- one user message -------------------------------------------------------------
    def reply(self, text: str) -> None:
        t0 = time.perf_counter()
        out = self.out
        response = wrap = None
        try:  # from here on, Ctrl-C stops the answer (the wrapper's first use imports rich)
            response = self.session.send(text)
            wrap = WordWrap(out.write, self.width()) if self.width else None
            write = wrap.write if wrap else out.write
            for piece in response:
                write(piece)
                out.flush()
        except KeyboardInterrupt:
            if response is not None:
                response.cancel()
                response.wait()  # the history gets the partial reply before the next message
            if wrap:
                wrap.close()
            out.write("\n")
            self.say("(stopped)")
            return
        finally:
            if self.session.last_dropped and not self.warned_trim:
                self.say("(the conversation outgrew the context: the oldest turns were dropped; /clear starts over)")
                self.warned_trim = True
        if wrap:
            wrap.close()
        out.write("\n")
        out.flush()
        if self.show_stats:
            served = getattr(self.session.model, "url", None)
            self.say(format_verbose(response.stats, time.perf_counter() - t0, served))

    # --- slash commands ---------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Handle a /command; False means leave."""
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        s = self.session
        if cmd in ("/bye", "/exit", "/quit"):
            return False
        if cmd in ("/help", "/?"):
            self.say(HELP)
        elif cmd == "/clear":
            s.conversation.clear()
            self.warned_trim = False
            self.say("Cleared the conversation.")
        elif cmd == "/system":
            s.conversation.system = arg or None
            s.conversation.clear()
            self.say("Set the system prompt." if arg else "Removed the system prompt.")
        elif cmd == "/set":
            self._set(arg)
        elif cmd == "/show" and getattr(s.model, "url", None):
            self.say(f"model:    {s.model.name}, served by slmrun serve at {s.model.url}\n"
                     f"context:  {s.model.n_ctx} tokens (the server's)\n"
                     f"sampling: {json.dumps({**s.model.defaults, **s.params})}")
        elif cmd == "/show":
            m = s.model
            messages = s.conversation.messages()
            used = s.count_tokens(messages) if messages else 0  # the chat template's count, or plain text's
            o = m.options
            self.say(f"model:    {m.name}  ({m.path})\n"
                     f"quant:    {m.info.quant if m.info else '?'}   arch: {m.info.architecture if m.info else '?'}\n"
                     f"context:  {used} / {m.n_ctx} tokens used   KV cached: {max(m.status()['cached_tokens'])}\n"
                     f"threads:  {o.n_threads}   batch: {o.n_batch}   flash attention: {o.flash_attn}   "
                     f"mmap: {o.use_mmap}\n"
                     f"sampling: {json.dumps({**getattr(m, 'defaults', {}), **s.params})}")
        elif cmd == "/save":
            if not arg:
                self.say("Usage: /save FILE")
            else:
                tmp = Path(arg + ".tmp")
                tmp.write_text(json.dumps(s.conversation.to_json(), indent=2))
                tmp.replace(arg)
                self.say(f"Saved {len(s.conversation.turns)} messages to {arg}.")
        elif cmd == "/load":
            self._load(arg)
        elif cmd == "/stats":
            self.show_stats = not self.show_stats
            self.say(f"Stats {'on' if self.show_stats else 'off'}.")
        else:
            self.say(f"Unknown command {cmd}. Type /help for the list.")
        return True

    def _set(self, arg: str) -> None:
        key, _, value = arg.partition(" ")
        if key not in _SETTABLE or not value.strip():
            self.say(f"Usage: /set {{{'|'.join(_SETTABLE)}}} VALUE")
            return
        try:
            v = _SETTABLE[key](value.strip())
        except ValueError:
            self.say(f"{key} must be a {_SETTABLE[key].__name__}, got {value.strip()!r}")
            return
        if key == "ctx":
            self._reload_ctx(v)
            return
        if key in ("temperature", "top_p", "max_tokens", "top_k") and v < 0:
            self.say(f"{key} must be >= 0")
            return
        self.session.params[key] = v
        self.say(f"Set {key} to {v}.")

    def _reload_ctx(self, n_ctx: int) -> None:
        from ..api import load
        from ..errors import SlmrunError
        old = self.session.model
        if getattr(old, "url", None):
            self.say(f"The server at {old.url} chose this model's context: restart `slmrun chat` with "
                     f"--no-server --ctx {n_ctx} to load one of your own.")
            return
        if old.placement is not None:  # its servers serve one client: no second copy while this one lives
            self.say("A model split over RPC servers keeps its context: restart `slmrun chat` with --ctx.")
            return
        try:
            new = load(old.path, n_ctx=n_ctx, n_threads=old.options.n_threads, n_parallel=1,
                       lora=[(a["path"], a["scale"]) for a in old.adapters])
        except SlmrunError as exc:
            self.say(f"Could not set ctx: {exc.message}")
            return
        # Keep the chat format the model was loaded with (a reload by path knows no
        # registry entry or import record); the template's output bound follows the new context.
        new.name, new.prompt_format, new.chat_format = old.name, old.prompt_format, getattr(old, "chat_format", None)
        new.customize(defaults=old.defaults, system=old.system_prompt, few_shot=old.few_shot)  # a created model's
        if old.chat_template:
            from ..template_sandbox import ChatTemplate
            new.chat_template = ChatTemplate(old.chat_template, origin=old.path.name, n_ctx=new.n_ctx)
        else:
            new.chat_template = None
        old.close()
        self.session.model = new
        self.say(f"Set ctx to {new.n_ctx} tokens.")

    def _load(self, arg: str) -> None:
        from ..chat import Conversation
        from ..errors import SlmrunError
        if not arg:
            self.say("Usage: /load FILE")
            return
        try:
            conv = Conversation.from_json(json.loads(Path(arg).read_text()))
        except (OSError, ValueError, SlmrunError) as exc:
            self.say(f"Could not load {arg}: {getattr(exc, 'message', exc)}")
            return
        self.session.conversation = conv
        self.say(f"Loaded {len(conv.turns)} messages from {arg}.")

    # --- input ------------------------------------------------------------------------
    def read_message(self) -> str | None:
        """One user message (multi-line between triple quotes); None at end of input."""
        line = input(">>> ")
        if not line.strip().startswith('"""'):
            return line
        first = line.strip()[3:]
        if first.endswith('"""'):
            return first[:-3]
        lines = [first] if first else []
        while True:
            nxt = input("... ")
            if nxt.rstrip().endswith('"""'):
                lines.append(nxt.rstrip()[:-3])
                return "\n".join(lines)
            lines.append(nxt)

    def loop(self) -> None:
        _setup_readline()
        self.say(f"Chatting with {self.session.model.name}. Type /help for commands, /bye to leave.")
        while True:
            try:
                text = self.read_message()
            except (EOFError, KeyboardInterrupt):
                self.out.write("\n")
                return
            if not text.strip():
                continue
            if text.strip().startswith("/") and not text.startswith("//"):
                if not self.command(text.strip()):
                    return
                continue
            self.reply(text)

    def piped(self, lines) -> None:
        for line in lines:
            text = line.rstrip("\n")
            if text.strip():
                self.reply(text)


def _setup_readline() -> None:
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input() still works
        return
    path = config.home() / "chat_history"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            readline.read_history_file(path)
        readline.set_history_length(1000)
        import atexit
        atexit.register(lambda: _save_history(readline, path))
    except OSError:
        pass


def _save_history(readline, path) -> None:
    try:
        readline.write_history_file(path)
    except OSError:
        pass


@app.command()
def chat(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="NAME[:QUANT] or a path to a .gguf."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt."),
    ctx: Optional[int] = typer.Option(None, "--ctx", help="Context size in tokens."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t", help="Default: the model's, else 0.8."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", "-n", help="Most tokens per reply "
                                             "(default: the model's num_predict, else 512)."),
    threads: Optional[int] = typer.Option(None, "--threads"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print stats after each reply."),
    force: bool = typer.Option(False, "--force", help="Load even if the model does not seem to fit in memory."),
    chat_format: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
    rpc: Optional[str] = rpc_option(),
    spec: str = spec_option(),
    lora: Optional[List[str]] = lora_option(),
    kb: Optional[str] = typer.Option(None, "--kb", help="Answer from this knowledge base, with sources "
                                     "(each message is a question; see `slmrun ask`)."),
    no_server: bool = no_server_option(),
):
    """Chat with a model. Reads one message per line when stdin is not a terminal."""
    from ..chat import ChatSession

    if kb is not None:
        from .kb import chat_kb
        chat_kb(kb, model, rerank=False, top_k=5)
        return

    check_sampling(**{k: v for k, v in dict(temperature=temperature, seed=seed, max_tokens=max_tokens).items()
                      if v is not None})
    m = served_or_none(model, spec, no_server=no_server, ctx=ctx, threads=threads, force=force, rpc=rpc, lora=lora,
                       chat_format=chat_format)
    extra = {"speculative": spec} if m is not None else {}  # a load option here, a request's option there
    if m is None:
        m = load_for_cli(model, ctx=ctx, threads=threads, seed=seed, force=force, chat_format=chat_format, rpc=rpc,
                         speculative=spec, lora=lora)
    with m:
        session = ChatSession(m, system=system, temperature=temperature, seed=seed, max_tokens=max_tokens, **extra)
        if session.plain:
            typer.echo(f"Note: {m.name} has no chat template and no prompt format fits it; using plain "
                       "completion (each message continues the text). --format NAME chooses a format.", err=True)
        interactive = sys.stdin.isatty()
        width = (lambda: shutil.get_terminal_size().columns) if interactive and sys.stdout.isatty() else None
        ui = ChatUI(session, interactive=interactive, show_stats=verbose, width=width)
        if interactive:
            ui.loop()
        else:
            ui.piped(sys.stdin)
