"""A model split across machines with llama.cpp's RPC backend (ggml-rpc).

The loader's side, in order::

    placement = rpc.place(gguf_path, rpc.parse_endpoints("10.0.0.2:50052,10.0.0.3:50052"))
    params = llama_cpp.llama_model_default_params()
    placement.apply(params)            # devices, n_gpu_layers, tensor_split, split_mode
    with placement.watch("loading"):   # no hang if a server dies or freezes while loading
        model = llama_cpp.llama_model_load_from_file(path, params)
    ctx = llama_cpp.llama_init_from_model(model, ctx_params)
    placement.connected()              # keepalive on llama.cpp's sockets to the servers
    with placement.watch():            # around every call that waits on the servers: llama_decode,
        llama_cpp.llama_decode(ctx, batch)  # and what reads its results (sampling, llama_get_logits*,
    with placement.watch():                 # llama_synchronize): over RPC the decode is asynchronous
        token = llama_cpp.llama_sampler_sample(sampler, ctx, -1)

Layers go as llama.cpp's own ``--rpc`` puts them (``-ngl``, ``--tensor-split``): the
first ones on the local CPU, the rest across the servers' devices, each share
proportional to the memory its device has free (``load(rpc=)`` passes the planner's split
instead: the same rule over each device's budget). The input embedding always stays local.

The servers are not added to ggml's global device list (``ggml_backend_register``, as
llama.cpp's ``--rpc`` does) unless asked: llama.cpp gives every registered RPC device to
every model loaded without an explicit device list, so a later local model would connect
to (and die with) servers it never needed. ``apply()`` passes the devices explicitly.
"""

from __future__ import annotations

import ctypes
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from .. import config
from ..errors import InvalidArgumentError, RpcServerError, RpcUnavailableError
from ..planner.split import assign_layers, split_layers  # noqa: F401  (pure; re-exported)
from . import rpc_guard
from .rpc_guard import Watchdog, set_failure_handler  # noqa: F401  (part of this module's API)

MAX_SERVERS = 16  # GGML_RPC_MAX_SERVERS
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def rpc_available() -> bool:
    """Whether the installed llama-cpp-python has the RPC backend (-DGGML_RPC=ON)."""
    try:
        from .ggml_backend import ggml
        g = ggml()
    except (ImportError, OSError, AttributeError):
        return False
    return bool(g.rpc_reg) and all(g.get_proc_address(g.rpc_reg, name) for name in
                                   (b"ggml_backend_rpc_add_server", b"ggml_backend_rpc_start_server"))


def require_rpc() -> None:
    if not rpc_available():
        raise RpcUnavailableError("this llama-cpp-python was built without llama.cpp's RPC backend "
                                  "(needed for --rpc and rpc-server)")


# ---------------------------------------------------------------- endpoints

class Endpoint(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_port(text: str | int, *, where: str = "") -> int:
    text = str(text).strip()
    hint = "Give a TCP port between 1 and 65535, e.g. 50052."
    where = f" (in {where!r})" if where else ""
    if not text.isdigit():
        raise InvalidArgumentError(f"port {text!r} is not a number{where}", hint=hint)
    port = int(text)
    if not 1 <= port <= 65535:
        raise InvalidArgumentError(f"port {port} is out of range 1-65535{where}", hint=hint)
    return port


def parse_endpoints(spec: str | Iterable[str]) -> list[Endpoint]:
    """``"host:port,host:port"`` (or a list of such strings) into endpoints, checked.

    Hosts are IPv4 addresses or host names: llama.cpp's RPC client resolves with
    gethostbyname and connects over IPv4 only."""
    items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in str(s).split(",")]
    hint = "Name each server as HOST:PORT, comma-separated, e.g. --rpc 192.168.1.20:50052,192.168.1.21:50052."
    if not any(i.strip() for i in items):
        raise InvalidArgumentError("no RPC servers given", hint=hint)
    out: list[Endpoint] = []
    for raw in items:
        item = raw.strip()
        if not item:
            raise InvalidArgumentError(f"empty entry in the RPC server list {spec!r}", hint=hint)
        if item.startswith("[") or item.count(":") > 1:
            raise InvalidArgumentError(f"{item!r}: llama.cpp's RPC backend connects over IPv4 only",
                                       hint="Use the server's IPv4 address or host name.")
        host, sep, port = item.rpartition(":")
        if not sep or not host:
            raise InvalidArgumentError(f"{item!r} has no port" if not sep else f"{item!r} has no host", hint=hint)
        if not _valid_host(host):
            raise InvalidArgumentError(f"{host!r} is not a valid IPv4 address or host name (in {item!r})", hint=hint)
        ep = Endpoint(host, parse_port(port, where=item))
        if ep in out:
            raise InvalidArgumentError(f"RPC server {ep} is named twice", hint=hint)
        out.append(ep)
    if len(out) > MAX_SERVERS:
        raise InvalidArgumentError(f"{len(out)} RPC servers given; llama.cpp takes at most {MAX_SERVERS}", hint=hint)
    return out


