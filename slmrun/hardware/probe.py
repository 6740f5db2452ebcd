"""``detect()``: one HardwareProfile for this machine, or for a recorded /proc + /sys tree.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import config
from . import bandwidth
from .cgroup import cgroup_cpu_quota, cgroup_memory
from .linux import cpu_facts, memory
from .machine import HardwareProfile


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
    cpu = cpu_facts(rootp, live)
    total, available, swap = memory(rootp, live)
    limit, usage = cgroup_memory(rootp)
    gbs = None
    if live:
        try:
            gbs = bandwidth.cached(bandwidth.bandwidth_key(cpu), measure_bandwidth)
        except Exception:  # a cache or numpy problem must not break `slmrun hw`
            gbs = None
    store = store_path if store_path is not None else (config.models_dir() if live else None)
    return HardwareProfile(ram_total=total, ram_available=available, cgroup_limit=limit, swap_total=swap,
                           disk_free=_disk_free(store), bandwidth_gbs=gbs, cgroup_usage=usage,
                           cpu_quota=cgroup_cpu_quota(rootp), **cpu)
