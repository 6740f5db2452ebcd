"""The limits of the cgroups a process runs in (v2 and v1): memory limit and working set,
CPU quota. Inside a container these are the machine.
"""

from __future__ import annotations

from pathlib import Path

from .linux import read, read_int, to_int

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
    for _, ctrls, path in (line.split(":", 2) for line in (read(root / "proc/self/cgroup") or "").splitlines()
                           if line.count(":") >= 2):
        if ".." in path or (ctrls and controller not in ctrls.split(",")):
            continue
        top = base if not ctrls else base / ctrls
        leaf = top / path.strip().lstrip("/")
        dirs += [d for d in (leaf, *leaf.parents) if len(d.parts) >= len(top.parts)]
    return list(dict.fromkeys(dirs + [base] + [base / m for m in v1_mounts]))


def cgroup_memory(root: Path) -> tuple[int | None, int | None]:
    """(limit, working set) of the tightest memory cgroup over us; None when unlimited."""
    limit = usage = None
    for d in _cgroup_dirs(root, "memory", ("memory",)):
        for limit_file, usage_file, cache_key in (("memory.max", "memory.current", "inactive_file"),
                                                  ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                   "total_inactive_file")):
            value = read_int(d / limit_file)  # v2's "max" reads as None
            if value is None or not 0 < value < _UNLIMITED or (limit is not None and value >= limit):
                continue
            limit, usage = value, read_int(d / usage_file)
            if usage is not None:  # page cache is reclaimable: count only the working set
                stat = dict(ln.split()[:2] for ln in (read(d / "memory.stat") or "").splitlines()
                            if len(ln.split()) >= 2)
                usage = max(0, usage - to_int(stat.get(cache_key)))
    return limit, usage


def cgroup_cpu_quota(root: Path) -> float | None:
    """The tightest CPU quota (in CPUs) of the cgroups over us: v2 cpu.max, v1 cfs quota/period."""
    quota = None
    for d in _cgroup_dirs(root, "cpu", ("cpu", "cpu,cpuacct")):
        fields = (read(d / "cpu.max") or "").split()
        if len(fields) == 2 and fields[0] != "max":
            q, period = to_int(fields[0]), to_int(fields[1])
        else:
            q, period = read_int(d / "cpu.cfs_quota_us"), read_int(d / "cpu.cfs_period_us")
        if q and period and q > 0 and period > 0:
            quota = min(quota or float("inf"), q / period)
    return quota
