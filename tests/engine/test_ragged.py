"""The ragged layout of the GPU paths, on the CPU: varlen's [prefix ; tokens] key layout (with a
reference standing in for torch's CUDA-only varlen_attn), the one-copy index, and the head pool."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.attention.varlen as varlen_module

from server.engine.attention import pack
from server.engine.heads import HeadPool, apply_heads, head_index
from server.engine.layout import HostIndex


def _reference_varlen(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k):
    """What varlen_attn computes: per sequence i, softmax(q_i k_i^T / sqrt(D)) v_i; q, k, v [tokens, H, D]."""
    out = torch.empty_like(q)
    for i in range(cu_seq_q.shape[0] - 1):
        qs, qe, ks, ke = int(cu_seq_q[i]), int(cu_seq_q[i + 1]), int(cu_seq_k[i]), int(cu_seq_k[i + 1])
        assert qe - qs <= max_q and ke - ks <= max_k
        weights = torch.softmax(torch.einsum("shd,khd->hsk", q[qs:qe], k[ks:ke]) / q.shape[-1] ** 0.5, dim=-1)
        out[qs:qe] = torch.einsum("hsk,khd->shd", weights, v[ks:ke])
    return out


def test_varlen_layout_puts_each_rows_prefix_before_its_tokens(monkeypatch):
    monkeypatch.setattr(varlen_module, "varlen_attn", _reference_varlen)
    gen = torch.Generator().manual_seed(0)
    H, D, L = 2, 4, 3
    C = H * D
    lengths, prefix_lens = [2, 5, 9], [3, 0, 7]
    storage = torch.randn(L, 50, 2 * C, generator=gen)  # [L, N, 2C]
    slots = torch.randperm(50, generator=gen)[: sum(prefix_lens)].numpy()
    row_slots = [slots[0:3], None, slots[3:10]]
    T = sum(lengths)
    batch = pack(np.array(lengths), np.array(prefix_lens), np.arange(T), np.zeros(T), row_slots, storage, "varlen", 0, 512,
                 torch.device("cpu"))
    assert batch.order.tolist() == [0, 1, 2]  # already in packed order: by length
    assert batch.positions.tolist() == [3, 4, 0, 1, 2, 3, 4] + list(range(7, 16))
    qkv = torch.randn(T, 3 * C, generator=gen)  # [T, 3C]
    got = batch.attention.attend(1, qkv, H)  # [T, C]
    start, p_start = 0, 0
    for S, P in zip(lengths, prefix_lens):
        q = qkv[start : start + S, :C].view(S, H, D)  # [S, H, D]
        kv = torch.cat([storage[1, slots[p_start : p_start + P]], qkv[start : start + S, C:]])  # [P + S, 2C]
        k, v = kv.view(P + S, 2, H, D).unbind(1)  # each [P + S, H, D]
        expected = _reference_varlen(q, k, v, torch.tensor([0, S]), torch.tensor([0, P + S]), S, P + S)
        assert torch.allclose(got[start : start + S], expected.reshape(S, C), atol=1e-6)  # [S, C]
        start, p_start = start + S, p_start + P


def test_host_index_is_one_buffer_of_views():
    index = HostIndex()
    index.add("a", [1, 2, 3])
    index.add("b", torch.tensor([7]))
    index.add("empty", [])
    views = index.to(torch.device("cpu"))
    assert views["a"].tolist() == [1, 2, 3] and views["b"].tolist() == [7] and views["empty"].numel() == 0
    assert views["a"].dtype == torch.int32 and views["a"].untyped_storage().data_ptr() == views["b"].untyped_storage().data_ptr()
    assert all(v.data_ptr() % 16 == 0 for v in views.values())  # Triton compiles once, not per alignment


def test_head_pool_applies_each_rows_own_head_and_frees_its_slots():
    pool = HeadPool(hidden_size=4, device="cpu", initial_slots=3)
    weights = [torch.randn(n, 4) for n in (1, 3, 2)]
    biases = [torch.randn(n) for n in (1, 3, 2)]
    heads = [pool.add(w, b) for w, b in zip(weights, biases)]  # 6 labels: the pool grows
    pooled = torch.randn(3, 4)
    flat, labels_max = head_index(heads)
    logits = apply_heads(pool.storage, pooled, torch.tensor(flat, dtype=torch.int32), labels_max)  # [3, 3]
    for row, (w, b) in enumerate(zip(weights, biases)):
        assert torch.allclose(logits[row, : w.shape[0]], w @ pooled[row] + b, atol=1e-6)
    free_before = len(pool._free)
    del heads, flat
    assert len(pool._free) == free_before + 6
