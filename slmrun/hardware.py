"""What this machine (or a named device) can run: cores, SIMD, memory, bandwidth.

The only module that knows platform facts (/proc, /sys, cgroups, Raspberry Pi
quirks) and the only importer of psutil. Detection never raises on a missing or odd
source: every field degrades to a safe value, because `slmrun hw` must work in
containers, on phones and on boards whose kernels expose half of sysfs.
``detect(root=...)`` reads a recorded tree instead (root/proc/cpuinfo, root/sys/...),
so the logic is tested against captures from devices we do not have.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import struct
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from . import config
from .errors import InvalidArgumentError

MiB, GiB = 1 << 20, 1 << 30


@dataclass(frozen=True)
class HardwareProfile:
    arch: str
    cpu_model: str
    logical_cores: int
    physical_cores: int
    performance_cores: int
    clusters: tuple[tuple[int, int], ...]
    simd: tuple[str, ...]
    ram_total: int
    ram_available: int
    cgroup_limit: int | None
    swap_total: int
    pi_model: str | None
    disk_free: int | None
    bandwidth_gbs: float | None
    name: str = "this machine"
    cgroup_usage: int | None = None  # the cgroup's working set (usage minus inactive page cache)
    cpu_quota: float | None = None  # CPUs' worth of time the cgroup allows (cpu.max 150000 100000 -> 1.5)

    @property
    def usable_cores(self) -> int:
        """Threads worth running: the performance cores, capped by a cgroup CPU quota
        (8 threads under a 2-CPU quota are throttled in turn and run slower than 2)."""
        cores = max(1, self.performance_cores)
        if self.cpu_quota:
            cores = min(cores, max(1, math.ceil(self.cpu_quota - 1e-9)))
        return cores

    @property
    def memory_limit(self) -> int:
        """Total memory a process here may use: physical RAM or the cgroup cap, the smaller."""
        if self.cgroup_limit is None:
            return self.ram_total
        return min(self.ram_total, self.cgroup_limit) if self.ram_total else self.cgroup_limit

    @property
    def memory_available(self) -> int:
        """Memory free for a model now: available RAM, capped by what is left under the cgroup."""
        if self.cgroup_limit is None:
            return self.ram_available
        headroom = max(0, self.cgroup_limit - (self.cgroup_usage or 0))
        return min(self.ram_available, headroom) if self.ram_available else headroom

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(clusters=[list(c) for c in self.clusters], simd=list(self.simd),
                 memory_limit=self.memory_limit, memory_available=self.memory_available)
        return d


# ------------------------------------------------------------------ parsing

def parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per blank-line-separated block.

    Tolerates what published copies do to it: spaces for tabs, indented lines
    (Markdown code blocks), CRLF, NUL bytes, no trailing newline.
    """
    blocks, current = [], {}
    for line in (text or "").replace("\x00", "").splitlines() + [""]:
        key, sep, value = line.partition(":")
        if not line.strip():
            if current:
                blocks.append(current)
            current = {}
        elif sep and key.strip():
            current[key.strip()] = value.strip()
    return blocks


def parse_llama_system_info(text: str) -> tuple[str, ...]:
    """Enabled CPU features in llama_print_system_info()'s string, lower-cased and sorted.

    Current llama.cpp prints ``<backend> : NAME = value | ...`` per backend
    (``CUDA : ARCHS = 860 | ... | CPU : SSE3 = 1 | AVX2 = 1 | ...``), listing only
    enabled features; builds before late 2024 printed ``AVX = 1 | AVX512 = 0 | ...``
    without a backend name. Only the CPU section counts when there is one, and only
    values of 1 (``SVE_CNT = 16`` is a vector width, not a switch).
    """
    entries, section = [], None
    for chunk in (text or "").split("|"):
        if ":" in chunk:
            section, _, chunk = chunk.partition(":")
            section = section.strip().upper()
        name, sep, value = chunk.partition("=")
        if sep and name.strip():
            entries.append((section, name.strip().lower(), value.strip()))
    if any(s == "CPU" for s, _, _ in entries):
        entries = [e for e in entries if e[0] == "CPU"]
    return tuple(sorted({n for _, n, v in entries if v == "1"}))


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """"4G", "512M", "1.5GiB", "2GB", "1024" -> bytes.

    K/M/G/T are always binary (1G = 2**30), with or without "i" or "B": memory is
    sold in binary sizes, and `--ram 4G` means a 4 GiB board. A bare number is bytes.
    """
    m = _SIZE.fullmatch(str(text))
    if not m or (m.group(3).lower().startswith("i") and not m.group(2)):
        raise InvalidArgumentError(f"Not a size: {text!r}.", hint='Use e.g. "4G", "512M", "1.5GiB" or bytes.')
    return int(round(float(m.group(1)) * (1 << 10 * " KMGT".index(m.group(2).upper() or " "))))


