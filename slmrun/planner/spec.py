"""A model's shape as the planner sees it (``ModelSpec``), from a registry entry or a GGUF."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..shape import ModelShape, shape_of

# Architectures whose FFN is two matrices (up, down) rather than three (gate, up, down):
# fewer weights per block, and one n_ff-wide activation less per batch token.
UNGATED_FFN_ARCHS = frozenset({"phi2", "gpt2", "gptneox", "starcoder", "bloom", "falcon", "mpt", "bert",
                               "stablelm", "starcoder2", "gptj"})


@dataclass(frozen=True, kw_only=True)
class ModelSpec(ModelShape):
    """A model's shape, plus what only the planner asks of it."""

    tied_embeddings: bool | None = None  # None: inferred from the parameter count

    @property
    def embeddings_tied(self) -> bool:
        """Whether the output projection reuses the token-embedding table.

        Unless told, decided by which of the two parameter counts the model's shape
        predicts (attention + FFN per block, one or two vocab x n_embd tables) is closer
        to the real one: SmolLM2-135M's shape predicts 134,514,432 tied and the registry
        says 134,515,008; Phi-2's predicts 2.78e9 untied, as it is.
        """
        if self.tied_embeddings is not None:
            return self.tied_embeddings
        n_embd = self.embedding_length
        attn = n_embd * (self.head_count * self.k_length + self.n_embd_k_gqa + self.n_embd_v_gqa) \
            + self.head_count * self.v_length * n_embd
        mats = 2 if self.architecture in UNGATED_FFN_ARCHS else 3
        blocks = self.block_count * (attn + mats * n_embd * self.feed_forward_length)
        table = self.vocab_size * n_embd
        tied, untied = blocks + table, blocks + 2 * table
        return abs(self.n_params - tied) < abs(self.n_params - untied)

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.embedding_length


def spec_from_entry(entry) -> ModelSpec:
    """The shape of a registry model (``registry.ModelEntry``), before any file is downloaded."""
    return ModelSpec(**shape_of(entry))


def spec_from_gguf(info) -> ModelSpec:
    """The shape of a local file, from its GGUF metadata (``gguf_info.GGUFInfo``)."""
    return ModelSpec(**shape_of(info))


@dataclass(frozen=True)
class LocalModel:
    """A model known only by its local files (imported, or a path): what to plan it from when
    the registry does not list it. ``files``: quant -> file size, the quants on offer."""

    name: str
    spec: ModelSpec
    files: dict[str, int] = field(default_factory=dict)
