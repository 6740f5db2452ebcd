"""A corpus of malformed GGUF files: each gives a clean error before llama.cpp sees it."""

from __future__ import annotations

import struct
import subprocess

import pytest

import slmrun
from slmrun.errors import InvalidModelFileError, ModelFileNotFoundError
from slmrun.gguf_info import read_info

from conftest import slmrun_cmd


def _header_len(data: bytes) -> int:
    """Offset of the first tensor info: header + all metadata (parsed independently)."""
    # Walked by hand: the reader under test does not build its own corpus.
    pos = 24
    n_kv = struct.unpack_from("<Q", data, 16)[0]
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    for _ in range(n_kv):
        klen = struct.unpack_from("<Q", data, pos)[0]
        pos += 8 + klen
        vtype = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if vtype == 8:
            pos += 8 + struct.unpack_from("<Q", data, pos)[0]
        elif vtype == 9:
            etype, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if etype == 8:
                for _ in range(count):
                    pos += 8 + struct.unpack_from("<Q", data, pos)[0]
            else:
                pos += sizes[etype] * count
        else:
            pos += sizes[vtype]
    return pos


@pytest.fixture(scope="module")
def good(tiny_llama) -> bytes:
    return tiny_llama.read_bytes()


def _corpus(good: bytes) -> dict[str, tuple[bytes, str]]:
    meta_end = _header_len(good)
    return {
        "empty": (b"", "too small"),
        "wrong-magic": (b"GGML" + good[4:], "wrong magic"),
        "safetensors-like": (b'{"__metadata__": {}}' + b"\0" * 64, "not a GGUF file"),
        "version-1": (good[:4] + struct.pack("<I", 1) + good[8:], "version 1 is not supported"),
        "version-99": (good[:4] + struct.pack("<I", 99) + good[8:], "version 99"),
        "absurd-tensor-count": (good[:8] + struct.pack("<Q", 2**40) + good[16:], "absurd tensor count"),
        "absurd-kv-count": (good[:16] + struct.pack("<Q", 2**33) + good[24:], "absurd metadata count"),
        "truncated-in-header": (good[:20], "too small"),
        "truncated-in-metadata": (good[:meta_end // 2], "truncated"),
        "truncated-in-tensor-table": (good[:meta_end + 40], "truncated"),
        "truncated-in-tensor-data": (good[:len(good) - 1000], "truncated or corrupt: tensor"),
        "truncated-by-one-byte": (good[:-1], "past the end"),
        "absurd-string-length": (good[:24] + struct.pack("<Q", 2**62) + good[32:], "truncated"),
    }


CASES = ["empty", "wrong-magic", "safetensors-like", "version-1", "version-99", "absurd-tensor-count",
         "absurd-kv-count", "truncated-in-header", "truncated-in-metadata", "truncated-in-tensor-table",
         "truncated-in-tensor-data", "truncated-by-one-byte", "absurd-string-length"]


@pytest.mark.parametrize("case", CASES)
def test_malformed_file_gives_a_clean_error(case, good, tmp_path):
    data, match = _corpus(good)[case]
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(data)
    with pytest.raises(InvalidModelFileError, match=match) as exc:
        read_info(path)
    assert exc.value.hint
    with pytest.raises(InvalidModelFileError):  # and load() refuses it before llama.cpp runs
        slmrun.load(path)


def test_good_file_reads_like_gguf_reader(tiny_llama):
    import gguf
    info = read_info(tiny_llama)
    ref = gguf.GGUFReader(str(tiny_llama))
    assert info.tensor_count == len(ref.tensors)
    assert info.n_params == sum(int(t.n_elements) for t in ref.tensors)
    assert info.architecture == "llama" and info.block_count == 2 and info.head_count_kv == 2
    assert info.chat_template and "im_start" in info.chat_template


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelFileNotFoundError):
        slmrun.load(tmp_path / "nope.gguf")
    with pytest.raises(InvalidModelFileError, match="directory"):
        read_info(tmp_path)


@pytest.mark.parametrize("case", ["wrong-magic", "truncated-in-tensor-data", "version-99"])
def test_cli_reports_one_line_and_exits_nonzero(case, good, tmp_path):
    data, match = _corpus(good)[case]
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(data)
    p = subprocess.run([*slmrun_cmd(), "run", "-m", str(path), "hi"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 5
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith("Error: ") and match.split()[0] in lines[0]
    assert lines[1].startswith("Hint: ")
    assert "Traceback" not in p.stderr and p.stdout == ""


# --- the run cache: a file that passed is not walked again until it changes ---------------------

def test_a_validated_header_is_cached_and_answers_the_next_read(tiny_llama, tmp_path, monkeypatch):
    from slmrun import gguf_info, runcache

    path = tmp_path / "m.gguf"
    path.write_bytes(tiny_llama.read_bytes())
    first = read_info(path)
    assert list((runcache.cache_dir() / "gguf").glob("*.json"))
    walked = []
    monkeypatch.setattr(gguf_info, "_read_info", lambda p: walked.append(p) or first)
    again = read_info(path)
    assert walked == [] and again == first and again.metadata == first.metadata
    assert again.metadata["tokenizer.ggml.tokens"].offset == first.metadata["tokenizer.ggml.tokens"].offset
    read_info(path, cache=False)
    assert walked == [path]


def test_a_file_changed_in_place_is_validated_again(tiny_llama, tmp_path):
    import os

    path = tmp_path / "m.gguf"
    good = tiny_llama.read_bytes()
    path.write_bytes(good)
    read_info(path)
    st = os.stat(path)
    # The same size, and the modification time put back: the change time still moves.
    path.write_bytes(b"GGML" + good[4:])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(InvalidModelFileError, match="wrong magic"):
        read_info(path)


def test_a_replaced_file_a_new_reader_or_a_broken_record_is_read_again(tiny_llama, tmp_path, monkeypatch):
    from slmrun import gguf_info, runcache

    path = tmp_path / "m.gguf"
    path.write_bytes(tiny_llama.read_bytes())
    read_info(path)
    walked = []
    real = gguf_info._read_info
    monkeypatch.setattr(gguf_info, "_read_info", lambda p: walked.append(p) or real(p))
    other = tmp_path / "other.gguf"  # the same bytes renamed over it: another inode
    other.write_bytes(tiny_llama.read_bytes())
    other.replace(path)
    read_info(path)
    assert len(walked) == 1
    monkeypatch.setattr(gguf_info, "READER_VERSION", gguf_info.READER_VERSION + 1)
    read_info(path)
    assert len(walked) == 2
    for record in (runcache.cache_dir() / "gguf").glob("*.json"):
        record.write_text("{not json")
    assert read_info(path).architecture == "llama"
    assert len(walked) == 3
    read_info(path)
    assert len(walked) == 3  # rewritten by the last read