# --------------------------------------------------------------- CPU tables
# (implementer, part) -> (name, rough speed score), names from pytorch/cpuinfo's uarch
# tables (HiSilicon 0xd40 is Kirin 980's A76). The score only ranks cores when sysfs
# has neither cpu_capacity nor cpufreq: 40 little in-order, 70 older big, 100
# A76-class, 115 X-series, so that big and prime cores land within the 80% band below.
_ARM_PARTS: dict[tuple[int, int], tuple[str, int]] = {}
for _score, _table in {
    40: "c05 Cortex-A5, c07 Cortex-A7, d03 Cortex-A53, d04 Cortex-A35, d05 Cortex-A55, d46 Cortex-A510, "
        "d80 Cortex-A520",
    70: "c09 Cortex-A9, c0f Cortex-A15, d07 Cortex-A57, d08 Cortex-A72, d09 Cortex-A73, d0a Cortex-A75",
    100: "d0b Cortex-A76, d0d Cortex-A77, d41 Cortex-A78, d47 Cortex-A710, d4d Cortex-A715, d81 Cortex-A720, "
         "d0c Neoverse-N1, d49 Neoverse-N2, d40 Neoverse-V1",
    115: "d44 Cortex-X1, d48 Cortex-X2, d4e Cortex-X3, d82 Cortex-X4, d85 Cortex-X925",
}.items():
    for _item in _table.split(", "):
        _part, _name = _item.split(" ", 1)
        _ARM_PARTS[(0x41, int(_part, 16))] = (_name, _score)
del _score, _table, _item, _part, _name
_ARM_PARTS.update({
    (0x48, 0xd40): ("Cortex-A76", 100), (0x48, 0xd01): ("TaiShan-v110", 100),
    (0x53, 0x001): ("Exynos M1/M2", 70), (0x53, 0x002): ("Exynos M3", 100), (0x53, 0x003): ("Exynos M4", 100),
    (0x53, 0x004): ("Exynos M5", 100), (0x51, 0x800): ("Kryo 2xx Gold", 70),
    (0x51, 0x801): ("Kryo 2xx Silver", 40),
    (0x51, 0x804): ("Kryo 485 Gold", 100), (0x51, 0x805): ("Kryo 485 Silver", 40)})

# cpuinfo flag -> the names of what llama.cpp can use. Linux spells SSE3 "pni";
# aarch64's "asimd" is what llama.cpp calls NEON.
_SIMD = {"pni": "sse3", "asimd": "asimd neon", "asimddp": "dotprod", "fphp": "fp16", "asimdhp": "fp16",
         "avx512_vnni": "avx512vnni", "avx512_bf16": "avx512bf16", "avx512_fp16": "avx512fp16"}
_SIMD.update((n, n) for n in "ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi2 avx512f avx512bw avx512dq avx512vl "
             "avx512vbmi avx_vnni amx_int8 amx_bf16 neon vfpv4 i8mm sve sve2 sme bf16".split())
_ARCH = {"amd64": "x86_64", "x64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64", "armv8": "aarch64",
         "i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86", "armhf": "armv7l", "armv7": "armv7l"}
_PI_SOC = {"5": "BCM2712", "500": "BCM2712", "4": "BCM2711", "400": "BCM2711", "3": "BCM2837"}


def _normalise_arch(machine: str) -> str:
    m = (machine or "").strip().lower()
    return _ARCH.get(m, m) or "unknown"


# ------------------------------------------------------------------ reading

