"""The Triton attention kernel under Triton's CPU interpreter, against a float64 per-row reference,
and the engine's triton path against its sdpa path. Skipped when triton is not installed.

Triton reads TRITON_INTERPRET when it is imported (its own library functions are defined then), and a
test session has imported it long before this module (transformers' BertModel does). So in a normal
session one test runs this module again in a fresh interpreter with the flag set, where the others run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from server.engine import NO_TASK, Engine, TokenBatch
from server.engine.attention import resolve_attention
from server.engine.layout import RowIndex
from server.engine.ragged import pick_block_m, query_blocks
from tests.engine.test_parity import _mixed_tasks, _rows

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs in the interpreter subprocess of test_under_the_interpreter")
if INTERPRETED:
    from server.engine.triton_attention import prefix_attention


@pytest.mark.skipif(INTERPRETED, reason="this is the driver")
def test_under_the_interpreter():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).resolve())],
        cwd=root, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" in result.stdout  # the driver itself skips there


# A sample of 1..128 query lengths and 0..64 prefix lengths: edges of the 16-wide blocks on both sides.
LENGTHS = [1, 2, 15, 16, 17, 33, 64, 65, 128, 7, 31, 100]
PREFIX_LENS = [0, 64, 1, 16, 17, 0, 63, 5, 32, 48, 2, 64]


def _case(lengths, prefix_lens, heads, head_dim, dtype, pool_slots=4096, seed=0):
    gen = torch.Generator().manual_seed(seed)
    C = heads * head_dim
    T = sum(lengths)
    qkv = torch.randn(T, 3 * C, generator=gen).to(dtype)  # [T, 3C]
    pool = torch.randn(pool_slots, 2 * C, generator=gen).to(dtype)  # [N, 2C]
    slots = torch.randperm(pool_slots, generator=gen)[: sum(prefix_lens)]  # scattered across the pool
    return qkv, pool, slots


def _index(lengths, prefix_lens, slots, block_m):
    def i32(values):
        return torch.tensor(values, dtype=torch.int32)

    starts = torch.tensor(lengths).cumsum(0) - torch.tensor(lengths)  # [B]
    prefix_starts = torch.tensor(prefix_lens).cumsum(0) - torch.tensor(prefix_lens)  # [B]
    block_row, block_first = query_blocks(lengths, block_m)
    return RowIndex(starts.int(), i32(lengths), prefix_starts.int(), i32(prefix_lens), slots.int(),
                    i32(block_row), i32(block_first), block_m)


def _reference(qkv, pool, slots, lengths, prefix_lens, heads):
    """Per row, in float64: softmax(q [prefix ; tokens]^T / sqrt(D)) [prefix ; tokens]."""
    C = qkv.shape[1] // 3
    D = C // heads
    qkv, pool = qkv.double(), pool.double()
    out, start, p_start = [], 0, 0
    for S, P in zip(lengths, prefix_lens):
        q = qkv[start : start + S, :C].view(S, heads, D).transpose(0, 1)  # [H, S, D]
        kv = torch.cat([pool[slots[p_start : p_start + P]], qkv[start : start + S, C:]])  # [P + S, 2C]
        k, v = kv.view(P + S, 2, heads, D).permute(1, 2, 0, 3)  # each [H, P + S, D]
        weights = torch.softmax(q @ k.transpose(1, 2) / D**0.5, dim=-1)  # [H, S, P + S]
        out.append((weights @ v).transpose(0, 1).reshape(S, C))  # [S, C]
        start, p_start = start + S, p_start + P
    return torch.cat(out)  # [T, C]


@interpreted
@pytest.mark.parametrize("block_m", [16, 32, 64])
def test_kernel_matches_float64_reference(block_m):
    heads, head_dim = 2, 16
    qkv, pool, slots = _case(LENGTHS, PREFIX_LENS, heads, head_dim, torch.float32)
    out = torch.full((qkv.shape[0], heads * head_dim), float("nan"))  # unwritten positions fail
    prefix_attention(qkv, pool, _index(LENGTHS, PREFIX_LENS, slots, block_m), heads, out=out)
    expected = _reference(qkv, pool, slots, LENGTHS, PREFIX_LENS, heads)
    assert not out.isnan().any()
    assert (out.double() - expected).abs().max() <= 1e-5


@interpreted
@pytest.mark.parametrize("head_dim", [8, 24])  # below the 16-wide dot and not a power of two: masked columns
def test_kernel_with_odd_head_sizes_and_no_prefix(head_dim):
    heads, lengths, prefix_lens = 3, [3, 20, 41], [0, 0, 0]
    qkv, _, _ = _case(lengths, prefix_lens, heads, head_dim, torch.float32)
    out = torch.full((qkv.shape[0], heads * head_dim), float("nan"))
    empty = torch.empty(0, dtype=torch.long)
    prefix_attention(qkv, None, _index(lengths, prefix_lens, empty, pick_block_m(lengths)), heads, out=out)
    expected = _reference(qkv, torch.empty(0, 2 * heads * head_dim), empty, lengths, prefix_lens, heads)
    assert (out.double() - expected).abs().max() <= 1e-5


# bfloat16 is left to the CUDA tests: the interpreter hands blocks to numpy, which has no bfloat16
# (its values come back as garbage there, a limitation of the interpreter, not of the kernel).
@interpreted
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3)])
def test_kernel_in_half_precision(dtype, tol):
    heads, head_dim, lengths, prefix_lens = 2, 16, [5, 40, 70], [64, 9, 30]
    qkv, pool, slots = _case(lengths, prefix_lens, heads, head_dim, dtype)
    out = torch.full((qkv.shape[0], heads * head_dim), float("nan"), dtype=dtype)
    prefix_attention(qkv, pool, _index(lengths, prefix_lens, slots, 16), heads, out=out)
    expected = _reference(qkv, pool, slots, lengths, prefix_lens, heads)  # of the same rounded inputs
    assert (out.double() - expected).abs().max() <= tol


@interpreted
def test_kernel_reads_a_strided_qkv():
    """The qkv may be a column slice of a wider buffer: only its row stride is assumed."""
    heads, head_dim, lengths, prefix_lens = 2, 16, [9, 30], [4, 12]
    qkv, pool, slots = _case(lengths, prefix_lens, heads, head_dim, torch.float32)
    wide = torch.full((qkv.shape[0], qkv.shape[1] + 8), float("nan"))
    wide[:, : qkv.shape[1]] = qkv
    out = prefix_attention(wide[:, : qkv.shape[1]], pool, _index(lengths, prefix_lens, slots, 16), heads)
    assert (out.double() - _reference(qkv, pool, slots, lengths, prefix_lens, heads)).abs().max() <= 1e-5


@interpreted
def test_attention_choices():
    cpu = torch.device("cpu")
    assert resolve_attention("auto", cpu) == "sdpa"
    assert resolve_attention("triton", cpu) == "triton"  # allowed here only because of TRITON_INTERPRET
    with pytest.raises(ValueError, match="expected CUDA"):
        resolve_attention("varlen", cpu)
    with pytest.raises(ValueError, match="expected one of"):
        resolve_attention("flash", cpu)


@interpreted
def test_engine_triton_path_matches_sdpa(tiny_engine):
    """The whole ragged path: one index copy, positions, [CLS], the kernel per layer, the head pool."""
    triton_engine = Engine(tiny_engine.files, tiny_engine.encoder, attention="triton")
    assert triton_engine.info()["attention"] == "triton" and tiny_engine.info()["attention"] == "sdpa"
    tasks = _mixed_tasks(tiny_engine)
    rows, _ = _rows(tiny_engine, tasks)
    ragged_rows, _ = _rows(triton_engine, tasks)
    expected = tiny_engine.score_encoded(rows)
    got = triton_engine.score_encoded(ragged_rows)
    for a, b in zip(expected, got):
        assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) <= 1e-5
    bare = [encoded for encoded, _ in ragged_rows[:1]]  # a bare row in a prefixed batch
    pooled = triton_engine.pooled(TokenBatch.of([e for e, _ in ragged_rows] + bare, [h for _, h in ragged_rows] + [NO_TASK]))
    assert np.allclose(pooled[-1], tiny_engine.pooled(TokenBatch.of(bare))[0], atol=1e-5)
    assert np.allclose(pooled[:-1], tiny_engine.pooled(TokenBatch.of([e for e, _ in rows], [h for _, h in rows])), atol=1e-5)


@interpreted
def test_engine_ragged_path_runs_every_task_kind_as_sdpa(tmp_path):
    """The head-pool / ragged path (CUDA's) on mixed batches of sentence, own-pooler and token tasks,
    both families: equal to the sdpa path."""
    from harness.random_backbone import write_random_backbone, write_random_roberta_backbone
    from tests.engine.test_families import TEXTS, _all_kinds

    for writer in (write_random_backbone, write_random_roberta_backbone):
        folder = writer(tmp_path / writer.__name__)
        scores = []
        for engine in (Engine.from_folder(folder), Engine.from_folder(folder, attention="triton")):
            tasks = _all_kinds(engine)
            handles = [engine.load(t) for t in tasks]
            texts = [t if isinstance(t, str) else t[0] for t in TEXTS]
            scores.append(engine.score_encoded([(engine.encode([x], t.prefix_len)[0], h) for x, t, h in zip(texts, tasks, handles)]))
        for sdpa_row, triton_row in zip(*scores):
            got, expected = torch.tensor(triton_row), torch.tensor(sdpa_row)
            assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5, rtol=0)
