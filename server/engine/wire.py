"""What crosses the pipe between the server and its engine process: a JSON header, then an optional
binary payload. Nothing is pickled: batches travel as flat integer arrays, prefixes as the
.safetensors bytes the engine parses with the same validator uploads go through.

A batch of B rows is one payload: `lengths [B] int32 | prefix handles [B] int64 (-1: no prefix) |
score functions [B] int8 | input ids [T] int32 | token types [T] int8`, T = sum(lengths). Scores come
back as two float32 matrices one after the other, each with its shape: `[B, labels_max]` (each row's
score function of its logits, padded past its labels) and `[sum S, labels_max]`, the tokens of the
token-task rows in row order (0 rows when the batch has none); the server knows which rows those are
and how long, so nothing else travels.
"""

from __future__ import annotations

import itertools
import json

import numpy as np

from server.engine.tokenize import EncodedInput

NO_PREFIX = -1


def encode_header(header: dict) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode()


def decode_header(data: bytes) -> dict:
    return json.loads(data)


def encode_batch(rows: list[tuple[EncodedInput, int, int]]) -> bytes:
    """Rows as (encoded input, prefix handle or NO_PREFIX, score function code)."""
    lengths = np.fromiter((len(encoded) for encoded, _, _ in rows), dtype=np.int32, count=len(rows))  # [B]
    handles = np.fromiter((handle for _, handle, _ in rows), dtype=np.int64, count=len(rows))  # [B]
    functions = np.fromiter((function for _, _, function in rows), dtype=np.int8, count=len(rows))  # [B]
    total = int(lengths.sum())
    ids = np.fromiter(itertools.chain.from_iterable(e.input_ids for e, _, _ in rows), dtype=np.int32, count=total)  # [T]
    types = np.fromiter(itertools.chain.from_iterable(e.token_type_ids for e, _, _ in rows), dtype=np.int8, count=total)
    parts = (lengths, handles, functions, ids, types)
    return np.int64(len(rows)).tobytes() + b"".join(part.tobytes() for part in parts)


def decode_batch(data: bytes) -> list[tuple[EncodedInput, int, int]]:
    B = int(np.frombuffer(data, dtype=np.int64, count=1)[0])
    offset = 8
    lengths = np.frombuffer(data, dtype=np.int32, count=B, offset=offset)  # [B]
    offset += 4 * B
    handles = np.frombuffer(data, dtype=np.int64, count=B, offset=offset).tolist()  # [B]
    offset += 8 * B
    functions = np.frombuffer(data, dtype=np.int8, count=B, offset=offset).tolist()  # [B]
    offset += B
    T = int(lengths.sum())
    ids = np.frombuffer(data, dtype=np.int32, count=T, offset=offset).tolist()  # [T]
    types = np.frombuffer(data, dtype=np.int8, count=T, offset=offset + 4 * T).tolist()  # [T]
    rows, start = [], 0
    for length, handle, function in zip(lengths.tolist(), handles, functions):
        rows.append((EncodedInput(ids[start : start + length], types[start : start + length]), handle, function))
        start += length
    return rows


def encode_matrix(values: np.ndarray) -> bytes:
    """A float32 matrix [R, K] with its shape."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    return np.asarray(values.shape, dtype=np.int64).tobytes() + values.tobytes()


def decode_matrix(data: bytes, offset: int = 0) -> np.ndarray:
    rows, cols = np.frombuffer(data, dtype=np.int64, count=2, offset=offset).tolist()
    return np.frombuffer(data, dtype=np.float32, count=rows * cols, offset=offset + 16).reshape(rows, cols)


def encode_matrices(*matrices: np.ndarray) -> bytes:
    return b"".join(encode_matrix(m) for m in matrices)


def decode_matrices(data: bytes, count: int) -> list[np.ndarray]:
    out, offset = [], 0
    for _ in range(count):
        matrix = decode_matrix(data, offset)
        out.append(matrix)
        offset += 16 + matrix.nbytes
    return out