def _valid_host(host: str) -> bool:
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)
        except ValueError:
            return False
    return bool(_HOSTNAME.match(host))


def resolve(ep: Endpoint) -> str:
    """The IPv4 address llama.cpp will connect to."""
    try:
        return socket.gethostbyname(ep.host)
    except (socket.gaierror, UnicodeError) as exc:
        raise RpcServerError(f"RPC server {ep}: cannot resolve host {ep.host!r} ({exc})",
                             hint="Check the name, or give the server's IPv4 address.") from None


# ---------------------------------------------------------------- servers and devices

@dataclass(frozen=True)
class RpcDevice:
    endpoint: str  # as the user named the server
    address: str  # ip:port handed to llama.cpp
    index: int  # the device's number on its server
    name: str  # ggml's name for it: RPC0, RPC1, ...
    description: str  # ggml's description: the address
    free: int  # bytes, as the server reports them
    total: int
    handle: int = field(repr=False, compare=False)  # ggml_backend_dev_t

    @property
    def label(self) -> str:
        return self.endpoint if self.index == 0 else f"{self.endpoint}#{self.index}"


def _timeout(timeout: float | None) -> float:
    return config.rpc_connect_timeout() if timeout is None else timeout


def query_server(ep: Endpoint, timeout: float | None = None):
    """Ask one server for its protocol version and devices' memory (rpc_wire.ServerInfo),
    within ``timeout`` seconds per step; an ``RpcServerError`` naming it otherwise."""
    from .ggml_backend import ggml
    from .rpc_wire import WireError, query

    ip = resolve(ep)
    try:
        return ip, query(ip, ep.port, _timeout(timeout), ggml().proto_version())
    except WireError as exc:
        raise RpcServerError(f"RPC server {ep} {exc}") from None


def survey(endpoints: Sequence[Endpoint], timeout: float | None = None) -> list[tuple[Endpoint, tuple]]:
    """Each server's ((free, total), ...) bytes per device, asked by slmrun alone: llama.cpp
    does not connect, so nothing can abort or hang (for `plan --rpc`, `hw --rpc`)."""
    return [(ep, query_server(ep, timeout)[1].memory) for ep in endpoints]


def add_servers(endpoints: Sequence[Endpoint], timeout: float | None = None, *,
                register: bool = False) -> list[RpcDevice]:
    """Connect llama.cpp to each server (``ggml_backend_rpc_add_server``) and return its devices.

    Each server is first asked by slmrun itself with a deadline (query_server), so one
    that is absent, busy, or of another version fails here with its name instead of
    aborting the process or hanging. ``register=True`` also adds them to ggml's global
    device list, which ``llama_cpp.Llama`` (no device list parameter) needs to use them."""
    from .ggml_backend import ADD_SERVER, ggml
    from .rpc_wire import own_connections

    require_rpc()
    rpc_guard.install()
    g = ggml()
    add = g.rpc_proc("ggml_backend_rpc_add_server", ADD_SERVER)
    seen: dict[str, Endpoint] = {}
    for ep in endpoints:
        address = f"{resolve(ep)}:{ep.port}"
        if address in seen:
            raise InvalidArgumentError(f"RPC servers {seen[address]} and {ep} are the same server ({address})",
                                       hint="Name each server once.")
        seen[address] = ep
    # Every server answers slmrun (with a deadline) before llama.cpp connects to any.
    memory: dict[str, tuple | None] = {}
    for address, ep in seen.items():
        ip = address.rsplit(":", 1)[0]
        if own_connections(ip, ep.port):  # llama.cpp holds a connection already (another model on it)
            memory[address] = None
        else:
            memory[address] = query_server(ep, timeout)[1].memory
    devices: list[RpcDevice] = []
    for address, ep in seen.items():
        reg = add(address.encode())
        if not reg:
            raise RpcServerError(f"RPC server {ep} offers no devices")
        for i in range(g.reg_dev_count(reg)):
            dev = g.reg_dev_get(reg, i)
            mem = memory[address]
            if mem is None:  # over the connection llama.cpp already holds: no new one, no wait
                f, t = ctypes.c_size_t(), ctypes.c_size_t()
                g.dev_memory(dev, ctypes.byref(f), ctypes.byref(t))
                free, total = f.value, t.value
            else:
                free, total = mem[i] if i < len(mem) else (0, 0)
            devices.append(RpcDevice(endpoint=str(ep), address=address, index=i,
                                     name=(g.dev_name(dev) or b"").decode(),
                                     description=(g.dev_description(dev) or b"").decode(),
                                     free=free, total=total, handle=dev))
        if register:
            g.register(reg)
    return devices


# ---------------------------------------------------------------- the split

