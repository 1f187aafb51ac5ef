"""Attention that reads every row's prefix where it lies: one Triton kernel for inference on CUDA.

Owns the kernel and its launcher. One program takes a block of one row's queries for one head and
walks first the row's prefix slots straight in the prefix pool (`[slots, 2C]` of one layer: head h's
key at `h*D`, its value at `C + h*D`, prefix_pool.py), then the row's own keys and values straight in
the fused qkv output (`[T, 3C]`: queries, keys, values, head h at `h*D` in each, model.py), with an
online softmax in float32. Nothing is padded or copied: the only extra reads are the slot indices.
With no prefix (P = 0 for every row) the same kernel is the no-prefix limit the GPU path is held to.

Triton is optional: without it this module still imports (`AVAILABLE` is False, `UNAVAILABLE_REASON`
says why) and the engine falls back (attention.py, which imports this module only on CUDA or when
asked for triton, so a CPU server never loads triton). `TRITON_INTERPRET=1`, set before this module
is first imported (Triton reads it when the kernel is defined), runs the kernel on CPU tensors
through Triton's interpreter (the tests do).
"""

from __future__ import annotations

import math

import torch

from server.engine.layout import RowIndex

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # CPU wheels of torch ship without triton
    triton = tl = None
    UNAVAILABLE_REASON = f"triton is not installed ({exc})"
else:
    UNAVAILABLE_REASON = ""
AVAILABLE = triton is not None
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # float32: the interpreter tests, parity


def prefix_attention(
    qkv: torch.Tensor,  # [T, 3C] one layer's fused projection, row stride may exceed 3C
    pool_layer: torch.Tensor | None,  # [N, 2C] the layer's prefix pool, None when no row has a prefix
    index: RowIndex,
    num_heads: int,
    out: torch.Tensor | None = None,  # [T, C]; every position is written
) -> torch.Tensor:
    """Softmax(q [prefix ; tokens]^T / sqrt(D)) [prefix ; tokens] per row and head, packed as [T, C]."""
    if not AVAILABLE:
        raise RuntimeError(f"the triton attention path needs triton: {UNAVAILABLE_REASON}")
    T, three_c = qkv.shape
    C = three_c // 3
    if three_c != 3 * C or C % num_heads:
        raise ValueError(f"expected qkv [T, 3C] with C divisible by {num_heads} heads, got {list(qkv.shape)}")
    if qkv.dtype not in KERNEL_DTYPES or qkv.stride(1) != 1:
        raise ValueError(f"expected a row-major qkv in one of {KERNEL_DTYPES}, got {qkv.dtype}, strides {qkv.stride()}")
    pool = pool_layer if pool_layer is not None else qkv  # never read when every P is 0
    if pool_layer is not None and (pool.shape[1] != 2 * C or pool.stride(1) != 1 or pool.dtype != qkv.dtype):
        raise ValueError(f"expected a prefix pool layer [N, {2 * C}] in {qkv.dtype}, got {list(pool.shape)} {pool.dtype}")
    if out is None:
        out = qkv.new_empty(T, C)  # [T, C]
    D = C // num_heads
    grid = (index.block_row.shape[0], num_heads)
    if grid[0] == 0:
        return out
    _attention_kernel[grid](
        qkv, qkv.stride(0), pool, pool.stride(0), out, out.stride(0),
        index.block_row, index.block_first, index.row_start, index.row_len, index.prefix_start, index.prefix_len,
        index.slots, C, D, math.log2(math.e) / math.sqrt(D),
        BLOCK_M=index.block_m, BLOCK_N=64 if qkv.is_cuda else 16, BLOCK_D=max(16, triton.next_power_of_2(D)),
        DOT_PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32",  # float32 parity needs no TF32
    )
    return out


if AVAILABLE:

    @triton.jit
    def _online_softmax_step(q, k, v, key_valid, m_i, l_i, acc, qk_scale, DOT_PRECISION: tl.constexpr):
        # Scores in base 2 (qk_scale holds log2(e) / sqrt(D)): exp2 is the cheap exponential.
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [M, N] float32
        s = tl.where(key_valid[None, :], s, float("-inf"))
        # Every block the caller walks holds at least one real key, so m_new is finite.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        return m_new, l_i, acc

    @triton.jit
    def _attention_kernel(
        qkv, qkv_stride, pool, pool_stride, out, out_stride,
        block_row, block_first, row_start, row_len, prefix_start, prefix_len, slots,
        hidden, head_dim, qk_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        block = tl.program_id(0)
        head = tl.program_id(1)
        row = tl.load(block_row + block)
        first = tl.load(block_first + block)
        start = tl.load(row_start + row)
        length = tl.load(row_len + row)
        p_start = tl.load(prefix_start + row)
        p_len = tl.load(prefix_len + row)

        d = tl.arange(0, BLOCK_D)
        column = head * head_dim + d  # [BLOCK_D] this head's columns in queries, keys and values
        d_valid = d < head_dim
        queries = first + tl.arange(0, BLOCK_M)  # [BLOCK_M] within the row
        q_valid = queries < length
        q_rows = (start + queries).to(tl.int64)
        q = tl.load(qkv + q_rows[:, None] * qkv_stride + column[None, :],
                    mask=q_valid[:, None] & d_valid[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        n = tl.arange(0, BLOCK_N)
        for k0 in range(0, p_len, BLOCK_N):  # the prefix, slot by slot in the pool
            key_valid = k0 + n < p_len
            slot = tl.load(slots + p_start + k0 + n, mask=key_valid, other=0).to(tl.int64)
            base = slot[:, None] * pool_stride + column[None, :]  # [BLOCK_N, BLOCK_D]
            kv_mask = key_valid[:, None] & d_valid[None, :]
            k = tl.load(pool + base, mask=kv_mask, other=0.0)
            v = tl.load(pool + base + hidden, mask=kv_mask, other=0.0)
            m_i, l_i, acc = _online_softmax_step(q, k, v, key_valid, m_i, l_i, acc, qk_scale, DOT_PRECISION)
        for k0 in range(0, length, BLOCK_N):  # then the row's own tokens, in the qkv output
            key_valid = k0 + n < length
            token = (start + k0 + n).to(tl.int64)
            base = token[:, None] * qkv_stride + column[None, :]  # [BLOCK_N, BLOCK_D]
            kv_mask = key_valid[:, None] & d_valid[None, :]
            k = tl.load(qkv + base + hidden, mask=kv_mask, other=0.0)
            v = tl.load(qkv + base + 2 * hidden, mask=kv_mask, other=0.0)
            m_i, l_i, acc = _online_softmax_step(q, k, v, key_valid, m_i, l_i, acc, qk_scale, DOT_PRECISION)

        acc = acc / l_i[:, None]
        tl.store(out + q_rows[:, None] * out_stride + column[None, :], acc.to(out.dtype.element_ty),
                 mask=q_valid[:, None] & d_valid[None, :])
