"""The packed layout and the sdpa path's chunks: chunks cover every row once, in order; every real query and key has its own
slot and every padded slot is masked; merging rows of different lengths into one attention call
changes no result."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from server.engine import Engine
from server.engine.attention import pack
from server.engine.chunked import plan_chunks
from tests.helpers import make_artifact


def _pack(lengths, prefix_lens, merge_pairs, storage_slots=200):
    T = sum(lengths)
    storage = torch.randn(2, storage_slots, 8)  # [L, N, 2C]
    slots, start = [], 0
    for p in prefix_lens:
        slots.append(np.arange(start, start + p) % storage_slots if p else None)
        start += p
    return pack(
        np.array(lengths), np.array(prefix_lens), np.zeros(T, np.int32), np.zeros(T, np.int8), slots, storage, "sdpa",
        merge_pairs, max_positions=512, device=torch.device("cpu"),
    )


def test_equal_rows_make_one_unmasked_chunk():
    chunks = plan_chunks([7, 7, 7], [4, 4, 4], merge_pairs=0)
    assert len(chunks) == 1
    chunk = chunks[0]
    assert (chunk.rows, chunk.query_len, chunk.key_len, chunk.masked) == (3, 7, 11, False)


def test_without_merging_budget_rows_split_where_padding_would_grow():
    chunks = plan_chunks([3, 3, 20, 20], [4, 4, 4, 4], merge_pairs=0, merge_fraction=0.0)
    assert [(c.rows, c.query_len) for c in chunks] == [(2, 3), (2, 20)]


def test_a_large_budget_merges_everything_and_masks_it():
    chunks = plan_chunks([3, 5, 20], [10, 2, 4], merge_pairs=1 << 20)
    assert len(chunks) == 1
    assert (chunks[0].query_len, chunks[0].key_len, chunks[0].masked) == (20, 24, True)


@pytest.mark.parametrize("merge_pairs", [0, 64, 1 << 20])
def test_every_real_slot_is_distinct_valid_and_each_padding_slot_is_masked(merge_pairs):
    rng = random.Random(merge_pairs)
    lengths = sorted(rng.randint(1, 30) for _ in range(40))
    prefix_lens = [rng.choice([0, 1, 4, 16, 64]) for _ in lengths]
    packed = _pack(lengths, prefix_lens, merge_pairs)
    batch = packed.attention  # the sdpa path's chunks and key layout
    assert sum(c.rows for c in batch.chunks) == len(lengths)
    token_keys, prefix_keys = batch.token_key_dest, batch.prefix_dest
    every_key = torch.cat([token_keys, prefix_keys])
    assert every_key.unique().numel() == every_key.numel() == sum(lengths) + sum(prefix_lens)
    assert int(batch.key_valid.sum()) == every_key.numel() and bool(batch.key_valid[every_key].all())
    assert batch.key_slots >= every_key.numel() and int(every_key.max()) < batch.key_slots
    if batch.query_dest is not None:
        assert batch.query_dest.unique().numel() == sum(lengths) and int(batch.query_dest.max()) < batch.query_slots
    for chunk in batch.chunks:  # an unmasked chunk has no padding slot
        valid = batch.key_valid[chunk.key_start : chunk.key_end]
        assert chunk.masked or bool(valid.all())
    packed_rows = [(lengths[i], prefix_lens[i]) for i in packed.order]
    assert packed_rows == sorted(packed_rows)  # by length, then prefix length
    assert packed.positions.tolist() == [p + i for length, p in packed_rows for i in range(length)]


@pytest.mark.parametrize("merge_pairs", [0, 256, 1 << 20])
def test_merging_attention_calls_changes_no_result(tiny_engine, merge_pairs):
    texts = ["good", "a gorgeous, witty, seductive movie.", ("a pair", "of texts here"), "ok", "the film is routine"]
    reference_engine = Engine(tiny_engine.files, tiny_engine.encoder, merge_pairs=0)
    engine = Engine(tiny_engine.files, tiny_engine.encoder, merge_pairs=merge_pairs)
    results = []
    for e in (reference_engine, engine):
        tasks = [make_artifact(e.shape, p, 3, seed=p) for p in (1, 9, 30)]
        handles = [e.load(t) for t in tasks]
        rows = [(e.encode([text], tasks[i % 3].prefix_len)[0], handles[i % 3]) for i, text in enumerate(texts * 3)]
        results.append(e.score_encoded(rows))
    for a, b in zip(*results):
        assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5