@dataclass(eq=False)  # compared by identity: rpc_guard tracks live placements in a WeakSet
class Placement:
    """Where a model's layers go, and the ctypes objects llama.cpp will read (kept alive here)."""

    model_path: Path
    n_layer: int
    devices: list[RpcDevice]
    local_free: int
    n_gpu_layers: int
    tensor_split: list[float]
    use_local: bool = True
    timeout: float = field(default_factory=config.rpc_timeout)
    on_failure: object = field(default=None, repr=False)  # called with the RpcServerError (rpc_guard)

    def __post_init__(self):
        from .binding import lib
        LLAMA_MAX_DEVICES = lib().LLAMA_MAX_DEVICES
        self._devices_c = (ctypes.c_void_p * (len(self.devices) + 1))(*[d.handle for d in self.devices], None)
        padded = self.tensor_split + [0.0] * max(0, LLAMA_MAX_DEVICES - len(self.tensor_split))
        self._split_c = (ctypes.c_float * len(padded))(*padded)
        # (label, ip, port) per server, for the failure reports
        self.endpoints = list(dict.fromkeys((d.endpoint, d.address.rsplit(":", 1)[0], int(d.address.rsplit(":", 1)[1]))
                                            for d in self.devices))
        rpc_guard.track(self)
        self._dog: Watchdog | None = None

    @property
    def layers(self) -> list[int]:
        """Device index per layer (-1 local), output layer last."""
        return assign_layers(self.n_layer, self.n_gpu_layers, self.tensor_split)

    def summary(self) -> list[tuple[str, int, int]]:
        """(device, layers it holds, free bytes it reported), local CPU first."""
        layers = self.layers
        rows = [("local CPU", layers.count(-1), self.local_free)]
        rows += [(d.label, layers.count(i), d.free) for i, d in enumerate(self.devices)]
        return rows

    def model_params_fields(self) -> dict:
        """The ``llama_model_params`` fields to set, as ctypes values; the arrays they point
        to belong to this object: keep it alive as long as the model."""
        from .binding import lib
        llama_cpp = lib()
        return {"devices": ctypes.cast(self._devices_c, ctypes.c_void_p).value,  # NULL-terminated
                "n_gpu_layers": self.n_gpu_layers, "tensor_split": self._split_c,
                "split_mode": llama_cpp.LLAMA_SPLIT_MODE_LAYER}

    def apply(self, params) -> None:
        """Set the split on a ``llama_cpp.llama_model_params`` (before llama_model_load_from_file)."""
        for name, value in self.model_params_fields().items():
            setattr(params, name, value)

    def __call__(self, params) -> "Placement":
        """As a ``model_params_hook`` (runtime.llama.LlamaHandle): apply, and return the object
        to keep alive with the model."""
        self.apply(params)
        return self

    def llama_kwargs(self) -> dict:
        """For ``llama_cpp.Llama(...)``, which takes no device list: only valid when these
        servers were added with ``register=True`` and no others are registered."""
        return {"n_gpu_layers": self.n_gpu_layers, "tensor_split": list(self.tensor_split)}

    def watch(self, what: str = "an evaluation step") -> Watchdog:
        """A deadline (SLMRUN_RPC_TIMEOUT) for one step that waits on the servers."""
        if self._dog is None:
            self._dog = Watchdog(self.endpoints, self.timeout)
        self._dog.what = what
        return self._dog

    def connected(self) -> int:
        """Turn TCP keepalive on for llama.cpp's connections to the servers (after the
        model and context exist); returns how many sockets were found."""
        from .rpc_wire import keepalive, own_connections
        fds = [fd for _, ip, port in self.endpoints for fd in own_connections(ip, port)]
        for fd in fds:
            keepalive(fd)
        return len(fds)


def place(model_path: str | Path, endpoints: Sequence[Endpoint] | str, *, use_local: bool = True,
          local_free: int | None = None, timeout: float | None = None, register: bool = False,
          split: tuple[int, Sequence[float]] | None = None) -> Placement:
    """Connect to the servers and split ``model_path``'s layers across them (and the local
    CPU unless ``use_local=False``), each share proportional to the memory free on it.

    ``local_free`` defaults to this machine's available memory (hardware.detect()); ``split``
    gives (n_gpu_layers, tensor_split) instead, as the planner chose them (Plan.n_gpu_layers,
    Plan.tensor_split), one share per device the servers offer."""
    from ..gguf_info import read_info

    eps = parse_endpoints(endpoints) if isinstance(endpoints, str) else list(endpoints)
    info = read_info(model_path)
    devices = add_servers(eps, timeout, register=register)
    if local_free is None:
        from ..hardware import detect
        local_free = detect().memory_available if use_local else 0
    if split is not None:
        n_gpu_layers, shares = int(split[0]), [float(x) for x in split[1]]
        if len(shares) != len(devices):
            raise InvalidArgumentError(f"the split has {len(shares)} shares for {len(devices)} RPC devices")
    else:
        n_gpu_layers, shares = split_layers(info.block_count, local_free, [d.free for d in devices],
                                            use_local=use_local)
    return Placement(model_path=Path(model_path), n_layer=info.block_count, devices=devices,
                     local_free=local_free, n_gpu_layers=n_gpu_layers, tensor_split=shares, use_local=use_local)
