"""What crosses the pipe between the server and its engine process: a JSON header, then an optional
binary payload. Nothing is pickled: batches travel as the flat arrays of a TokenBatch (batch.py),
prefixes as the .safetensors bytes the engine parses with the same validator uploads go through.

A batch of B rows is one payload, widest arrays first so each lies aligned: `B int64 | tasks [B] int64 |
lengths [B] int32 | ids [T] int32 | heads [B] int8 | functions [B] int8 | types [T] int8`,
T = sum(lengths); the engine reads them as views of the payload. Scores come back as two float32
matrices one after the other, each with its shape: `[B, labels_max]` and `[sum S, labels_max]`, the
tokens of the token rows (BatchScores).
"""

from __future__ import annotations

import json

import numpy as np

from server.engine.batch import BatchScores, TokenBatch


def encode_header(header: dict) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode()


def decode_header(data: bytes) -> dict:
    return json.loads(data)


_BATCH_LAYOUT = (("tasks", np.int64), ("lengths", np.int32), ("ids", np.int32), ("heads", np.int8),
                 ("functions", np.int8), ("types", np.int8))


def encode_batch(batch: TokenBatch) -> bytes:
    parts = (np.ascontiguousarray(getattr(batch, name), dtype=dtype).tobytes() for name, dtype in _BATCH_LAYOUT)
    return np.int64(batch.rows).tobytes() + b"".join(parts)


def decode_batch(data: bytes) -> TokenBatch:
    """Views of `data`, no copy."""
    B = int(np.frombuffer(data, dtype=np.int64, count=1)[0])
    tasks = np.frombuffer(data, dtype=np.int64, count=B, offset=8)  # [B]
    offset = 8 + 8 * B
    lengths = np.frombuffer(data, dtype=np.int32, count=B, offset=offset)  # [B]
    offset += 4 * B
    T = int(lengths.sum())
    ids = np.frombuffer(data, dtype=np.int32, count=T, offset=offset)  # [T]
    offset += 4 * T
    heads = np.frombuffer(data, dtype=np.int8, count=B, offset=offset)  # [B]
    functions = np.frombuffer(data, dtype=np.int8, count=B, offset=offset + B)  # [B]
    types = np.frombuffer(data, dtype=np.int8, count=T, offset=offset + 2 * B)  # [T]
    return TokenBatch(lengths, ids, types, tasks, heads, functions)


def encode_scores(scores: BatchScores) -> bytes:
    return encode_matrix(scores.rows) + encode_matrix(scores.tokens)


def decode_scores(data: bytes) -> BatchScores:
    rows = decode_matrix(data)
    return BatchScores(rows, decode_matrix(data, 16 + rows.nbytes))


def encode_matrix(values: np.ndarray) -> bytes:
    """A float32 matrix [R, K] with its shape."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    return np.asarray(values.shape, dtype=np.int64).tobytes() + values.tobytes()


def decode_matrix(data: bytes, offset: int = 0) -> np.ndarray:
    rows, cols = np.frombuffer(data, dtype=np.int64, count=2, offset=offset).tolist()
    return np.frombuffer(data, dtype=np.float32, count=rows * cols, offset=offset + 16).reshape(rows, cols)
