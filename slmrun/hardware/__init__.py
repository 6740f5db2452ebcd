"""What this machine (or a named device) can run: cores, SIMD, memory, bandwidth.

The only package that knows platform facts (/proc, /sys, cgroups, Raspberry Pi quirks)
and the only importer of psutil. Detection never raises on a missing or odd source:
every field degrades to a safe value, because `slmrun hw` must work in containers, on
phones and on boards whose kernels expose half of sysfs. ``detect(root=...)`` reads a
recorded tree instead (root/proc/cpuinfo, root/sys/...), so the logic is tested against
captures from devices we do not have.

    machine     HardwareProfile, the record everything here fills
    linux       /proc and /sys readers: cpuinfo, topology, frequencies, meminfo
    cgroup      cgroup v1/v2 memory limits and CPU quotas
    cpus        CPU tables: ARM parts, SIMD flag names, arch aliases, llama.cpp's feature string
    bandwidth   the memory-bandwidth measurement and its cache
    profiles    named devices (PROFILES, profile) and described ones (custom)
    probe       detect(): the profile of this machine or of a recorded tree

The names below are the package's public surface; import them from here.
"""

from ..units import parse_size
from .bandwidth import cached_bandwidth, measure_bandwidth
from .cpus import parse_llama_system_info
from .linux import parse_cpuinfo, peak_rss, process_rss, reset_peak_rss
from .machine import HardwareProfile
from .probe import detect
from .profiles import PROFILES, custom, profile

__all__ = ["PROFILES", "HardwareProfile", "cached_bandwidth", "custom", "detect", "measure_bandwidth",
           "parse_cpuinfo", "parse_llama_system_info", "parse_size", "peak_rss", "process_rss", "profile",
           "reset_peak_rss"]
