"""Named devices to plan for (``slmrun plan --profile rpi4-4gb``) and described ones
(``--ram 4G --cores 4``). Where each figure comes from: docs/CALIBRATION.md.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import InvalidArgumentError
from .cpus import normalise_arch
from .machine import HardwareProfile

MiB, GiB = 1 << 20, 1 << 30

# bandwidth_gbs is llama.cpp's *effective* read rate (published token-generation speed x
# model file size), because that is what a speed estimate divides by. The sources of every
# figure, and the RAM each board's kernel reports: docs/CALIBRATION.md, "Device profiles".
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
    arch = normalise_arch(arch) if arch else (base.arch if base else "aarch64")
    if base is not None and base.arch == arch:
        perf = cores if base.performance_cores >= base.physical_cores else min(base.performance_cores, cores)
        return replace(base, ram_total=ram, ram_available=ram, logical_cores=cores, physical_cores=cores,
                       performance_cores=perf, clusters=(), cgroup_limit=None, cgroup_usage=None,
                       disk_free=None, name="custom")
    like, simd = _CUSTOM.get(arch, (None, ()))
    return _make("custom", arch, f"{arch} ({cores} cores)", cores, ram,
                 PROFILES[like].bandwidth_gbs if like else None, simd=simd, available=ram)
