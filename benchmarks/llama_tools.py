"""Shared by the benchmark scripts: llama.cpp's own tools built from the same source as
llama-cpp-python, and a quiet-machine guard (these machines are shared and noisy).

    from llama_tools import build_tools, wait_quiet
    exe = build_tools("llama-server")["llama-server"]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD = HERE / "_build"
AMX_OFF = "-mno-amx-int8 -mno-amx-tile -mno-amx-bf16"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, text=True, **kw)


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_snapshot() -> tuple[float, float, float]:
    """(CPU-seconds all processes spent busy, CPU-seconds of this process and its children,
    wall time): a benchmark that runs the model in its own process is not "others" either."""
    import resource
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    jiffies = [int(x) for x in fields]
    busy = sum(jiffies) - jiffies[3] - (jiffies[4] if len(jiffies) > 4 else 0)  # minus idle and iowait
    ours = sum(ru.ru_utime + ru.ru_stime for ru in (resource.getrusage(resource.RUSAGE_CHILDREN),
                                                    resource.getrusage(resource.RUSAGE_SELF)))
    return busy / os.sysconf("SC_CLK_TCK"), ours, time.perf_counter()


def others_cores(before, after) -> float:
    """Cores' worth of CPU that other processes used between two snapshots: the noise."""
    busy, ours, wall = (a - b for a, b in zip(after, before))
    return max(0.0, (busy - ours) / wall) if wall > 0 else 0.0


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (up to max_wait s) for a 2-second window in which others use < threshold cores."""
    deadline = time.monotonic() + max_wait
    while True:
        a = cpu_snapshot()
        time.sleep(2)
        busy = others_cores(a, cpu_snapshot())
        if busy < threshold or time.monotonic() > deadline:
            return busy
        log(f"machine busy ({busy:.2f} cores used by other processes); waiting")


def installed_build() -> dict:
    """What the installed llama-cpp-python was built from: version, llama.cpp commit, switches."""
    version = metadata.version("llama-cpp-python")
    site = Path(metadata.distribution("llama-cpp-python").locate_file(""))
    facts = {"version": version, "commit": None, "ggml": {}}
    llama_cfg = site / "lib/cmake/llama/llama-config.cmake"
    ggml_cfg = site / "lib/cmake/ggml/ggml-config.cmake"
    if llama_cfg.is_file():
        m = re.search(r'set\(LLAMA_BUILD_COMMIT\s+(\w+)\)', llama_cfg.read_text())
        facts["commit"] = m.group(1) if m else None
    if ggml_cfg.is_file():
        facts["ggml"] = dict(re.findall(r'set\((GGML_(?:NATIVE|OPENMP|AMX_\w+|AVX\w*))\s+"(\w+)"\)',
                                        ggml_cfg.read_text()))
    return facts


def fetch_source(version: str) -> Path:
    """vendor/llama.cpp from the sdist of the installed version (downloaded once)."""
    src = BUILD / f"src-{version}" / "vendor" / "llama.cpp"
    if (src / "CMakeLists.txt").is_file():
        return src
    BUILD.mkdir(parents=True, exist_ok=True)
    name = f"llama_cpp_python-{version}.tar.gz"
    sdist = next((p for p in (BUILD / "dl" / name, Path("/tmp/dl") / name) if p.is_file()), None)
    if sdist is None:
        log(f"downloading the llama-cpp-python {version} sdist")
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={version}", "-d", BUILD / "dl"])
        sdist = BUILD / "dl" / name
    log(f"extracting {sdist.name}")
    with tarfile.open(sdist) as tar:
        tar.extractall(BUILD / "extract", filter="data")
    shutil.move(str(BUILD / "extract" / f"llama_cpp_python-{version}"), str(BUILD / f"src-{version}"))
    shutil.rmtree(BUILD / "extract", ignore_errors=True)
    return src


def has_amx() -> bool:
    from slmrun.hardware import detect
    return "amx_int8" in detect().simd


def cmake_args() -> list[str]:
    """As the Makefile builds llama-cpp-python: Release, shared libraries, native CPU, no curl,
    the RPC backend, and no AMX kernels where the CPU has AMX."""
    flags = AMX_OFF if has_amx() else ""
    args = ["-G", "Ninja"] if shutil.which("ninja") else []
    args += ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON",
             "-DGGML_RPC=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON"]
    if flags:
        args += [f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"]
    return args


def build_tools(*targets: str, jobs: int | None = None) -> dict[str, Path]:
    """llama.cpp's own programs (llama-bench, llama-server, llama-completion, ggml-rpc-server, ...)
    built from the source vendored in the installed llama-cpp-python, under benchmarks/_build/
    (gitignored; nothing built is committed). Returns {target: path}; a no-op when built."""
    jobs = jobs or os.cpu_count() or 2
    src = fetch_source(installed_build()["version"])
    args = cmake_args()
    out = BUILD / "llama.cpp-build"
    stamp = out / "slmrun-build-args.json"
    exes = {t: out / "bin" / t for t in targets}
    configured = stamp.is_file() and json.loads(stamp.read_text()) == args
    if not configured:
        log("configuring llama.cpp" + (" (AMX kernels off, as for llama-cpp-python)" if has_amx() else ""))
        run(["cmake", "-S", src, "-B", out, *args], stdout=subprocess.DEVNULL)
        stamp.write_text(json.dumps(args))
    missing = [t for t, exe in exes.items() if not (configured and exe.is_file())]
    if missing:
        log(f"building {', '.join(missing)} with -j{jobs} (minutes, the first time)")
        run(["cmake", "--build", out, "--target", *missing, f"-j{jobs}"], stdout=subprocess.DEVNULL)
    return exes


def write_marked(path: Path, begin: str, end: str, block: str, *, title: str) -> None:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) in place of the old one
    in ``path``, or at its end; a new file starts with ``title``. Says so in the log."""
    text = path.read_text() if path.exists() else title + "\n"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: block, text, flags=re.S)
    else:
        text += "\n" + block + "\n"
    path.write_text(text)
    log(f"wrote {path}")


def analysis_block(path: Path) -> list[str]:
    """The lines of the file's hand-written "analysis" block, to write back when a script
    regenerates the file (a placeholder when there is none yet)."""
    begin, end = "<!-- analysis:begin -->", "<!-- analysis:end -->"
    text = path.read_text() if path.is_file() else ""
    a, b = text.find(begin), text.find(end)
    kept = text[a + len(begin):b].strip() if a >= 0 and b > a else ""
    return [begin, kept or "(interpretation: write it here; kept when the script runs again)", end, ""]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a benchmark starts)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http_ready(port: int, proc: subprocess.Popen, *, timeout: float, what: str) -> None:
    """Until ``GET /health`` on 127.0.0.1:``port`` answers 200; RuntimeError when ``proc``
    exits first or ``timeout`` seconds pass."""
    import http.client
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready within {timeout:g} s")
        time.sleep(0.2)


def mean_sd(values, digits: int = 1) -> str:
    """"mean ± sample std dev" of per-round figures (the value alone for one round)."""
    import statistics
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
