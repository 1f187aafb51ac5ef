"""What an artifact must fit: the backbone's geometry (SPEC 1, 1b), one home for its arithmetic."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneShape:
    """What an artifact must fit: the backbone's geometry, family and the fingerprint of its weights.

    `position_offset` is where the first position id after the prefix starts before adding P: 0 for
    BERT, `padding_idx + 1` for RoBERTa (SPEC 1b).
    """

    num_layers: int
    num_heads: int
    head_dim: int
    max_position_embeddings: int
    fingerprint: str
    family: str = "bert"
    position_offset: int = 0
    pooler: bool = True  # False: a RoBERTa backbone without one; sequence tasks must bring their own
    intermediate_size: int | None = None  # the feed-forward width (LoRA on its modules is checked against it)

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_dim

    def max_tokens(self, prefix_len: int) -> int:
        """How many tokens a row with this prefix length may hold, special tokens included (SPEC 1, 1b)."""
        return self.max_position_embeddings - self.position_offset - prefix_len

    @property
    def max_prefix_len(self) -> int:
        # Room for the first and last special tokens ([CLS]/[SEP] or <s>/</s>).
        return self.max_position_embeddings - self.position_offset - 2
