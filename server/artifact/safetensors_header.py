"""Parses and checks a safetensors header by hand, before any tensor is built.

Uploads come from users, so nothing here trusts the file: the header length is bounded by the file
size, every tensor's byte range must lie inside the data buffer and match its shape and dtype, and
ranges may not overlap. Only after this does `safetensors` itself read the bytes. Nothing is ever
unpickled and nothing larger than the file is allocated.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from dataclasses import dataclass

# Bytes per element for every dtype the safetensors format defines.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
MAX_HEADER_BYTES = 16 * 1024 * 1024


class ArtifactError(ValueError):
    """An artifact was refused; the message says what was expected and what came."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_offset: int  # where the data buffer starts in the file


def parse_header(data: bytes) -> SafetensorsHeader:
    if len(data) < 8:
        raise ArtifactError(
            f"not a safetensors file: expected an 8-byte header length, got a file of {len(data)} bytes"
        )
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ArtifactError(
            "not a safetensors file: the header claims "
            f"{header_len} bytes but the file holds {len(data) - 8} after the length field "
            "(truncated, or not safetensors: a pickle or zip is refused)"
        )
    if header_len > MAX_HEADER_BYTES:  # its own message: "claims N, holds more" would read as no error
        raise ArtifactError(f"safetensors header: expected at most {MAX_HEADER_BYTES} bytes, got {header_len}")
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # also ints past Python's digit limit, deep nesting
        raise ArtifactError(f"not a safetensors file: the header is not UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"not a safetensors file: expected a JSON object header, got {type(header).__name__}")
    metadata = _parse_metadata(header.pop("__metadata__", None))
    buffer_len = len(data) - 8 - header_len
    tensors = {name: _parse_entry(name, entry, buffer_len) for name, entry in header.items()}
    _check_no_overlap(tensors.values())
    return SafetensorsHeader(tensors=tensors, metadata=metadata, data_offset=8 + header_len)


def _parse_metadata(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise ArtifactError("bad safetensors metadata: expected a JSON object of string to string")
    return dict(raw)


def _parse_entry(name: str, entry: object, buffer_len: int) -> TensorEntry:
    if not isinstance(entry, dict):
        raise ArtifactError(f"tensor {name!r}: expected an object with dtype, shape, data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:  # a list or object is unhashable
        raise ArtifactError(f"tensor {name!r}: unknown safetensors dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise ArtifactError(f"tensor {name!r}: expected a shape of non-negative integers, got {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= buffer_len
    ):
        raise ArtifactError(
            f"tensor {name!r}: data_offsets {offsets!r} do not lie inside the {buffer_len}-byte data buffer"
        )
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise ArtifactError(
            f"tensor {name!r}: shape {shape} in {dtype} needs {expected} bytes, "
            f"the offsets span {offsets[1] - offsets[0]}"
        )
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a dimension


def _check_no_overlap(entries) -> None:
    ordered = sorted(entries, key=lambda e: (e.start, e.end))
    for before, after in itertools.pairwise(ordered):
        if after.start < before.end:
            raise ArtifactError(f"tensors {before.name!r} and {after.name!r} overlap in the data buffer")
