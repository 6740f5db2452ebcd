"""CPU facts as tables: ARM part numbers to core names and speed ranks, cpuinfo flags to
the feature names llama.cpp uses, architecture aliases, Raspberry Pi SoCs, and the
feature list in llama.cpp's own system-info string.
"""

from __future__ import annotations


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


# (implementer, part) -> (name, rough speed score), names from pytorch/cpuinfo's uarch
# tables (HiSilicon 0xd40 is Kirin 980's A76). The score only ranks cores when sysfs
# has neither cpu_capacity nor cpufreq: 40 little in-order, 70 older big, 100
# A76-class, 115 X-series, so that big and prime cores land within the 80% band of
# linux.cpu_facts.
ARM_PARTS: dict[tuple[int, int], tuple[str, int]] = {}
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
        ARM_PARTS[(0x41, int(_part, 16))] = (_name, _score)
del _score, _table, _item, _part, _name
ARM_PARTS.update({
    (0x48, 0xd40): ("Cortex-A76", 100), (0x48, 0xd01): ("TaiShan-v110", 100),
    (0x53, 0x001): ("Exynos M1/M2", 70), (0x53, 0x002): ("Exynos M3", 100), (0x53, 0x003): ("Exynos M4", 100),
    (0x53, 0x004): ("Exynos M5", 100), (0x51, 0x800): ("Kryo 2xx Gold", 70),
    (0x51, 0x801): ("Kryo 2xx Silver", 40),
    (0x51, 0x804): ("Kryo 485 Gold", 100), (0x51, 0x805): ("Kryo 485 Silver", 40)})

# cpuinfo flag -> the names of what llama.cpp can use. Linux spells SSE3 "pni";
# aarch64's "asimd" is what llama.cpp calls NEON.
SIMD_NAMES = {"pni": "sse3", "asimd": "asimd neon", "asimddp": "dotprod", "fphp": "fp16", "asimdhp": "fp16",
              "avx512_vnni": "avx512vnni", "avx512_bf16": "avx512bf16", "avx512_fp16": "avx512fp16"}
SIMD_NAMES.update((n, n) for n in "ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi2 avx512f avx512bw avx512dq avx512vl "
                  "avx512vbmi avx_vnni amx_int8 amx_bf16 neon vfpv4 i8mm sve sve2 sme bf16".split())
ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64", "armv8": "aarch64",
                "i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86", "armhf": "armv7l", "armv7": "armv7l"}
PI_SOC = {"5": "BCM2712", "500": "BCM2712", "4": "BCM2711", "400": "BCM2711", "3": "BCM2837"}


def normalise_arch(machine: str) -> str:
    m = (machine or "").strip().lower()
    return ARCH_ALIASES.get(m, m) or "unknown"