def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", "replace").replace("\x00", "")
    except (OSError, ValueError):
        return None


def _read_int(path: Path) -> int | None:
    text = (_read(path) or "").strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def _int(text: str | None) -> int:
    text = (text or "").strip()
    return int(text) if text.isdigit() else 0


def _cpu_list(text: str) -> list[int]:
    """'0-3,6' -> [0, 1, 2, 3, 6]; junk -> []."""
    out = []
    for lo, _, hi in (part.strip().partition("-") for part in (text or "").split(",")):
        if lo.isdigit() and (not hi or hi.isdigit()):
            out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _first(blocks: list[dict[str, str]], key: str) -> str | None:
    return next((b[key] for b in blocks if b.get(key)), None)


def _arch(blocks: list[dict[str, str]], live: bool) -> str:
    if live and platform.machine():
        arch = _normalise_arch(platform.machine())
        # Raspberry Pi OS 32-bit boots a 64-bit kernel: uname says aarch64 while this
        # Python (and any llama.cpp built next to it) is 32-bit. What runs is what counts.
        return {"aarch64": "armv7l", "x86_64": "x86"}.get(arch, arch) if struct.calcsize("P") == 4 else arch
    if _first(blocks, "flags"):
        return "x86_64"
    features, level = (_first(blocks, "Features") or "").split(), _first(blocks, "CPU architecture") or ""
    if not features:
        return "riscv64" if (_first(blocks, "isa") or "").startswith("rv64") else "unknown"
    if "asimd" in features:
        return "aarch64"
    # A 64-bit kernel shows 32-bit processes "CPU architecture: 8" and "(v8l)"; a
    # 32-bit kernel on the same core says 7 (as the armv7l Pi 4 capture does).
    if level.startswith("8") or "v8l" in (_first(blocks, "model name") or ""):
        return "armv8l"
    return {"7": "armv7l", "6": "armv6l"}.get(level[:1], "arm")


def _cpu_ids(root: Path, procs: list[dict[str, str]], live: bool) -> list[int]:
    sysdir = root / "sys/devices/system/cpu"
    ids = _cpu_list(_read(sysdir / "online") or "")
    try:
        ids = ids or sorted(int(p.name[3:]) for p in sysdir.glob("cpu[0-9]*") if p.name[3:].isdigit())
    except OSError:
        pass
    ids = ids or [int(b["processor"]) for b in procs]
    if live:
        try:  # taskset / a container's cpuset: only the CPUs we may run on
            allowed = os.sched_getaffinity(0)
            ids = [i for i in ids if i in allowed] or sorted(allowed)
        except (AttributeError, OSError):
            pass
        ids = ids or list(range(os.cpu_count() or 1))
    return ids


def _cores(root: Path, ids: list[int], procs: list[dict[str, str]], live: bool) -> tuple[int, int, dict]:
    """(logical, physical, {cpu: physical-core key}): SMT siblings share a key."""
    topo = root / "sys/devices/system/cpu"
    keys = {}
    for cpu in ids:
        siblings = (_read(topo / f"cpu{cpu}/topology/thread_siblings_list") or "").strip()
        core = _read_int(topo / f"cpu{cpu}/topology/core_id")
        keys[cpu] = siblings or (None if core is None else
                                 (_read_int(topo / f"cpu{cpu}/topology/physical_package_id"), core))
    logical = len(ids)
    if ids and None not in keys.values():
        return logical, len(set(keys.values())), keys
    physical = None
    if _first(procs, "core id") is not None:  # x86 cpuinfo counts cores, even in a one-block copy
        packages = {b.get("physical id") for b in procs}
        pairs = {(b.get("physical id"), b.get("core id")) for b in procs}
        physical = max(len(pairs), _int(_first(procs, "cpu cores")) * len(packages))
        if not live:  # a published dump may show one block of many
            logical = max(logical, _int(_first(procs, "siblings")) * len(packages))
    if physical is None and live:
        try:
            import psutil
            physical = psutil.cpu_count(logical=False)
        except Exception:
            pass
    logical = max(logical, 1)
    return logical, max(1, min(physical or logical, logical)), {cpu: cpu for cpu in ids}


