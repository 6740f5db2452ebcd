"""ctypes over ggml's backend registry and its RPC backend, as llama.cpp's own tools reach them.

llama-cpp-python binds llama.h only; the RPC entry points live in ggml and are reached
the way common/arg.cpp and tools/rpc/rpc-server.cpp do: ``ggml_backend_reg_by_name("RPC")``
then ``ggml_backend_reg_get_proc_address(reg, "ggml_backend_rpc_add_server")`` (or
``..._start_server``). The libraries are the instances libllama loaded (see _loaded).

Signatures are those of the vendored llama.cpp 0c1e570 (ggml-rpc.h, ggml-backend.h,
ggml-backend-impl.h); they changed across versions, which is why everything here is
looked up by name and checked, never assumed.
"""

from __future__ import annotations

import ctypes
import functools
import re
from pathlib import Path

c_size_p = ctypes.POINTER(ctypes.c_size_t)

DEVICE_TYPE_CPU, DEVICE_TYPE_GPU, DEVICE_TYPE_IGPU, DEVICE_TYPE_ACCEL = 0, 1, 2, 3

ADD_SERVER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
# void ggml_backend_rpc_start_server(endpoint, cache_dir, n_threads, n_devices, devices)
START_SERVER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                                ctypes.POINTER(ctypes.c_void_p))
ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
GET_MEMORY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, c_size_p, c_size_p)
INIT_BACKEND = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)

# The protocol version this build's client speaks (ggml-rpc.h). Read from the header the
# wheel installs beside the libraries; these are 0c1e570's values, used when it is absent.
_PROTO_FALLBACK = (7, 0, 0)


class DevCaps(ctypes.Structure):
    _fields_ = [("async_", ctypes.c_bool), ("host_buffer", ctypes.c_bool),
                ("buffer_from_host_ptr", ctypes.c_bool), ("events", ctypes.c_bool),
                ("mmap_support", ctypes.c_bool)]


class DevProps(ctypes.Structure):
    """struct ggml_backend_dev_props."""
    _fields_ = [("name", ctypes.c_char_p), ("description", ctypes.c_char_p),
                ("memory_free", ctypes.c_size_t), ("memory_total", ctypes.c_size_t),
                ("type", ctypes.c_int), ("device_id", ctypes.c_char_p), ("caps", DevCaps)]


# struct ggml_backend_device = { struct ggml_backend_device_i iface (15 function
# pointers: get_memory the third, init_backend the sixth); ggml_backend_reg_t reg; void * context; }
_IFACE_POINTERS = 15
_GET_MEMORY_SLOT, _INIT_BACKEND_SLOT = 2, 5
_BACKEND_SCAN_WORDS = 24  # struct ggml_backend is { guid, iface (16 pointers here), device, context }


class _Device(ctypes.Structure):
    _fields_ = [("iface", ctypes.c_void_p * _IFACE_POINTERS), ("reg", ctypes.c_void_p),
                ("context", ctypes.c_void_p)]


def _loaded(name: str, lib_dir: Path):
    """The instance of lib<name> that libllama itself uses.

    Not a fresh dlopen of lib/lib<name>.so: the wheel ships libggml.so and libggml.so.0
    as copies, not links, and opening the other file makes a second ggml (a second device
    registry, a second abort hook) that llama.cpp never looks at. RTLD_NOLOAD by the names
    libllama links against finds the loaded one, or nothing."""
    import os
    mode = getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL
    for soname in (f"lib{name}.so.0", f"lib{name}.0.dylib", f"lib{name}.so", f"lib{name}.dylib"):
        try:
            return ctypes.CDLL(soname, mode=mode)
        except OSError:
            continue
    from llama_cpp._ctypes_extensions import load_shared_library
    return load_shared_library(name, lib_dir)


