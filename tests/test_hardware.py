"""Hardware detection against real recordings from devices we do not have.

The recordings are in tests/data/hardware/ (copied from the project's reference
material; its SOURCES.md says where each came from) and are read in place; where
detection needs a /proc + /sys layout and a recording is a single file, a root is
assembled in tmp_path from its content.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slmrun import hardware
from slmrun.errors import InvalidArgumentError

SAMPLES = Path(__file__).resolve().parent / "data" / "hardware"

GiB = 1 << 30


def sample(rel: str) -> str:
    return (SAMPLES / rel).read_text(encoding="utf-8")


def make_root(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    root = tmp_path / "root"
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    root.mkdir(exist_ok=True)
    return root


def detect_cpuinfo(tmp_path: Path, rel: str, **extra) -> hardware.HardwareProfile:
    return hardware.detect(root=make_root(tmp_path, {"proc/cpuinfo": sample(rel), **extra}))


# ------------------------------------------------------------------ parsing

def test_parse_cpuinfo_tolerates_published_copies():
    tabs = hardware.parse_cpuinfo(sample("rpi4/proc_cpuinfo.aarch64.sbc-bench.BCM2711B0-5.10.63-v8.txt"))
    spaces = hardware.parse_cpuinfo(
        sample("rpi4/proc_cpuinfo.aarch64.fastfetch-issue-2063.spaces-as-published.txt"))
    assert [b["CPU part"] for b in tabs if "processor" in b] == ["0xd08"] * 4
    assert [b["CPU part"] for b in spaces if "processor" in b] == ["0xd08"] * 4
    assert tabs[-1]["Model"] == "Raspberry Pi 4 Model B Rev 1.4"  # last line, no trailing newline
    indented = hardware.parse_cpuinfo(
        sample("x86/proc_cpuinfo.desktop-hybrid.i7-12700K.P-core-and-E-core.markdown-indented.txt"))
    assert [b["processor"] for b in indented if "processor" in b] == ["15", "16"]
    assert "avx_vnni" in indented[-1]["flags"].split()
    nul = hardware.parse_cpuinfo("processor\t: 0\r\nFeatures\t: fp asimd\x00\r\n")
    assert nul == [{"processor": "0", "Features": "fp asimd"}]
    assert hardware.parse_cpuinfo("") == []


def test_parse_llama_system_info_real_format():
    # As printed by llama.cpp's llama_print_system_info() with CUDA + CPU backends
    # (hybridgroup/yzma examples/systeminfo/README.md).
    text = ("CUDA : ARCHS = 860,890 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | CPU : SSE3 = 1 | SSSE3 = 1 "
            "| AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 "
            "| REPACK = 1 | ")
    assert hardware.parse_llama_system_info(text) == (
        "avx", "avx2", "avx_vnni", "bmi2", "f16c", "fma", "llamafile", "openmp", "repack", "sse3", "ssse3")
    # Pre-2024 format, no backend name, disabled features as 0 (Orange Pi 5, llama-cpp-python-cuBLAS-wheels#16).
    old = ("AVX = 0 | AVX2 = 0 | AVX512 = 0 | AVX512_VBMI = 0 | AVX512_VNNI = 0 | FMA = 0 | NEON = 1 | "
           "ARM_FMA = 1 | F16C = 0 | FP16_VA = 1 | WASM_SIMD = 0 | BLAS = 0 | SSE3 = 0 | VSX = 0 |")
    assert hardware.parse_llama_system_info(old) == ("arm_fma", "fp16_va", "neon")
    assert hardware.parse_llama_system_info("CPU : NEON = 1 | SVE = 1 | SVE_CNT = 16 | DOTPROD = 1 | ") == (
        "dotprod", "neon", "sve")
    assert hardware.parse_llama_system_info("") == ()


@pytest.mark.parametrize("text, expected", [
    ("4G", 4 * GiB), ("512M", 512 << 20), ("1.5GiB", 3 * GiB // 2), ("2GB", 2 * GiB), ("1024", 1024),
    ("8 gib", 8 * GiB), ("64k", 65536), ("1T", 1 << 40), ("100B", 100), (2048, 2048),
])
def test_parse_size(text, expected):
    assert hardware.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1G", "4X", "four", "1.2.3G", "4 G B", "5iB"])
def test_parse_size_rejects(text):
    with pytest.raises(InvalidArgumentError):
        hardware.parse_size(text)


# -------------------------------------------------------- Raspberry Pi

def test_pi4_aarch64(tmp_path):
    hw = detect_cpuinfo(tmp_path, "rpi4/proc_cpuinfo.aarch64.sbc-bench.BCM2711B0-5.10.63-v8.txt")
    assert hw.arch == "aarch64"
    assert (hw.logical_cores, hw.physical_cores, hw.performance_cores) == (4, 4, 4)
    assert {"neon", "asimd"} <= set(hw.simd) and "dotprod" not in hw.simd
    assert hw.pi_model == "Raspberry Pi 4 Model B Rev 1.4"
    assert hw.cpu_model == "Cortex-A72 (BCM2711)"  # not the "Hardware: BCM2835" the kernel claims
    assert hw.clusters == () and hw.bandwidth_gbs is None


def test_pi4_device_tree_model_is_nul_terminated_and_wins(tmp_path):
    printed = sample("rpi4/device-tree_model.as-printed-by-cat.txt")
    raw = printed.rstrip("\n").encode() + b"\x00"  # the real file: NUL, no newline
    hw = detect_cpuinfo(tmp_path, "rpi4/proc_cpuinfo.aarch64.fastfetch-issue-2063.spaces-as-published.txt",
                        **{"proc/device-tree/model": raw})
    assert hw.pi_model == "Raspberry Pi 4 Model B Rev 1.4"  # cpuinfo's Model line says Rev 1.5
    assert hw.arch == "aarch64" and hw.logical_cores == 4


def test_pi4_32bit_kernel(tmp_path):
    hw = detect_cpuinfo(tmp_path, "rpi4/proc_cpuinfo.armv7l.5.10.17-v7l.markdown-guide.txt")
    assert hw.arch == "armv7l"
    assert {"neon", "vfpv4"} <= set(hw.simd) and "asimd" not in hw.simd
    assert hw.cpu_model == "Cortex-A72 (BCM2711)"
    assert hw.pi_model == "Raspberry Pi 4 Model B Rev 1.4"
    assert hw.physical_cores == hw.performance_cores == 4


@pytest.mark.parametrize("rel", ["rpi5/proc_cpuinfo.sbc-bench.BCM2712-6.1.47.txt",
                                 "rpi5/proc_cpuinfo.ChronoAndross-README.debian13.txt"])
def test_pi5(tmp_path, rel):
    hw = detect_cpuinfo(tmp_path, rel,
                        **{"proc/meminfo": sample("rpi5/proc_meminfo.ChronoAndross-README.debian13.txt")})
    assert hw.arch == "aarch64" and hw.cpu_model == "Cortex-A76 (BCM2712)"
    assert {"asimd", "neon", "dotprod", "fp16"} <= set(hw.simd)  # Features: ... fphp asimdhp ... asimddp
    assert "i8mm" not in hw.simd and "sve" not in hw.simd
    assert hw.pi_model == "Raspberry Pi 5 Model B Rev 1.0"
    assert (hw.ram_total, hw.ram_available, hw.swap_total) == (8252368 * 1024, 6126208 * 1024, 2097136 * 1024)
    assert hw.cgroup_limit is None and hw.memory_limit == hw.ram_total


# ------------------------------------------------------------ big.LITTLE

def test_rk3588_from_part_numbers_only(tmp_path):
    hw = detect_cpuinfo(tmp_path, "rk3588/proc_cpuinfo.sbc-bench.RK3588-5.10.66.txt")
    assert hw.arch == "aarch64"
    assert (hw.logical_cores, hw.physical_cores, hw.performance_cores) == (8, 8, 4)
    assert hw.cpu_model == "4x Cortex-A76 + 4x Cortex-A55"
    assert hw.clusters == ()  # part tiers rank cores but give no frequency
    assert hw.pi_model is None


def test_rk3588_with_cpufreq_from_orange_pi_5_log(tmp_path):
    table = sample("rk3588/sbc-bench.4D0a.OrangePi5.cpu-topology-and-lscpu.lines819-877.txt")
    rows = re.findall(r"^\s*(\d+)\s+\d+\s+\d+\s+\d+\s+(\d+)\s+Cortex", table, re.MULTILINE)
    assert len(rows) == 8
    files = {f"sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq": f"{int(mhz) * 1000}\n"
             for cpu, mhz in rows}
    hw = detect_cpuinfo(tmp_path, "rk3588/proc_cpuinfo.sbc-bench.RK3588-5.10.66.txt", **files)
    assert hw.clusters == ((2400000, 4), (1800000, 4))
    assert hw.performance_cores == 4 and hw.physical_cores == 8


def test_galaxy_s9_tree():
    hw = hardware.detect(root=SAMPLES / "galaxy-s9-bigLITTLE")
    assert hw.arch == "armv8l"  # a 32-bit process's view of an ARMv8 kernel: neon, no asimd
    assert (hw.logical_cores, hw.physical_cores, hw.performance_cores) == (8, 8, 4)
    assert hw.clusters == ((2704000, 4), (1794000, 4))
    assert hw.cpu_model == "4x Exynos M3 + 4x Cortex-A55"
    assert "neon" in hw.simd and "asimd" not in hw.simd


def test_mate20_tree_counts_only_the_fastest_cluster():
    # Kirin 980: 2x A76 @ 2.6 GHz + 2x A76 @ 1.9 GHz + 4x A55 @ 1.8 GHz. The 1.9 GHz
    # pair is below 80% of the top, so only the 2.6 GHz pair are performance cores.
    hw = hardware.detect(root=SAMPLES / "huawei-mate-20-bigLITTLE")
    assert hw.clusters == ((2600000, 2), (1901000, 2), (1805000, 4))
    assert hw.performance_cores == 2 and hw.physical_cores == 8
    assert hw.cpu_model == "4x Cortex-A76 + 4x Cortex-A55"


# ------------------------------------------------------------------- x86

def test_x86_laptop_single_block(tmp_path):
    hw = detect_cpuinfo(tmp_path, "x86/proc_cpuinfo.laptop.i7-1355U.processor0-block.txt")
    assert hw.arch == "x86_64" and "i7-1355U" in hw.cpu_model
    assert (hw.logical_cores, hw.physical_cores) == (12, 10)  # siblings / cpu cores of one published block
    assert hw.performance_cores == hw.physical_cores  # P vs E cannot be told from cpuinfo alone
    assert {"avx2", "avx_vnni", "fma", "f16c", "sse3", "ssse3", "avx"} <= set(hw.simd)
    assert not any(f.startswith("avx512") for f in hw.simd)


def test_x86_desktop_hybrid_markdown_copy(tmp_path):
    hw = detect_cpuinfo(tmp_path,
                        "x86/proc_cpuinfo.desktop-hybrid.i7-12700K.P-core-and-E-core.markdown-indented.txt")
    assert hw.arch == "x86_64" and "i7-12700K" in hw.cpu_model
    assert (hw.logical_cores, hw.physical_cores) == (20, 12)
    assert {"avx2", "avx_vnni"} <= set(hw.simd) and "avx512f" not in hw.simd


def test_x86_hybrid_laptop_from_cpufreq(tmp_path):
    # i7-1360P (Khadas Mind): per-CPU cpufreq max and lscpu flags from the sbc-bench log;
    # topology from lscpu's counts (2 threads per P core, listed as adjacent CPUs).
    text = sample("x86/sbc-bench.4E5J.i7-1360P.cpu-topology-and-lscpu.lines3025-3080.txt")
    rows = re.findall(r"^\s*(\d+)\s+\d+\s+\d+\s+\d+\s+(\d+)\s+(Performance|Efficiency)", text, re.MULTILINE)
    flags = re.search(r"^Flags:\s+(.*)$", text, re.MULTILINE).group(1)
    name = re.search(r"^Model name:\s+(.*)$", text, re.MULTILINE).group(1)
    assert len(rows) == 16
    files = {"proc/cpuinfo": "".join(f"processor\t: {cpu}\nmodel name\t: {name}\nflags\t\t: {flags}\n\n"
                                     for cpu, _, _ in rows)}
    for cpu, mhz, kind in rows:
        c = int(cpu)
        siblings = f"{c - c % 2}-{c - c % 2 + 1}" if kind == "Performance" else cpu
        files[f"sys/devices/system/cpu/cpu{c}/cpufreq/cpuinfo_max_freq"] = f"{int(mhz) * 1000}\n"
        files[f"sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list"] = siblings + "\n"
    hw = hardware.detect(root=make_root(tmp_path, files))
    assert (hw.logical_cores, hw.physical_cores, hw.performance_cores) == (16, 12, 4)
    assert hw.clusters == ((5000000, 4), (3700000, 8))
    assert {"avx2", "avx_vnni"} <= set(hw.simd) and "avx512f" not in hw.simd


# ---------------------------------------------------------------- cgroups

LAPTOP_MEMINFO = "x86/proc_meminfo.gopsutil.testdata.intelcorei5.txt"


def test_cgroup_v2_limit(tmp_path):
    hw = detect_cpuinfo(tmp_path, "x86/proc_cpuinfo.laptop.i7-1355U.processor0-block.txt", **{
        "proc/meminfo": sample(LAPTOP_MEMINFO),
        "sys/fs/cgroup/memory.max": sample("cgroup/memory.max.cgroupv2.container-memory-42m.txt")})
    assert hw.ram_total == 16115528 * 1024
    assert hw.cgroup_limit == 44040192 == 42 << 20
    assert hw.memory_limit == 44040192 and hw.memory_available <= hw.memory_limit


def test_cgroup_v1_limit_and_sentinel(tmp_path):
    v1 = "sys/fs/cgroup/memory/memory.limit_in_bytes"
    hw = hardware.detect(root=make_root(tmp_path / "a", {
        "proc/meminfo": sample(LAPTOP_MEMINFO),
        v1: sample("cgroup/memory.limit_in_bytes.cgroupv1.container-memory-42m.txt")}))
    assert hw.cgroup_limit == 44040192 and hw.memory_limit == 44040192
    # No unlimited reading was captured; these are the documented values (SOURCES.md):
    # v1's page-aligned LONG_MAX and v2's "max".
    for i, files in enumerate(({v1: "9223372036854771712\n"}, {"sys/fs/cgroup/memory.max": "max\n"})):
        root = make_root(tmp_path / str(i), {"proc/meminfo": sample(LAPTOP_MEMINFO), **files})
        hw = hardware.detect(root=root)
        assert hw.cgroup_limit is None and hw.memory_limit == hw.ram_total


def test_cgroup_working_set_limits_memory_available(tmp_path):
    root = make_root(tmp_path, {
        "proc/meminfo": sample(LAPTOP_MEMINFO),
        "sys/fs/cgroup/memory.max": "1073741824\n",
        "sys/fs/cgroup/memory.current": str(600 << 20) + "\n",
        "sys/fs/cgroup/memory.stat": f"anon {300 << 20}\nfile {300 << 20}\ninactive_file {200 << 20}\n"})
    hw = hardware.detect(root=root)
    assert hw.cgroup_usage == 400 << 20  # page cache on the inactive list does not count
    assert hw.memory_available == (1 << 30) - (400 << 20)


# ------------------------------------------------------- degraded sources

def test_missing_everything_is_not_an_error(tmp_path):
    hw = hardware.detect(root=tmp_path / "nothing-here")
    assert hw.arch == "unknown" and hw.cpu_model == "unknown"
    assert (hw.logical_cores, hw.physical_cores, hw.performance_cores) == (1, 1, 1)
    assert (hw.ram_total, hw.ram_available, hw.swap_total) == (0, 0, 0)
    assert hw.cgroup_limit is None and hw.pi_model is None and hw.disk_free is None
    assert hw.simd == () and hw.clusters == () and hw.bandwidth_gbs is None
    json.dumps(hw.to_dict())


def test_garbage_sources_are_not_an_error(tmp_path):
    root = make_root(tmp_path, {
        "proc/cpuinfo": b"\xff\xfe\x00garbage\n:\n::::\nprocessor : x\ncpu cores : many\ncore id : 0\n",
        "proc/meminfo": "MemTotal: lots\nSwapTotal:\n",
        "proc/self/cgroup": "nonsense\n0::/../../etc\n",
        "sys/devices/system/cpu/online": "zero-seven",
        "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq": "fast",
        "sys/fs/cgroup/memory.max": "-1\n",
        "sys/fs/cgroup/memory.stat": "inactive_file\n"})
    hw = hardware.detect(root=root)
    assert hw.logical_cores >= 1 and hw.ram_total == 0 and hw.cgroup_limit is None


# ------------------------------------------------------------ live machine

def test_live_machine(tmp_path):
    hw = hardware.detect(store_path=tmp_path / "not" / "yet" / "there")
    assert hw.physical_cores >= 1 and hw.logical_cores >= hw.physical_cores >= hw.performance_cores >= 1
    assert hw.ram_total > 0 and 0 < hw.ram_available <= hw.ram_total
    assert hw.arch and hw.arch != "unknown" and hw.cpu_model
    assert hw.disk_free is not None and hw.disk_free > 0
    assert hw.memory_available <= hw.memory_limit <= hw.ram_total
    assert hw.bandwidth_gbs is None  # nothing cached in this fresh SLMRUN_HOME, and not asked to measure
    assert json.loads(json.dumps(hw.to_dict()))["memory_limit"] == hw.memory_limit


def test_measure_bandwidth_small():
    assert hardware.measure_bandwidth(size_mb=8, repeats=2) > 0.1
    with pytest.raises(InvalidArgumentError):
        hardware.measure_bandwidth(size_mb=0)


def test_cached_bandwidth(monkeypatch, isolated_home):
    assert hardware.cached_bandwidth(measure_if_missing=False) is None
    calls = []
    monkeypatch.setattr(hardware.bandwidth, "measure_bandwidth", lambda **kw: calls.append(kw) or 12.5)
    assert hardware.cached_bandwidth() == 12.5
    assert hardware.cached_bandwidth() == 12.5 and len(calls) == 1  # second time from the cache
    cache = json.loads((isolated_home / "hardware.json").read_text())
    assert [v["gbs"] for v in cache["bandwidth"].values()] == [12.5]
    assert hardware.detect().bandwidth_gbs == 12.5
    (isolated_home / "hardware.json").write_text("{not json")
    assert hardware.cached_bandwidth(measure_if_missing=False) is None


# --------------------------------------------------------------- profiles

def test_profiles_are_consistent():
    assert {"rpi4-2gb", "rpi4-4gb", "rpi4-8gb", "rpi5-4gb", "rpi5-8gb", "orangepi5-8gb", "laptop-8gb",
            "laptop-16gb", "container-1gb"} <= set(hardware.PROFILES)
    for name, p in hardware.PROFILES.items():
        assert p.name == name and hardware.profile(name) is p
        assert p.logical_cores >= p.physical_cores >= p.performance_cores >= 1
        assert p.bandwidth_gbs and p.bandwidth_gbs > 0
        assert 0 < p.memory_available <= p.memory_limit <= p.ram_total
        assert p.simd == tuple(sorted(p.simd))
        json.dumps(p.to_dict())
    assert hardware.profile("orangepi5-8gb").performance_cores == 4
    assert hardware.profile("laptop-16gb").performance_cores == 4
    assert "dotprod" in hardware.profile("rpi5-8gb").simd and "dotprod" not in hardware.profile("rpi4-4gb").simd
    assert hardware.profile("container-1gb").memory_limit == GiB
    assert hardware.profile(" RPi5-8GB ").name == "rpi5-8gb"


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(InvalidArgumentError) as err:
        hardware.profile("rpi6")
    assert "rpi6" in str(err.value) and "rpi5-8gb" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_custom():
    hw = hardware.custom(ram=hardware.parse_size("4G"), cores=4, arch="arm64")
    assert (hw.arch, hw.ram_total, hw.ram_available, hw.physical_cores) == ("aarch64", 4 * GiB, 4 * GiB, 4)
    assert hw.bandwidth_gbs == hardware.profile("rpi5-8gb").bandwidth_gbs and "neon" in hw.simd
    assert hardware.custom(ram=GiB, cores=2).arch == "aarch64"
    assert hardware.custom(ram=GiB, cores=2, arch="amd64").simd == tuple(sorted(("avx", "avx2", "bmi2", "f16c",
                                                                               "fma", "sse3", "ssse3")))
    assert hardware.custom(ram=GiB, cores=2, arch="riscv64").bandwidth_gbs is None
    opi = hardware.custom(ram=2 * GiB, cores=8, base=hardware.profile("orangepi5-8gb"))
    assert (opi.performance_cores, opi.bandwidth_gbs, opi.memory_limit) == (4, 14.0, 2 * GiB)
    assert hardware.custom(ram=GiB, cores=2, base=hardware.profile("rpi4-8gb")).performance_cores == 2
    for bad in (dict(ram=0, cores=4), dict(ram=GiB, cores=0)):
        with pytest.raises(InvalidArgumentError):
            hardware.custom(**bad)


def test_cgroup_cpu_quota_caps_the_threads(tmp_path):
    """The nerdctl recording (`--cpus 0.42`): cpu.max "42000 100000" -> 0.42 CPUs -> one thread."""
    sample = SAMPLES / "cgroup" / "nerdctl.TestRunCgroupV2.expected-output.cpu.max+memory.max+pids.max.txt"
    cpu_max, memory_max = sample.read_text().splitlines()[:2]
    cg = tmp_path / "sys/fs/cgroup"
    cg.mkdir(parents=True)
    (cg / "cpu.max").write_text(cpu_max + "\n")
    (cg / "memory.max").write_text(memory_max + "\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("".join(
        f"processor\t: {i}\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2\n\n" for i in range(8)))
    hw = hardware.detect(root=tmp_path)
    assert hw.cpu_quota == pytest.approx(0.42)
    assert hw.performance_cores == 8 and hw.usable_cores == 1
    (cg / "cpu.max").write_text("max 100000\n")
    assert hardware.detect(root=tmp_path).usable_cores == 8
    (cg / "cpu.max").write_text("250000 100000\n")
    assert hardware.detect(root=tmp_path).usable_cores == 3