def _clusters(root: Path, ids, keys, parts) -> tuple[tuple[tuple[int, int], ...], dict | None]:
    """Per-cluster (speed, physical cores), fastest first, and each CPU's speed rank.

    Speed is cpu_capacity, else cpuinfo_max_freq: the first that tells cores apart.
    Without either, ARM part scores still rank cores, but are not reported as clusters.
    """
    sysdir, sources = root / "sys/devices/system/cpu", []
    for rel in ("cpu_capacity", "cpufreq/cpuinfo_max_freq"):
        vals = {c: _read_int(sysdir / f"cpu{c}" / rel) for c in ids}
        if vals and all(v and v > 0 for v in vals.values()):
            sources.append(vals)
    metric = next((s for s in sources if len(set(s.values())) > 1), sources[0] if sources else None)
    if metric is None:
        if ids and all(parts.get(c) in _ARM_PARTS for c in ids):
            return (), {c: _ARM_PARTS[parts[c]][1] for c in ids}
        return (), None
    groups: dict[int, set] = {}
    for cpu, value in metric.items():
        groups.setdefault(value, set()).add(keys[cpu])
    return tuple(sorted(((v, len(k)) for v, k in groups.items()), reverse=True)), metric


def _cpu_model(procs, blocks, parts: dict, pi_model: str | None, live: bool) -> str:
    if parts:
        named = [_ARM_PARTS.get(p, (f"ARM 0x{p[0]:02x}/0x{p[1]:03x}", -1)) for p in parts.values()]
        counts, tiers = Counter(n for n, _ in named), dict(named)
        names = sorted(counts, key=lambda n: (-tiers[n], -counts[n]))
        model = names[0] if len(names) == 1 else " + ".join(f"{counts[n]}x {n}" for n in names)
    else:
        model = _first(procs, "model name") or _first(blocks, "Processor") or ""
        model = model or ((platform.processor() or platform.machine()) if live else "") or "unknown"
    soc = re.search(r"Raspberry Pi (?:Compute Module )?(\d+)", pi_model or "")
    if soc and soc.group(1) in _PI_SOC:  # cpuinfo's "Hardware: BCM2835" is the same on every Pi
        model += f" ({_PI_SOC[soc.group(1)]})"
    return model


def _cpu_facts(root: Path, live: bool) -> dict:
    blocks = parse_cpuinfo(_read(root / "proc/cpuinfo") or "")
    procs = [b for b in blocks if b.get("processor", "").isdigit()]
    ids = _cpu_ids(root, procs, live)
    procs = [b for b in procs if int(b["processor"]) in ids] or procs
    logical, physical, keys = _cores(root, ids, procs, live)
    hexa = re.compile(r"0x[0-9a-fA-F]+")
    parts = {int(b["processor"]): (int(b["CPU implementer"], 16), int(b["CPU part"], 16)) for b in procs
             if hexa.fullmatch(b.get("CPU implementer", "")) and hexa.fullmatch(b.get("CPU part", ""))}
    clusters, rank = _clusters(root, ids, keys, parts)
    # performance_cores = physical cores of the fastest cluster. Cores within 20% of
    # the top count as that cluster: favoured-core turbo bins (Intel ITMT) and per-
    # cluster binning (RK3588's A76 pairs) are not different cores, while A55 vs A76
    # (0.75), E vs P cores (0.74) and Kirin 980's 1.9 vs 2.6 GHz A76 pairs (0.73) are.
    # llama.cpp's threads wait for the slowest, so adding slow cores costs more than
    # it brings (llama.cpp#7176: Orange Pi 5 twice as fast on its 4 big cores).
    performance = physical
    if rank and len(set(rank.values())) > 1:
        performance = len({keys[c] for c, v in rank.items() if v >= 0.8 * max(rank.values())})
    model = (_read(root / "proc/device-tree/model") or _read(root / "sys/firmware/devicetree/base/model")
             or "").strip() or _first(blocks, "Model")
    pi_model = model if model and "Raspberry Pi" in model else None
    flag_sets = [set((b.get("flags") or b.get("Features")).split()) for b in procs or blocks
                 if b.get("flags") or b.get("Features")]
    common = set.intersection(*flag_sets) if flag_sets else set()  # only what every core has
    arch = _arch(blocks, live)
    if live and not flag_sets and platform.system() == "Darwin" and arch == "aarch64":
        common = {"asimd", "asimddp", "fphp"}  # every Apple Silicon core has these
    return dict(arch=arch, cpu_model=_cpu_model(procs, blocks, parts, pi_model, live), logical_cores=logical,
                physical_cores=physical, performance_cores=max(1, min(performance, physical)),
                clusters=clusters, simd=tuple(sorted({n for f in common for n in _SIMD.get(f, "").split()})),
                pi_model=pi_model)


