"""The few RPC-protocol exchanges slmrun does itself, with timeouts, before llama.cpp connects.

llama.cpp's RPC client has no timeouts and treats every failure as fatal: a server that
is not there, answers with another protocol version or goes away makes it call
GGML_ABORT, which ends the process (ggml-rpc.cpp, rpc_dispatcher::start and
RPC_STATUS_ASSERT); a server that accepts but never answers (it serves one client at a
time) makes it wait forever. So slmrun asks each server itself first, over a plain
socket with a deadline: the HELLO handshake (the protocol version), the device count
and each device's memory. These are the same messages llama.cpp sends (ggml-rpc.cpp:
``| cmd (1 byte) | size (8 bytes) | payload |``, answered by ``| size (8) | payload |``),
and a server serves the next client as soon as this one hangs up.

Also here: the process's own TCP connections to a server (from /proc on Linux), to skip
the probe when llama.cpp already holds one (a second client would wait behind it) and to
turn keepalive on for llama.cpp's sockets, which it leaves off.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

_CMD_GET_DEVICE_MEMORY, _CMD_HELLO, _CMD_DEVICE_COUNT = 11, 14, 15
_CONN_CAPS_SIZE = 24  # transport.h RPC_CONN_CAPS_SIZE; all zero = plain TCP, no RDMA


class WireError(Exception):
    """What went wrong talking to one server, in words for the user."""


@dataclass(frozen=True)
class ServerInfo:
    version: tuple[int, int, int]
    memory: tuple[tuple[int, int], ...]  # (free, total) bytes per device, as the server reports them


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise WireError("closed the connection")
        data += chunk
    return bytes(data)


def _call(sock: socket.socket, cmd: int, payload: bytes, answer_size: int) -> bytes:
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    size, = struct.unpack("<Q", _recv_exact(sock, 8))
    if size != answer_size:
        raise WireError(f"answered with {size} bytes where {answer_size} were expected (not an RPC server?)")
    return _recv_exact(sock, size)


def query(ip: str, port: int, timeout: float, client_version: tuple[int, int, int]) -> ServerInfo:
    """Handshake, device count and memory, each step within ``timeout`` seconds."""
    try:
        sock = socket.create_connection((ip, port), timeout=timeout)
    except ConnectionRefusedError:
        raise WireError("refused the connection: nothing listens there") from None
    except socket.timeout:
        raise WireError(f"did not accept a connection within {timeout:g} s (host down or port filtered?)") from None
    except OSError as exc:
        raise WireError(f"cannot be reached: {exc.strerror or exc}") from None
    with sock:
        try:
            hello = _call(sock, _CMD_HELLO, bytes(_CONN_CAPS_SIZE), 4 + _CONN_CAPS_SIZE)
        except socket.timeout:
            raise WireError(f"accepted but did not answer the handshake within {timeout:g} s: it is serving "
                            "another client (an RPC server serves one at a time), or it is not an RPC "
                            "server") from None
        except OSError as exc:
            raise WireError(f"broke off the handshake: {exc.strerror or exc}") from None
        version = tuple(hello[:3])
        if version[0] != client_version[0] or version[1] > client_version[1]:
            raise WireError(f"speaks RPC protocol {'.'.join(map(str, version))}, this llama.cpp speaks "
                            f"{'.'.join(map(str, client_version))}: run the same llama-cpp-python (or "
                            "llama.cpp) version on both machines")
        try:
            count, = struct.unpack("<I", _call(sock, _CMD_DEVICE_COUNT, b"", 4))
            memory = tuple(struct.unpack("<QQ", _call(sock, _CMD_GET_DEVICE_MEMORY, struct.pack("<I", i), 16))
                           for i in range(count))
        except socket.timeout:
            raise WireError(f"stopped answering within {timeout:g} s") from None
        except OSError as exc:
            raise WireError(f"broke off the connection: {exc.strerror or exc}") from None
    if not memory:
        raise WireError("offers no devices")
    return ServerInfo(version=version, memory=memory)  # type: ignore[arg-type]


def peer_closed(ip: str, port: int) -> bool:
    """Whether a connection of ours to ip:port was closed by the other end (CLOSE_WAIT: the
    server's process ended, or it hung up)."""
    return bool(own_connections(ip, port, (_CLOSE_WAIT,)))


def reachable(ip: str, port: int, timeout: float) -> bool:
    """Whether something accepts TCP connections there (a live server's kernel does, even busy)."""
    try:
        socket.create_connection((ip, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hex_to_addr(text: str) -> tuple[str, int]:
    ip_hex, port_hex = text.split(":")
    # The kernel prints the address as a native-endian int, the port as a number.
    return socket.inet_ntoa(struct.pack("=I", int(ip_hex, 16))), int(port_hex, 16)


_ESTABLISHED, _CLOSE_WAIT = "01", "08"  # the kernel's TCP states in /proc/net/tcp


def own_connections(ip: str, port: int, states: tuple[str, ...] = (_ESTABLISHED,)) -> list[int]:
    """File descriptors of this process's TCP connections to ip:port in ``states`` (default:
    established; Linux, elsewhere an empty list)."""
    try:
        lines = open("/proc/self/net/tcp").read().splitlines()[1:]
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return []
    inodes = set()
    for line in lines:
        f = line.split()
        if len(f) > 9 and f[3] in states and _hex_to_addr(f[2]) == (ip, port):
            inodes.add(f[9])
    found = []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            found.append(int(fd))
    return found


def keepalive(fd: int, idle: int = 10, interval: int = 5, count: int = 3, user_timeout_ms: int = 30000) -> None:
    """Make the kernel notice a peer that vanished (powered off, cable out): keepalive
    probes while idle, and a limit on how long sent data may stay unacknowledged. The
    socket then fails, and llama.cpp's read returns instead of waiting forever."""
    s = socket.socket(fileno=os.dup(fd))  # the duplicate shares the socket; closing it leaves llama.cpp's
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count),
                            ("TCP_USER_TIMEOUT", user_timeout_ms)):
            if hasattr(socket, name):
                s.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    finally:
        s.close()


def awaiting_reply(fd: int) -> bool:
    """Whether this connection sent data after the last it received: a request still
    unanswered (TCP_INFO's last_data_sent / last_data_recv, ms ago; Linux)."""
    if not hasattr(socket, "TCP_INFO"):
        return False
    s = socket.socket(fileno=os.dup(fd))
    try:
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 64)
    except OSError:
        return False
    finally:
        s.close()
    if len(info) < 60:
        return False
    last_sent, _last_ack_sent, last_recv = struct.unpack_from("=III", info, 44)
    return last_recv > last_sent


def traffic(ip: str, port: int) -> tuple[int, int]:
    """(bytes sent and acknowledged, bytes received) over this process's connections to
    ip:port, from TCP_INFO (Linux; zeros elsewhere)."""
    sent = received = 0
    if not hasattr(socket, "TCP_INFO"):
        return 0, 0
    for fd in own_connections(ip, port):
        s = socket.socket(fileno=os.dup(fd))
        try:
            info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 160)
        except OSError:
            continue
        finally:
            s.close()
        if len(info) >= 136:
            acked, got = struct.unpack_from("=QQ", info, 120)  # tcpi_bytes_acked, tcpi_bytes_received
            sent, received = sent + acked, received + got
    return sent, received
