"""Linux's own descriptions of the machine, read from /proc and /sys under a root (``/``,
or a recorded tree): /proc/cpuinfo, CPU topology and frequencies, the device-tree model,
/proc/meminfo. Psutil, where live, for what it reads better. Nothing here raises on a
missing or odd file: every value degrades to a safe default.
"""

from __future__ import annotations

import os
import platform
import re
import struct
from collections import Counter
from pathlib import Path

from .cpus import ARM_PARTS, PI_SOC, SIMD_NAMES, normalise_arch


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


def read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", "replace").replace("\x00", "")
    except (OSError, ValueError):
        return None


def read_int(path: Path) -> int | None:
    text = (read(path) or "").strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def to_int(text: str | None) -> int:
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
        arch = normalise_arch(platform.machine())
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
    ids = _cpu_list(read(sysdir / "online") or "")
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
        siblings = (read(topo / f"cpu{cpu}/topology/thread_siblings_list") or "").strip()
        core = read_int(topo / f"cpu{cpu}/topology/core_id")
        keys[cpu] = siblings or (None if core is None else
                                 (read_int(topo / f"cpu{cpu}/topology/physical_package_id"), core))
    logical = len(ids)
    if ids and None not in keys.values():
        return logical, len(set(keys.values())), keys
    physical = None
    if _first(procs, "core id") is not None:  # x86 cpuinfo counts cores, even in a one-block copy
        packages = {b.get("physical id") for b in procs}
        pairs = {(b.get("physical id"), b.get("core id")) for b in procs}
        physical = max(len(pairs), to_int(_first(procs, "cpu cores")) * len(packages))
        if not live:  # a published dump may show one block of many
            logical = max(logical, to_int(_first(procs, "siblings")) * len(packages))
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
        vals = {c: read_int(sysdir / f"cpu{c}" / rel) for c in ids}
        if vals and all(v and v > 0 for v in vals.values()):
            sources.append(vals)
    metric = next((s for s in sources if len(set(s.values())) > 1), sources[0] if sources else None)
    if metric is None:
        if ids and all(parts.get(c) in ARM_PARTS for c in ids):
            return (), {c: ARM_PARTS[parts[c]][1] for c in ids}
        return (), None
    groups: dict[int, set] = {}
    for cpu, value in metric.items():
        groups.setdefault(value, set()).add(keys[cpu])
    return tuple(sorted(((v, len(k)) for v, k in groups.items()), reverse=True)), metric


def _cpu_model(procs, blocks, parts: dict, pi_model: str | None, live: bool) -> str:
    if parts:
        named = [ARM_PARTS.get(p, (f"ARM 0x{p[0]:02x}/0x{p[1]:03x}", -1)) for p in parts.values()]
        counts, tiers = Counter(n for n, _ in named), dict(named)
        names = sorted(counts, key=lambda n: (-tiers[n], -counts[n]))
        model = names[0] if len(names) == 1 else " + ".join(f"{counts[n]}x {n}" for n in names)
    else:
        model = _first(procs, "model name") or _first(blocks, "Processor") or ""
        model = model or ((platform.processor() or platform.machine()) if live else "") or "unknown"
    soc = re.search(r"Raspberry Pi (?:Compute Module )?(\d+)", pi_model or "")
    if soc and soc.group(1) in PI_SOC:  # cpuinfo's "Hardware: BCM2835" is the same on every Pi
        model += f" ({PI_SOC[soc.group(1)]})"
    return model


def cpu_facts(root: Path, live: bool) -> dict:
    """The CPU fields of a HardwareProfile: arch, model, core counts, clusters, SIMD, Pi model."""
    blocks = parse_cpuinfo(read(root / "proc/cpuinfo") or "")
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
    model = (read(root / "proc/device-tree/model") or read(root / "sys/firmware/devicetree/base/model")
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
                clusters=clusters, simd=tuple(sorted({n for f in common for n in SIMD_NAMES.get(f, "").split()})),
                pi_model=pi_model)


def memory(root: Path, live: bool) -> tuple[int, int, int]:
    """(ram_total, ram_available, swap_total) in bytes; zeros when nothing says."""
    # On Linux /proc/meminfo is what psutil reads too (MemAvailable, SwapTotal): read it here and
    # `slmrun run` need not import psutil (~6 ms of its start). psutil for everything else.
    if live and not (os.path.isfile("/proc/meminfo") and os.access("/proc/meminfo", os.R_OK)):
        try:
            import psutil
            vm, swap = psutil.virtual_memory(), psutil.swap_memory()
            return int(vm.total), int(vm.available), int(swap.total)
        except Exception:
            pass
    info = {}
    for key, _, value in (line.partition(":") for line in (read(root / "proc/meminfo") or "").splitlines()):
        fields = value.split()
        if fields and fields[0].isdigit():
            info[key.strip()] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    total = info.get("MemTotal", 0)
    available = info.get("MemAvailable",  # kernels before 3.14 lack it
                         info.get("MemFree", 0) + info.get("Buffers", 0) + info.get("Cached", 0))
    return total, min(available, total) if total else available, info.get("SwapTotal", 0)


def process_rss() -> int | None:
    """This process's resident memory in bytes (for the server's /metrics), None if unknown."""
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except Exception:
        return None