def _memory(root: Path, live: bool) -> tuple[int, int, int]:
    """(ram_total, ram_available, swap_total) in bytes; zeros when nothing says."""
    if live:
        try:
            import psutil
            vm, swap = psutil.virtual_memory(), psutil.swap_memory()
            return int(vm.total), int(vm.available), int(swap.total)
        except Exception:
            pass
    info = {}
    for key, _, value in (line.partition(":") for line in (_read(root / "proc/meminfo") or "").splitlines()):
        fields = value.split()
        if fields and fields[0].isdigit():
            info[key.strip()] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    total = info.get("MemTotal", 0)
    available = info.get("MemAvailable",  # kernels before 3.14 lack it
                         info.get("MemFree", 0) + info.get("Buffers", 0) + info.get("Cached", 0))
    return total, min(available, total) if total else available, info.get("SwapTotal", 0)


# v1 says "no limit" with a page-aligned LONG_MAX (9223372036854771712) on 64-bit
# kernels and LONG_MAX pages (~8 TiB) on 32-bit ones: anything that large is none.
_UNLIMITED = (1 << 43) - 4096


def _cgroup_dirs(root: Path, controller: str, v1_mounts: tuple[str, ...]) -> list[Path]:
    """The cgroup directories whose `controller` limits bind us, nearest first.

    Inside a container the cgroup mount's root is the container's own group. On a
    host, /proc/self/cgroup names our group (v2 "0::/path", v1 "N:ctrl,ctrl:/path"),
    and every ancestor's limit binds too.
    """
    base = root / "sys/fs/cgroup"
    dirs = []
    for _, ctrls, path in (line.split(":", 2) for line in (_read(root / "proc/self/cgroup") or "").splitlines()
                           if line.count(":") >= 2):
        if ".." in path or (ctrls and controller not in ctrls.split(",")):
            continue
        top = base if not ctrls else base / ctrls
        leaf = top / path.strip().lstrip("/")
        dirs += [d for d in (leaf, *leaf.parents) if len(d.parts) >= len(top.parts)]
    return list(dict.fromkeys(dirs + [base] + [base / m for m in v1_mounts]))


def _cgroup_memory(root: Path) -> tuple[int | None, int | None]:
    """(limit, working set) of the tightest memory cgroup over us; None when unlimited."""
    limit = usage = None
    for d in _cgroup_dirs(root, "memory", ("memory",)):
        for limit_file, usage_file, cache_key in (("memory.max", "memory.current", "inactive_file"),
                                                  ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                   "total_inactive_file")):
            value = _read_int(d / limit_file)  # v2's "max" reads as None
            if value is None or not 0 < value < _UNLIMITED or (limit is not None and value >= limit):
                continue
            limit, usage = value, _read_int(d / usage_file)
            if usage is not None:  # page cache is reclaimable: count only the working set
                stat = dict(ln.split()[:2] for ln in (_read(d / "memory.stat") or "").splitlines()
                            if len(ln.split()) >= 2)
                usage = max(0, usage - _int(stat.get(cache_key)))
    return limit, usage


def _cgroup_cpu_quota(root: Path) -> float | None:
    """The tightest CPU quota (in CPUs) of the cgroups over us: v2 cpu.max, v1 cfs quota/period."""
    quota = None
    for d in _cgroup_dirs(root, "cpu", ("cpu", "cpu,cpuacct")):
        fields = (_read(d / "cpu.max") or "").split()
        if len(fields) == 2 and fields[0] != "max":
            q, period = _int(fields[0]), _int(fields[1])
        else:
            q, period = _read_int(d / "cpu.cfs_quota_us"), _read_int(d / "cpu.cfs_period_us")
        if q and period and q > 0 and period > 0:
            quota = min(quota or float("inf"), q / period)
    return quota


