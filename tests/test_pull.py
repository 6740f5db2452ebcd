"""`slmrun pull` end to end, against a local hub (tests/hubserver.py); nothing here touches the internet.

The registry is a TOML file in tmp_path (SLMRUN_REGISTRY) whose hub entries point at
repos the test server publishes; HF_ENDPOINT points at the server. huggingface_hub reads
its endpoint into ``constants.ENDPOINT`` once, at import: slmrun must read HF_ENDPOINT at
call time, so the tests point that constant at ``<server>/leak`` instead, where a request
that ignored HF_ENDPOINT would be seen (and fail the test) rather than leave the machine.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import HubServer  # noqa: E402

import slmrun.api as api  # noqa: E402
from slmrun import errors as E  # noqa: E402

REPO = "test-org/fakehub-tiny-GGUF"
MODEL = "fakehub-tiny"
SMALL = "fakehub-tiny.Q8_0.gguf"  # ~ 10 KB, sha256 pinned in the registry
BIG = "fakehub-tiny.F32.gguf"  # ~ 400 KB, sha256 pinned: for cuts and resumes
NOSHA = "fakehub-tiny.Q4_0.gguf"  # no sha256 in the registry: verified against the hub's ETag
WRONG_SHA = "fakehub-tiny.Q6_K.gguf"  # the registry pins a hash the hub does not have
CHANGING = "fakehub-tiny.Q5_K_M.gguf"  # big, no sha256 in the registry: republished mid-test


def write_gguf(path: Path, *, pad: int = 0, seed: int = 0) -> bytes:
    """A small valid llama GGUF (what slmrun.gguf_info.read_info checks before install)."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"fakehub-tiny-{seed}")
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_context_length(512)
    w.add_feed_forward_length(128)
    w.add_file_type(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((32, 64)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    if pad:
        w.add_tensor("blk.0.ffn_up.weight", rng.standard_normal((pad // 64, 64)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.fixture(scope="session")
def ggufs(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("served")
    files = {SMALL: write_gguf(d / SMALL, seed=1), BIG: write_gguf(d / BIG, pad=100_000, seed=2),
             NOSHA: write_gguf(d / NOSHA, seed=3), WRONG_SHA: write_gguf(d / WRONG_SHA, seed=4),
             CHANGING: write_gguf(d / CHANGING, pad=100_000, seed=5)}
    assert len(files[BIG]) > 300_000
    return files


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_toml(name: str, files: list[dict], default_quant: str | None = None) -> str:
    head = textwrap.dedent(f"""
        [models.{name}]
        description = "A tiny test model served by tests/hubserver.py"
        license = "Apache-2.0"
        architecture = "llama"
        n_params = 10000
        block_count = 2
        embedding_length = 64
        feed_forward_length = 128
        head_count = 4
        head_count_kv = 2
        context_length = 512
        vocab_size = 32
        default_quant = "{default_quant or files[0]['quant']}"
        """)
    body = ""
    for f in files:
        body += f"\n[[models.{name}.files]]\n" + "".join(
            f"{k} = {v}\n" if isinstance(v, int) else f'{k} = "{v}"\n' for k, v in f.items())
    return head + body


class Env:
    def __init__(self, hub: HubServer, home: Path, tmp: Path, files: dict[str, bytes], monkeypatch):
        self.hub, self.home, self.tmp, self.files, self._mp = hub, home, tmp, files, monkeypatch
        self._n = 0

    def use_registry(self, text: str) -> Path:
        self._n += 1  # a new file each time: the registry is cached by (path, mtime)
        path = self.tmp / f"registry-{self._n}.toml"
        path.write_text(text)
        self._mp.setenv("SLMRUN_REGISTRY", str(path))
        return path

    def stored(self) -> list[Path]:
        return sorted((self.home / "models").rglob("*.gguf"))

    def partials(self) -> list[Path]:
        return sorted(p for p in (self.home / "partial").rglob("*") if p.is_file())

    def subprocess_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["HF_HUB_DISABLE_TELEMETRY"] = "1"  # belt and braces: this process's constants are not patched
        env.pop("SLMRUN_DEBUG", None)
        return env


@pytest.fixture
def env(tmp_path, monkeypatch, ggufs):
    import huggingface_hub.file_download  # noqa: F401  (its hub origins are fixed at import: before the patches)
    from huggingface_hub import constants

    home = tmp_path / "home"
    monkeypatch.setenv("SLMRUN_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "SLMRUN_DEBUG", "SLMRUN_MODEL"):
        monkeypatch.delenv(var, raising=False)
    with HubServer({REPO: ggufs}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        # http_get writes in DOWNLOAD_CHUNK_SIZE pieces (slmrun caps it at 1 MB): bytes of a cut
        # chunk are lost, so a resume restarts at the last whole chunk. Scaled to our 400 KB file.
        monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 << 10)
        leak = hub.endpoint + "/leak"  # where a request that ignored HF_ENDPOINT would land
        monkeypatch.setattr(constants, "ENDPOINT", leak)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", leak + "/{repo_id}/resolve/{revision}/{filename}")
        e = Env(hub, home, tmp_path, ggufs, monkeypatch)
        e.use_registry(model_toml(MODEL, [
            dict(quant="Q8_0", repo=REPO, filename=SMALL, size=len(ggufs[SMALL]), sha256=sha(ggufs[SMALL])),
            dict(quant="F32", repo=REPO, filename=BIG, size=len(ggufs[BIG]), sha256=sha(ggufs[BIG])),
            dict(quant="Q4_0", repo=REPO, filename=NOSHA),
            dict(quant="Q6_K", repo=REPO, filename=WRONG_SHA, sha256="0" * 64),
            dict(quant="Q5_K_M", repo=REPO, filename=CHANGING),
            dict(quant="Q5_0", repo=REPO, filename="absent.gguf"),
            dict(quant="Q3_K_M", repo=REPO, filename=SMALL, revision="f" * 40),
            dict(quant="Q2_K", repo="test-org/no-such-repo", filename=SMALL),
        ]))
        yield e
        # Nothing but the file's requests: no /api/ call, nothing that ignored HF_ENDPOINT.
        assert [h for h in hub.requests() if "/api/" in h.path or h.path.startswith("/leak")] == []


def assert_nothing_stored(e: Env):
    assert e.stored() == []
    assert api.list_models() == []


# --- the good path ------------------------------------------------------------------

def test_clean_pull_then_second_pull_is_a_no_op(env):
    m = api.pull(f"{MODEL}:q8_0", progress=False)
    assert m.path == env.home / "models" / MODEL / SMALL
    assert m.path.read_bytes() == env.files[SMALL]
    assert m.sha256 == sha(env.files[SMALL]) and m.quant == "Q8_0" and m.source == f"hub:{REPO}"
    assert [x.ref for x in api.list_models()] == [f"{MODEL}:q8_0"]
    assert env.partials() == []  # the verified file was moved, not copied
    assert not (env.tmp / "hf").exists()  # huggingface_hub left nothing behind in HF_HOME
    assert len(env.hub.requests(filename=SMALL, method="HEAD")) == 1
    assert len(env.hub.body_gets(SMALL)) == 1 and env.hub.ranges(SMALL) == []

    before = len(env.hub.hits)
    again = api.pull(f"{MODEL}:Q8_0", progress=False)
    assert again.path == m.path and again.sha256 == m.sha256
    assert env.hub.hits[before:] == []  # not even a HEAD


def test_pull_without_registry_hash_verifies_and_records_the_hubs(env):
    m = api.pull(f"{MODEL}:q4_0", progress=False)
    assert m.sha256 == sha(env.files[NOSHA])


def test_progress_bar_is_huggingface_hubs_own(env, capfd, monkeypatch):
    # huggingface_hub hides its bar when stderr is not a terminal; TQDM_POSITION=-1 forces it on.
    monkeypatch.setenv("TQDM_POSITION", "-1")
    api.pull(f"{MODEL}:q8_0", progress=False)
    assert capfd.readouterr().err == ""
    api.pull(f"{MODEL}:f32", progress=True)
    err = capfd.readouterr().err
    assert BIG in err and "100%" in err and "409k" in err  # name, size, rate/ETA: tqdm's bar


def test_no_other_request_even_with_telemetry_on(env, monkeypatch):
    """huggingface_hub fetches {ENDPOINT}/api/agent-harnesses once a day unless telemetry is off."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent

    for var in ("HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(env.tmp / "no-agent-cache.json"))
    monkeypatch.setattr(_detect_agent, "_registry", None)
    api.pull(f"{MODEL}:q8_0", progress=False)
    assert [h for h in env.hub.requests() if "/api/" in h.path] == []


# --- cuts and resumes ----------------------------------------------------------------

def test_cut_download_fails_cleanly_and_resumes_on_next_pull(env):
    half = 150_000
    env.hub.cut_next_get(BIG, half)  # the connection drops half way...
    env.hub.fail_next_get(BIG, 503)  # ...and huggingface_hub's own retry is refused
    with pytest.raises(E.DownloadError) as exc:
        api.pull(f"{MODEL}:f32", progress=False)
    assert "503" in str(exc.value) and "resumes" in str(exc.value)
    assert_nothing_stored(env)
    [partial] = env.partials()
    kept = partial.stat().st_size
    assert half - (16 << 10) <= kept <= half  # whole chunks only

    before = len(env.hub.hits)
    m = api.pull(f"{MODEL}:f32", progress=False)
    second = [h for h in env.hub.hits[before:] if h.method == "GET"]
    assert [(h.range, h.status) for h in second] == [(f"bytes={kept}-", 206)]
    assert m.sha256 == sha(env.files[BIG]) and m.path.read_bytes() == env.files[BIG]
    assert env.partials() == []


def test_connection_cut_once_is_resumed_within_the_same_pull(env):
    env.hub.cut_next_get(BIG, 6 * (16 << 10))
    m = api.pull(f"{MODEL}:f32", progress=False)
    assert m.sha256 == sha(env.files[BIG])
    [(r1, s1), (r2, s2)] = [(h.range, h.status) for h in env.hub.requests(filename=BIG, method="GET")]
    assert (r1, s1) == (None, 200) and s2 == 206
    assert 0 < int(r2.removeprefix("bytes=").rstrip("-")) <= 6 * (16 << 10)


def test_resume_survives_a_server_that_ignores_range(env):
    env.hub.cut_next_get(BIG, 150_000)
    env.hub.fail_next_get(BIG, 503)
    with pytest.raises(E.DownloadError):
        api.pull(f"{MODEL}:f32", progress=False)
    assert env.partials()[0].stat().st_size > 0
    env.hub.ignore_range = True  # answers 200 + everything: huggingface_hub rewinds our partial
    m = api.pull(f"{MODEL}:f32", progress=False)
    assert m.sha256 == sha(env.files[BIG]) and m.size == len(env.files[BIG])


def test_partial_of_an_older_upstream_version_is_not_resumed(env, ggufs, tmp_path):
    env.hub.cut_next_get(CHANGING, 150_000)
    env.hub.fail_next_get(CHANGING, 503)
    with pytest.raises(E.DownloadError):
        api.pull(f"{MODEL}:q5_k_m", progress=False)
    [old] = env.partials()
    new = write_gguf(tmp_path / "new.gguf", pad=100_000, seed=6)
    env.hub.add(REPO, CHANGING, new)  # republished: a new ETag
    m = api.pull(f"{MODEL}:q5_k_m", progress=False)
    assert m.sha256 == sha(new) and not old.exists()
    assert env.hub.requests(filename=CHANGING, method="GET")[-1].range is None


def test_disk_full_during_download_keeps_partial_and_resumes(env, monkeypatch):
    import builtins

    from slmrun.sources import hub as hubsrc

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            if self.f.tell() + len(data) > 64 << 10:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    disk = {"full": True}

    def fake_open(*a, **k):
        f = builtins.open(*a, **k)
        return FullDisk(f) if disk["full"] else f

    monkeypatch.setattr(hubsrc, "open", fake_open, raising=False)
    with pytest.raises(E.InsufficientDiskSpaceError) as exc:
        api.pull(f"{MODEL}:f32", progress=False)
    assert "resumes" in str(exc.value)
    assert_nothing_stored(env)
    [partial] = env.partials()
    kept = partial.stat().st_size
    assert 0 < kept <= 64 << 10

    disk["full"] = False  # space freed
    m = api.pull(f"{MODEL}:f32", progress=False)
    assert m.sha256 == sha(env.files[BIG])
    assert env.hub.ranges(BIG)[-1] == f"bytes={kept}-"


def test_too_little_free_space_downloads_nothing(env, monkeypatch):
    import slmrun.store

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(slmrun.store.shutil, "disk_usage", lambda p: usage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(E.InsufficientDiskSpaceError) as exc:
        api.pull(f"{MODEL}:f32", progress=False)
    assert "free" in str(exc.value)
    assert env.hub.body_gets(BIG) == []
    assert_nothing_stored(env)
    assert env.partials() == []


# --- wrong bytes -------------------------------------------------------------------

def test_checksum_mismatch_against_registry_sha(env):
    env.hub.corrupt(BIG)
    with pytest.raises(E.ChecksumMismatchError) as exc:
        api.pull(f"{MODEL}:f32", progress=False)
    msg = str(exc.value)
    assert sha(env.files[BIG]) in msg and "deleted" in msg
    assert_nothing_stored(env)
    assert env.partials() == []  # a wrong file is never resumed

    env.hub.corrupt(BIG, False)
    assert api.pull(f"{MODEL}:f32", progress=False).sha256 == sha(env.files[BIG])
    assert env.hub.ranges(BIG) == []  # started again from zero


def test_checksum_mismatch_against_hub_etag_when_registry_has_none(env):
    env.hub.corrupt(NOSHA)
    with pytest.raises(E.ChecksumMismatchError) as exc:
        api.pull(f"{MODEL}:q4_0", progress=False)
    assert sha(env.files[NOSHA]) in str(exc.value)
    assert_nothing_stored(env)
    assert env.partials() == []


def test_registry_and_hub_disagree_nothing_is_downloaded(env):
    with pytest.raises(E.ChecksumMismatchError) as exc:
        api.pull(f"{MODEL}:q6_k", progress=False)
    assert "0" * 64 in str(exc.value) and sha(env.files[WRONG_SHA]) in str(exc.value)
    assert env.hub.body_gets(WRONG_SHA) == []
    assert_nothing_stored(env)


# --- the server says no ---------------------------------------------------------------

@pytest.mark.parametrize("quant, kind", [("q5_0", "file"), ("q2_k", "repository"), ("q3_k_m", "revision")])
def test_not_found(env, quant, kind):
    with pytest.raises(E.RemoteFileNotFoundError) as exc:
        api.pull(f"{MODEL}:{quant}", progress=False)
    assert isinstance(exc.value, FileNotFoundError) and f"no such {kind}" in str(exc.value)
    assert_nothing_stored(env)


def test_server_error_on_metadata(env):
    env.hub.fail(SMALL, 500)
    with pytest.raises(E.DownloadError) as exc:
        api.pull(f"{MODEL}:q8_0", progress=False)
    assert type(exc.value) is E.DownloadError and "HTTP 500" in str(exc.value)
    assert_nothing_stored(env)


def test_server_error_on_body(env):
    env.hub.fail_next_get(SMALL, 500)
    with pytest.raises(E.DownloadError) as exc:
        api.pull(f"{MODEL}:q8_0", progress=False)
    assert type(exc.value) is E.DownloadError and "HTTP 500" in str(exc.value)
    assert_nothing_stored(env)
    assert api.pull(f"{MODEL}:q8_0", progress=False).sha256 == sha(env.files[SMALL])


# --- offline ---------------------------------------------------------------------------

def test_offline_mode(env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(E.OfflineError) as exc:
        api.pull(f"{MODEL}:q8_0", progress=False)
    assert "slmrun import" in exc.value.hint
    assert env.hub.hits == []
    assert_nothing_stored(env)


def test_offline_mode_seen_by_huggingface_hub_at_import(env, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1 when it was imported
    with pytest.raises(E.OfflineError) as exc:
        api.pull(f"{MODEL}:q8_0", progress=False)
    assert "slmrun import" in exc.value.hint
    assert env.hub.hits == []


def test_hub_unreachable(env, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()  # nobody listens there now: connection refused
    monkeypatch.setenv("HF_ENDPOINT", dead)
    with pytest.raises(E.OfflineError) as exc:
        api.pull(f"{MODEL}:q8_0", progress=False)
    msg = str(exc.value)
    assert dead in msg and REPO in msg and SMALL in msg
    assert "slmrun import" in exc.value.hint
    assert_nothing_stored(env)


# --- concurrency -----------------------------------------------------------------------

def test_two_processes_pull_the_same_file(env):
    env.hub.delay_per_chunk = 0.06  # 25 chunks: the body takes >= 1.5 s
    code = ("import time, slmrun.api as a; print(time.monotonic()); "
            f"print(a.pull('{MODEL}:f32', progress=False).sha256)")

    def start():
        return subprocess.Popen([sys.executable, "-c", code], env=env.subprocess_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start()
    deadline = time.monotonic() + 30
    while not env.hub.body_gets(BIG) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    second = start()  # the first is downloading now, under the store's lock
    outs = [p.communicate(timeout=60) for p in (first, second)]
    for p, (out, err) in zip((first, second), outs):
        assert p.returncode == 0, err
        assert out.split()[1] == sha(env.files[BIG])
    [get] = env.hub.body_gets(BIG)  # one download: the second waited for the lock, then found the file
    assert float(outs[1][0].split()[0]) < get.t + 1.5  # the second started while the body was flowing
    assert env.stored() == [env.home / "models" / MODEL / BIG]
    assert env.partials() == []


# --- hostile registry entries -----------------------------------------------------------

@pytest.mark.parametrize("repo, filename", [
    (REPO, "../evil.gguf"), (REPO, "/tmp/evil.gguf"), (REPO, "sub/../../evil.gguf"),
    ("../x", "evil.gguf"), ("a/../../b", "evil.gguf"),
])
def test_hostile_registry_entry(env, repo, filename):
    outside = sorted(p for p in env.tmp.rglob("*"))
    evil_existed = Path("/tmp/evil.gguf").exists()
    env.use_registry(model_toml("evil", [dict(quant="Q8_0", repo=repo, filename=filename)]))
    with pytest.raises(E.RegistryError):
        api.pull("evil:q8_0", progress=False)
    assert env.hub.hits == []
    assert [p for p in env.tmp.rglob("*") if p not in outside and not p.name.startswith("registry-")] == []
    assert Path("/tmp/evil.gguf").exists() == evil_existed


@pytest.mark.parametrize("repo, filename", [(REPO, "../evil.gguf"), ("../x", "evil.gguf"), (REPO, "..")])
def test_hub_source_rejects_unsafe_paths_itself(env, repo, filename, tmp_path):
    from slmrun.registry import FileSource
    from slmrun.sources import hub

    staging = tmp_path / "staging" / "inner"
    staging.mkdir(parents=True)
    src = FileSource(quant="Q8_0", filename=filename, size=None, sha256=None, source="hub", repo=repo)
    with pytest.raises(E.RegistryError):
        hub.fetch(src, staging, progress=False)
    assert list((tmp_path / "staging").rglob("*")) == [staging]
    assert env.hub.hits == []


# --- the command line -------------------------------------------------------------------

def slmrun_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("slmrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "slmrun"]


def test_cli_error_is_one_line_and_a_hint(env):
    proc = subprocess.run([*slmrun_cmd(), "pull", f"{MODEL}:q5_0"], env=env.subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 10, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert [ln.split(":")[0] for ln in lines] == ["Error", "Hint"], proc.stderr
    assert "absent.gguf" in lines[0] and "Traceback" not in proc.stderr


def test_cli_pull(env):
    from typer.testing import CliRunner

    import slmrun.cli as cli

    cli._register()
    runner = CliRunner()
    first = runner.invoke(cli.app, ["pull", f"{MODEL}:q8_0", "--quiet"])
    assert first.exit_code == 0, first.output
    assert "pulled fakehub-tiny:q8_0" in first.output
    second = runner.invoke(cli.app, ["pull", f"{MODEL}:q8_0", "--quiet"])
    assert second.exit_code == 0 and "already here" in second.output