def _fn(lib, name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype, f.argtypes = restype, list(argtypes)
    return f


class Ggml:
    """The handful of ggml functions slmrun needs, bound once."""

    def __init__(self):
        from .binding import lib, package_dir

        llama_cpp = lib()  # loads libllama and, with it, libggml, libggml-base, libggml-rpc
        self.lib_dir = package_dir() / "lib"
        ggml = _loaded("ggml", self.lib_dir)
        base = _loaded("ggml-base", self.lib_dir)
        llama_cpp.llama_backend_init()  # ggml_backend_load_all() when nothing is registered yet
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        self.reg_by_name = _fn(ggml, "ggml_backend_reg_by_name", vp, cp)
        self.register = _fn(ggml, "ggml_backend_register", None, vp)
        self.dev_count = _fn(ggml, "ggml_backend_dev_count", sz)
        self.dev_get = _fn(ggml, "ggml_backend_dev_get", vp, sz)
        self.dev_by_type = _fn(ggml, "ggml_backend_dev_by_type", vp, ctypes.c_int)
        self.get_proc_address = _fn(base, "ggml_backend_reg_get_proc_address", vp, vp, cp)
        self.reg_dev_count = _fn(base, "ggml_backend_reg_dev_count", sz, vp)
        self.reg_dev_get = _fn(base, "ggml_backend_reg_dev_get", vp, vp, sz)
        self.dev_name = _fn(base, "ggml_backend_dev_name", cp, vp)
        self.dev_description = _fn(base, "ggml_backend_dev_description", cp, vp)
        self.dev_memory = _fn(base, "ggml_backend_dev_memory", None, vp, c_size_p, c_size_p)
        self.dev_get_props = _fn(base, "ggml_backend_dev_get_props", None, vp, ctypes.POINTER(DevProps))
        self.dev_type = _fn(base, "ggml_backend_dev_type", ctypes.c_int, vp)
        self.backend_get_device = _fn(base, "ggml_backend_get_device", vp, vp)
        self.set_abort_callback = _fn(base, "ggml_set_abort_callback", vp, ABORT_CALLBACK)
        self.rpc_reg = self.reg_by_name(b"RPC")  # None: built without -DGGML_RPC=ON

    def rpc_proc(self, name: str, prototype):
        if not self.rpc_reg:
            return None
        address = self.get_proc_address(self.rpc_reg, name.encode())
        return prototype(address) if address else None

    def props(self, dev: int) -> DevProps:
        props = DevProps()
        self.dev_get_props(dev, ctypes.byref(props))
        return props

    def server_devices(self) -> list[int]:
        """What llama.cpp's rpc-server serves by default (get_devices): every GPU-like
        device, or the CPU when there is none."""
        devices = [d for d in (self.dev_get(i) for i in range(self.dev_count()))
                   if self.dev_type(d) not in (DEVICE_TYPE_CPU, DEVICE_TYPE_ACCEL)]
        return devices or [self.dev_by_type(DEVICE_TYPE_CPU)]

    def proto_version(self) -> tuple[int, int, int]:
        header = self.lib_dir.parent.parent / "include" / "ggml-rpc.h"
        try:
            text = header.read_text()
        except OSError:
            return _PROTO_FALLBACK
        parts = [re.search(rf"RPC_PROTO_{k}_VERSION\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCH")]
        return tuple(int(m.group(1)) for m in parts) if all(parts) else _PROTO_FALLBACK  # type: ignore


@functools.lru_cache(maxsize=1)
def ggml() -> Ggml:
    return Ggml()


class MemoryReportingDevice:
    """A copy of a ggml device whose get_memory asks Python.

    ggml's CPU device reports all physical RAM as free on Linux ("free system memory is
    ill-defined", ggml-cpu.cpp), and that is what an RPC server tells its clients, so a
    client would split a model by total RAM. The copy shares everything else (the same
    iface functions, registry and context). The server answers a client's memory query
    through the device of the backend it made from this one, so init_backend is wrapped
    too: it makes the CPU's own backend and points that backend's device field here (the
    field is found by value, not by an offset that changes across ggml versions).
    """

    def __init__(self, dev: int, memory):  # memory() -> (free, total) in bytes
        g = ggml()
        self._copy = _Device()
        ctypes.memmove(ctypes.addressof(self._copy), dev, ctypes.sizeof(_Device))
        orig_memory = GET_MEMORY(self._copy.iface[_GET_MEMORY_SLOT])
        orig_init = INIT_BACKEND(self._copy.iface[_INIT_BACKEND_SLOT])

        def get_memory(_dev, free, total):
            try:
                f, t = memory()
                free[0], total[0] = int(f), int(t)
            except Exception:  # a Python error must not cross into C: ggml's own figure then
                orig_memory(dev, free, total)

        def init_backend(_dev, params):
            backend = orig_init(dev, params)
            if backend and g.backend_get_device(backend) == dev:
                words = (ctypes.c_void_p * _BACKEND_SCAN_WORDS).from_address(backend)
                for i in range(1, _BACKEND_SCAN_WORDS):  # word 0 is the guid
                    if words[i] == dev:
                        words[i] = self.handle
                        break
            return backend

        self._callbacks = (GET_MEMORY(get_memory), INIT_BACKEND(init_backend))  # alive as long as the device
        self._copy.iface[_GET_MEMORY_SLOT] = ctypes.cast(self._callbacks[0], ctypes.c_void_p).value
        self._copy.iface[_INIT_BACKEND_SLOT] = ctypes.cast(self._callbacks[1], ctypes.c_void_p).value

    @property
    def handle(self) -> int:
        return ctypes.addressof(self._copy)
