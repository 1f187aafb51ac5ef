"""Builders for artifact tests: a fixed backbone geometry, valid artifacts, and hand-crafted files.

Bad files are built two ways: `save_file` (real safetensors with the wrong content: shapes, dtypes,
metadata) and `craft` (the raw `<u64 length><JSON header><buffer>` layout, for headers that the
safetensors library itself would never write).
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import save as save_safetensors_bytes

from server.artifact import BackboneShape

FINGERPRINT = "sha256:" + "ab" * 32
# Small on purpose: every test runs in milliseconds. hidden_size = 4 * 8 = 32.
SHAPE = BackboneShape(num_layers=2, num_heads=4, head_dim=8, max_position_embeddings=128, fingerprint=FINGERPRINT)
LABELS = ["negative", "positive"]


def good_metadata(**overrides: str | None) -> dict[str, str]:
    """The required metadata of a valid artifact; an override of None drops that key."""
    metadata = {
        "format": "ptv2-prefix",
        "format_version": "1",
        "problem_type": "single_label_classification",
        "labels": json.dumps(LABELS),
    }
    metadata.update(overrides)
    return {k: v for k, v in metadata.items() if v is not None}


def good_tensors(prefix_len: int = 4, num_labels: int = len(LABELS), dtype=torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "prefix.key_values": torch.randn(
            SHAPE.num_layers, 2, SHAPE.num_heads, prefix_len, SHAPE.head_dim, generator=gen
        ).to(dtype),
        "classifier.weight": torch.randn(num_labels, SHAPE.hidden_size, generator=gen).to(dtype),
        "classifier.bias": torch.randn(num_labels, generator=gen).to(dtype),
    }


def save_file(tensors: dict[str, torch.Tensor] | None = None, metadata: dict[str, str] | None = None) -> bytes:
    """A well-formed safetensors file; defaults to a valid artifact."""
    tensors = good_tensors() if tensors is None else tensors
    metadata = good_metadata() if metadata is None else metadata
    return save_safetensors_bytes(tensors, metadata=metadata)


def craft(header: object, buffer: bytes = b"", header_bytes: bytes | None = None) -> bytes:
    """Raw safetensors layout with any header at all (a JSON value, or exact bytes)."""
    raw = header_bytes if header_bytes is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + buffer


def entry(dtype: str, shape: list[int], start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}