def _disk_free(path) -> int | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    while not p.exists() and p != p.parent:
        p = p.parent  # the store may not exist yet: its disk is its nearest existing parent's
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def process_rss() -> int | None:
    """This process's resident memory in bytes (for the server's /metrics), None if unknown."""
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except Exception:
        return None


def detect(*, root: str | os.PathLike = "/", store_path=None,
           measure_bandwidth: bool = False) -> HardwareProfile:
    """Describe this machine, or the recorded tree under `root`.

    With the live root, RAM and swap come from psutil, the cores are those this
    process may run on, disk_free is for the model store (or `store_path`), and
    bandwidth_gbs is the cached measurement (taken now if `measure_bandwidth`).
    With another root everything comes from files under it; bandwidth is None.
    """
    rootp = Path(root)
    live = os.path.realpath(rootp) == os.path.realpath(os.sep)
    cpu = _cpu_facts(rootp, live)
    total, available, swap = _memory(rootp, live)
    limit, usage = _cgroup_memory(rootp)
    bandwidth = None
    if live:
        try:
            bandwidth = _bandwidth(_bandwidth_key(cpu), measure_bandwidth)
        except Exception:  # a cache or numpy problem must not break `slmrun hw`
            bandwidth = None
    store = store_path if store_path is not None else (config.models_dir() if live else None)
    return HardwareProfile(ram_total=total, ram_available=available, cgroup_limit=limit, swap_total=swap,
                           disk_free=_disk_free(store), bandwidth_gbs=bandwidth, cgroup_usage=usage,
                           cpu_quota=_cgroup_cpu_quota(rootp), **cpu)


# ---------------------------------------------------------------- bandwidth

def measure_bandwidth(*, size_mb: int = 256, repeats: int = 5) -> float:
    """Single-thread streaming read bandwidth in GB/s (10**9 B/s): the best of `repeats`.

    Generating a token reads every weight once, so tokens/s ~ bandwidth / model
    bytes. This is one core's figure (a numpy sum; memchr over a buffer if numpy
    is missing, ~30% lower); on SBCs and laptops llama.cpp's all-thread effective
    rate lands near it (here 17.6 GB/s single-core vs ~15 GB/s effective).
    """
    if size_mb < 1 or repeats < 1:
        raise InvalidArgumentError("size_mb and repeats must be at least 1.")
    try:
        import numpy as np
        data = np.ones(size_mb * MiB // 8)  # ones() touches every page: no page faults while timing
        read, nbytes = data.sum, data.nbytes
    except ImportError:
        data = bytes(size_mb * MiB)
        read, nbytes = (lambda: data.find(b"\x01")), len(data)
    read()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        read()
        best = min(best, time.perf_counter() - start)
    return nbytes / max(best, 1e-9) / 1e9


def _bandwidth_key(cpu: dict) -> str:
    return f"{cpu['cpu_model']}|{cpu['logical_cores']}"


def _bandwidth(key: str, measure_if_missing: bool) -> float | None:
    path = config.home() / "hardware.json"
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    entries = cache.get("bandwidth") if isinstance(cache.get("bandwidth"), dict) else {}
    entry = entries.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("gbs"), (int, float)):
        return float(entry["gbs"])
    if not measure_if_missing:
        return None
    try:
        gbs = round(measure_bandwidth(), 2)
    except MemoryError:
        return None
    cache["bandwidth"] = {**entries, key: {"gbs": gbs, "measured_at": int(time.time())}}
    try:  # a read-only home still gets the figure, just not cached
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
    return gbs


def cached_bandwidth(*, measure_if_missing: bool = True) -> float | None:
    """This machine's bandwidth from config.home()/hardware.json, keyed by CPU model and
    core count; measured and cached first when missing and allowed."""
    return _bandwidth(_bandwidth_key(_cpu_facts(Path(os.sep), True)), measure_if_missing)


