"""``HardwareProfile``: what a machine (this one, a recorded one or a named device) offers a
model: cores, SIMD, memory, bandwidth. A frozen record; the rest of the package fills it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


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
