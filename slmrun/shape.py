"""The shape of a model: what the memory and speed estimates need.

One definition for the three places that know a model's shape: a registry entry (before
any download), a GGUF file's metadata, and the planner's estimates. Imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# Architectures llama.cpp runs without a KV cache (llama-model.cpp create_memory returns none:
# every token of a sequence is evaluated in one pass).
NO_KV_CACHE_ARCHS = frozenset({"bert", "jina-bert-v2", "jina-bert-v3", "nomic-bert", "nomic-bert-moe", "neo-bert",
                               "eurobert", "modern-bert", "gemma-embedding", "wavtokenizer-dec", "dream", "llada",
                               "llada-moe", "rnd1"})
# Of those, the encoders: models for embeddings (or classification), never for generating text.
ENCODER_ARCHS = frozenset({"bert", "jina-bert-v2", "jina-bert-v3", "nomic-bert", "nomic-bert-moe", "neo-bert",
                           "eurobert", "modern-bert", "gemma-embedding"})


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    architecture: str
    n_params: int
    block_count: int
    embedding_length: int
    feed_forward_length: int
    head_count: int
    head_count_kv: int
    context_length: int
    vocab_size: int
    # Per-head K and V sizes; 0 means embedding_length / head_count (what llama.cpp assumes
    # unless {arch}.attention.key_length says otherwise).
    key_length: int = 0
    value_length: int = 0
    # A model that embeds text and does not generate (BERT family, or a GGUF naming a pooling):
    # no chat, and no generation speed to estimate.
    embedding_model: bool = False

    @property
    def is_embedding_model(self) -> bool:
        return self.embedding_model

    @property
    def has_kv_cache(self) -> bool:
        return self.architecture not in NO_KV_CACHE_ARCHS

    @property
    def encoder(self) -> bool:
        """An encoder-only model (BERT family): embeddings, no generation, no KV cache."""
        return self.architecture in ENCODER_ARCHS

    @property
    def head_dim(self) -> int:
        return self.embedding_length // self.head_count

    @property
    def k_length(self) -> int:
        return self.key_length or self.head_dim

    @property
    def v_length(self) -> int:
        return self.value_length or self.head_dim

    @property
    def n_embd_k_gqa(self) -> int:
        return self.k_length * self.head_count_kv

    @property
    def n_embd_v_gqa(self) -> int:
        return self.v_length * self.head_count_kv


SHAPE_FIELDS = tuple(f.name for f in fields(ModelShape))


def shape_of(obj) -> dict:
    """The ModelShape fields of any ModelShape (entry, GGUF info, spec), as keywords, with
    the per-head sizes made explicit so equal shapes compare equal."""
    out = {name: getattr(obj, name) for name in SHAPE_FIELDS}
    out.update(key_length=obj.k_length, value_length=obj.v_length)
    return out