# ----------------------------------------------------------------- profiles
# bandwidth_gbs is llama.cpp's *effective* read rate, published token-generation speed
# x model file size, because that is what a speed estimate divides by.
#   Pi 4: Pi 400 (BCM2711 @ 1.8 GHz) 1.60 t/s on ollama llama3.2:3b (Q4_K_M, 2.02 GB)
#     = 3.2 GB/s (geerlingguy/ai-benchmarks README); sbc-bench memcpy on Pi 4B is
#     2.2-2.8 GB/s (ThomasKaiser/sbc-bench results/Sorted-Results.md).
#   Pi 5: same model, 8 GB 4.61 t/s = 9.3 GB/s, 16 GB (D0 stepping) 4.88 t/s = 9.9 GB/s
#     (geerlingguy/ai-benchmarks#1, #7); llamafile's kernels reach ~12 (Q6_K 2.76 GiB
#     at 4.03 t/s, Mozilla's Llama-3.2-3B-Instruct llamafile card).
#   Orange Pi 5 (RK3588S): Phi-3-mini IQ4_XS (~2.06 GB) at 6.92 t/s with -t 4 = ~14
#     GB/s (llama.cpp#7176). One A76 alone reads 21.4 GB/s (tinymembench NEON LDP load,
#     sbc-bench results/4D0a.txt, which also gives its 7.8 GiB / 7.4 GiB free at idle).
#   laptop-8gb: Intel N150, single-channel RAM (the usual budget 8 GB layout): 9.06 t/s
#     on llama3.2:3b = 18.3 GB/s (geerlingguy/ai-benchmarks#12).
#   laptop-16gb: cores of the i7-1360P in sbc-bench results/4E5J.txt (4P+8E, 16 threads);
#     bandwidth from an i5-1135G7 16 GB dual-channel laptop, llama 3.1 8B Q4_K_M
#     (4.92 GB) tg128 6.86 t/s = 33.7 GB/s (brand-o/normiebench#46), a floor for the
#     1360P's LPDDR5. RAM and swap: gopsutil's intelcorei5 /proc/meminfo capture.
#   container-1gb: this project's 2-vCPU EPYC, llama-bench tg128 151-157 t/s on
#     SmolLM2-135M Q4_1 (98 MB) = ~15 GB/s (reference.md).
# Pi RAM as the kernel sees it: Pi 4 2/4/8 GB ~1.8 GB / 3792 MiB / 7819 MiB
# (aidatatools/ollama-benchmark#9, llama.cpp#58, geerlingguy/sbc-reviews#110); Pi 5
# 8 GB 8252368 kB (the recorded meminfo), 4/16 GB nominal minus the same 133 MiB.
# Boards' ram_available is total minus the idle Orange Pi 5's 400 MiB.
_A76 = ("asimd", "dotprod", "fp16", "neon")
_AVX2 = ("avx", "avx2", "bmi2", "f16c", "fma", "sse3", "ssse3")


def _make(name, arch, model, cores, ram_total, bandwidth, *, physical=None, perf=None, clusters=(), simd=(),
          available=None, swap=0, cgroup_limit=None, pi_model=None):
    physical = physical or cores
    return HardwareProfile(arch, model, cores, physical, perf or physical, clusters, tuple(sorted(simd)),
                           ram_total, available or ram_total - 400 * MiB, cgroup_limit, swap, pi_model, None,
                           bandwidth, name)


