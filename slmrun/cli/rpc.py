"""`slmrun rpc-server`: lend this machine's CPU to a model split across machines (llama.cpp's RPC)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Optional

import typer

from . import app, exit_code_for, fail


RPC_HELP = ("HOST:PORT[,HOST:PORT...] of `slmrun rpc-server`s: split the model's layers across them and "
            "this machine, by the memory each has.")


def rpc_option():
    return typer.Option(None, "--rpc", help=RPC_HELP)


def describe_placement(placement) -> str:
    from ..units import format_bytes
    return "; ".join(f"{dev} {n} layer{'s' if n != 1 else ''}" + (f" ({format_bytes(free)} free)" if free else "")
                     for dev, n, free in placement.summary())


def exit_on_rpc_failure() -> None:
    """Report a server that fails mid-run as main() reports errors (one line, the hint,
    the error's exit code) and end the process: llama.cpp cannot go on without it."""
    from ..runtime import rpc

    def handler(err) -> None:
        sys.stdout.flush()
        text = f"\nError: {err.message}\n" + (f"Hint: {err.hint}\n" if err.hint else "")
        os.write(2, text.encode("utf-8", "replace"))
        os._exit(exit_code_for(err))

    rpc.set_failure_handler(handler)


class _Stop(Exception):
    pass


def _on_sigterm(signum, frame):
    raise _Stop()


def _size(n: int) -> str:
    from ..units import format_bytes
    return format_bytes(n)


@app.command("rpc-server")
def rpc_server(
    host: str = typer.Option("127.0.0.1", "--host", "-H",
                             help="Address to listen on. Anything but 127.0.0.1 needs "
                                  "--i-understand-this-is-unauthenticated."),
    port: str = typer.Option("50052", "--port", "-p", help="TCP port to listen on."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t",
                                          help="CPU threads for the work clients send (default: this "
                                               "machine's usable cores)."),
    cache: bool = typer.Option(False, "--cache", "-c",
                               help="Keep tensors over 10 MiB that clients send in a local file cache, so the "
                                    "next load of the same model skips sending them (llama.cpp's --cache)."),
    unauthenticated: bool = typer.Option(False, "--i-understand-this-is-unauthenticated",
                                         help="Allow listening beyond this machine. The RPC protocol has no "
                                              "authentication: anyone who reaches the port can use this device."),
):
    """Serve this machine's CPU to `--rpc` clients: a model split across machines.

    Runs until Ctrl-C or SIGTERM. One client at a time; loopback only unless told otherwise.
    """
    from .. import config, hardware
    from ..runtime.ggml_backend import ggml
    from ..runtime.rpc import parse_port, require_rpc
    from ..runtime.rpc_server import UNSAFE_WARNING, RpcServer, check_bindable, resolve_bind_host

    port_n = parse_port(port)
    ip = resolve_bind_host(host)
    if ip != "127.0.0.1":
        typer.echo("\n" + UNSAFE_WARNING.format(host=host) + "\n", err=True)
        if not unauthenticated:
            fail(f"refusing to listen on {host} ({ip}) without --i-understand-this-is-unauthenticated",
                 "The RPC protocol has no authentication and llama.cpp calls it insecure: anyone who can "
                 "reach the port can use this device and read what it computes. Only on a network you "
                 "trust, add --i-understand-this-is-unauthenticated.", code=2)
    require_rpc()
    check_bindable(ip, port_n)
    profile = hardware.detect()
    n_threads = threads if threads is not None else profile.usable_cores
    if n_threads < 1:
        fail(f"--threads must be at least 1, not {n_threads}", code=2)
    cache_dir = config.home() / "rpc-cache" if cache else None

    def memory() -> tuple[int, int]:
        p = hardware.detect()
        return p.memory_available, p.memory_limit

    server = RpcServer(ip, port_n, threads=n_threads, cache_dir=cache_dir, memory=memory)
    proto = ".".join(map(str, ggml().proto_version()))
    typer.echo(f"slmrun rpc-server (llama.cpp RPC protocol {proto})")
    typer.echo(f"  endpoint : {server.endpoint}")
    for offer in server.offers:
        typer.echo(f"  device   : {offer.name} ({offer.description}): {_size(offer.free)} available "
                   f"of {_size(offer.total)}")
    typer.echo(f"  threads  : {n_threads}")
    typer.echo(f"  cache    : {cache_dir if cache_dir else 'off'}")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, _on_sigterm)
    code = 1
    try:
        server.start()
        reach = f"THIS-MACHINE'S-ADDRESS:{port_n}" if ip == "0.0.0.0" else server.endpoint
        typer.echo(f"Listening on {server.endpoint}, one client at a time; clients use `--rpc {reach}`. "
                   "Ctrl-C to stop.")
        sys.stdout.flush()
        while not server.wait(0.5):
            pass
        typer.echo("Error: llama.cpp's RPC server stopped on its own (its message is above).", err=True)
    except KeyboardInterrupt:
        code = 130
    except _Stop:
        code = 0
    if code != 1:
        typer.echo("rpc-server stopped.")
    sys.stdout.flush()
    sys.stderr.flush()
    # The serving thread sits in llama.cpp's accept()/recv() and cannot be joined; the
    # kernel closes its sockets with the process.
    os._exit(code)