_PI4 = dict(clusters=((1800000, 4),), simd=("asimd", "neon"), pi_model="Raspberry Pi 4 Model B")
_PI5 = dict(clusters=((2400000, 4),), simd=_A76, pi_model="Raspberry Pi 5 Model B")
_HOST16 = dict(ram_total=16115528 * 1024, available=11225936 * 1024)
PROFILES: dict[str, HardwareProfile] = {p.name: p for p in (
    _make("rpi4-2gb", "aarch64", "Cortex-A72 (BCM2711)", 4, 1800 * MiB, 3.2, **_PI4),
    _make("rpi4-4gb", "aarch64", "Cortex-A72 (BCM2711)", 4, 3792 * MiB, 3.2, **_PI4),
    _make("rpi4-8gb", "aarch64", "Cortex-A72 (BCM2711)", 4, 7819 * MiB, 3.2, **_PI4),
    _make("rpi5-4gb", "aarch64", "Cortex-A76 (BCM2712)", 4, 4 * GiB - 133 * MiB, 9.3, **_PI5),
    _make("rpi5-8gb", "aarch64", "Cortex-A76 (BCM2712)", 4, 8252368 * 1024, 9.3, **_PI5),
    _make("rpi5-16gb", "aarch64", "Cortex-A76 (BCM2712)", 4, 16 * GiB - 133 * MiB, 9.9, **_PI5),
    _make("orangepi5-8gb", "aarch64", "4x Cortex-A76 + 4x Cortex-A55 (RK3588S)", 8, int(7.8 * GiB), 14.0,
          perf=4, clusters=((2400000, 4), (1800000, 4)), simd=_A76),
    _make("laptop-8gb", "x86_64", "Intel(R) N150", 4, 8 * GiB - 256 * MiB, 18.3, available=5 * GiB,
          clusters=((3600000, 4),), simd=("avx_vnni",) + _AVX2),
    _make("laptop-16gb", "x86_64", "13th Gen Intel(R) Core(TM) i7-1360P", 16, bandwidth=33.7, physical=12,
          perf=4, clusters=((5000000, 4), (3700000, 8)), simd=("avx_vnni",) + _AVX2, swap=8065020 * 1024,
          **_HOST16),
    _make("container-1gb", "x86_64", "AMD EPYC (2 vCPU container)", 2, bandwidth=15.0, simd=_AVX2,
          cgroup_limit=1 * GiB, **_HOST16),
)}
# custom(): per arch, the device whose bandwidth to assume, and SIMD every such CPU has.
_CUSTOM = {"aarch64": ("rpi5-8gb", ("asimd", "neon")), "armv7l": ("rpi4-4gb", ("neon", "vfpv4")),
           "armv8l": ("rpi4-4gb", ("neon", "vfpv4")), "x86_64": ("laptop-8gb", _AVX2)}


def profile(name: str) -> HardwareProfile:
    """A named device from PROFILES (case-insensitive)."""
    found = PROFILES.get(str(name).strip().lower())
    if found is None:
        known = ", ".join(PROFILES)
        raise InvalidArgumentError(f"Unknown hardware profile {name!r}; known profiles: {known}.",
                                   hint="Pick one of those, or describe the device with --ram and --cores.")
    return found


def custom(*, ram: int, cores: int, arch: str | None = None,
           base: HardwareProfile | None = None) -> HardwareProfile:
    """A hypothetical machine for planning (`slmrun plan --ram 4G --cores 4 --arch aarch64`).

    `ram` is both total and available: the memory the model may use. Without `base`,
    all cores are performance cores, SIMD is the baseline every CPU of the arch has,
    and bandwidth is that of the commonest device of the arch: aarch64 (the default)
    a Pi 5's 9.3 GB/s, armv7l/armv8l a Pi 4's 3.2 GB/s, x86_64 a budget laptop's 18.3
    GB/s; other arches get None. A `base` of the same arch keeps its CPU, SIMD and
    bandwidth, and its big.LITTLE split as far as `cores` allows.
    """
    if int(ram) <= 0 or int(cores) < 1:
        raise InvalidArgumentError(f"RAM must be positive and cores at least 1 (got ram={ram}, cores={cores}).")
    ram, cores = int(ram), int(cores)
    arch = _normalise_arch(arch) if arch else (base.arch if base else "aarch64")
    if base is not None and base.arch == arch:
        perf = cores if base.performance_cores >= base.physical_cores else min(base.performance_cores, cores)
        return replace(base, ram_total=ram, ram_available=ram, logical_cores=cores, physical_cores=cores,
                       performance_cores=perf, clusters=(), cgroup_limit=None, cgroup_usage=None,
                       disk_free=None, name="custom")
    like, simd = _CUSTOM.get(arch, (None, ()))
    return _make("custom", arch, f"{arch} ({cores} cores)", cores, ram,
                 PROFILES[like].bandwidth_gbs if like else None, simd=simd, available=ram)
