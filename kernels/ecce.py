"""K1: ECCE's banded average-pooling bias fused into attention, in Triton (DESIGN §2).

    ecce_prefix(z, w, lengths)                        -> (zp, P)  Zp = Z @ W and P[t] = sum_{k<t} Zp[k]
    ecce_bias(zp, lengths, dist)                      -> E (B, H, L, L)   (materialised, for heatmaps)
    ecce_attention(q, k, v, zp, lengths, dist, scale) -> out (B, H, L, Dh) (E never materialised)

The bias of a pair (i, j) inside the band ``|i - j| < dist`` is the band mean
``(P[max(i,j)+1] - P[min(i,j)]) / (|i-j| + 1)``: for ``i >= j`` that is ``P[i+1] - P[j]``, for
``i < j`` it is ``P[j+1] - P[i]``, so a tile needs four vectors of P (two per row, two per
column) and no gather. Outside the band the bias is 0 (not -inf), so attention still visits
every valid key block; only the tiles that touch the band compute the bias.

Backward of the bias, without atomics (as flash-linear-attention's forgetting attention
does for its ``g_cumsum``): with ``G = dS / (|i-j|+1)`` on the band,
``dP[i+1] += G`` and ``dP[j] -= G`` for ``i >= j``, ``dP[j+1] += G`` and ``dP[i] -= G`` for ``i < j``.
The dQ kernel owns a block of rows and sums G along them, the dK/dV kernel owns a block of
columns and sums G down them; each writes its own ``plus`` (goes to ``dP[t+1]``) and ``minus``
(goes to ``-dP[t]``) buffer, with no two programs touching the same element. Then
``dP = shift(plus) - minus`` and ``dzp[k] = sum_{t>k} dP[t]`` by one reverse scan. Atomics
would save the two small (B, H, L) buffers but make the result order-dependent
(non-deterministic), and bfloat16 atomics do not run in the Triton interpreter.

All ops are ``torch.library.triton_op``s in the namespace ``iteach_fast`` (names prefixed
``ecce_``), with autograd registered, so they trace under torch.compile without a graph break
and Inductor sees the kernels. Under the Triton interpreter (``TRITON_INTERPRET=1``, read once
at import, as ``triton.jit`` does) a kernel is a plain Python function that ``wrap_triton``
cannot trace, so there each op is an opaque ``torch.library.custom_op`` instead, whose fake
(meta) implementation is the same function with the launches skipped on fake tensors: the
schema, fake-tensor and torch.compile paths still run, on the CPU.
Inputs are assumed validated (``iteach_fast.ops`` does that); ``lengths`` is int64 ``(B,)``.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton

__all__ = ["ecce_prefix", "ecce_bias", "ecce_attention"]

LOG2E = tl.constexpr(1.4426950408889634)  # the softmax runs in base 2 (exp2 is the cheap instruction)
MAX_HEAD_DIM = 256  # one (BLOCK, Dh) tile of q/k/v must fit in registers


# ----------------------------------------------------------------------------- jit helpers

@triton.jit
def _band_weights(offs_i, offs_j, n, dist):
    """``1/(|i-j|+1)`` on the band among valid pairs, else 0; and which pairs have ``i >= j``."""
    diff = offs_i[:, None] - offs_j[None, :]
    width = tl.abs(diff)
    keep = (width < dist) & (offs_i[:, None] < n) & (offs_j[None, :] < n)
    inv_w = tl.where(keep, 1.0 / (width + 1).to(tl.float32), 0.0)
    return inv_w, diff >= 0


@triton.jit
def _band_bias(P_bh, stride_pt, offs_i, offs_j, n, dist):
    """The bias tile E[offs_i, offs_j] from the prefix sums ``P_bh`` of one (batch, head)."""
    vi = offs_i < n
    vj = offs_j < n
    p_i1 = tl.load(P_bh + (offs_i + 1) * stride_pt, mask=vi, other=0.0)
    p_i = tl.load(P_bh + offs_i * stride_pt, mask=vi, other=0.0)
    p_j1 = tl.load(P_bh + (offs_j + 1) * stride_pt, mask=vj, other=0.0)
    p_j = tl.load(P_bh + offs_j * stride_pt, mask=vj, other=0.0)
    inv_w, lower = _band_weights(offs_i, offs_j, n, dist)
    total = tl.where(lower, p_i1[:, None] - p_j[None, :], p_j1[None, :] - p_i[:, None])
    return total * inv_w, inv_w, lower


@triton.jit
def _touches_band(m0, n0, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, dist):
    """Whether tile rows [m0, m0+BLOCK_M) x cols [n0, n0+BLOCK_N) holds a pair with |i-j| < dist."""
    gap = tl.maximum(n0 - (m0 + BLOCK_M - 1), m0 - (n0 + BLOCK_N - 1))
    return gap < dist


@triton.jit
def _kahan_add(total, comp, x):
    """Compensated ``total += x``: ``comp`` keeps what float32 rounding dropped."""
    y = x - comp
    t = total + y
    return t, (t - total) - y


# ----------------------------------------------------------------------------- prefix / suffix scans

@triton.jit
def _prefix_kernel(X, W, ZP, P, LENGTHS, L, D, H,
                   stride_xb, stride_xt, stride_pb, stride_pt,
                   HAS_W: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One program per conversation. ``zp = X @ W`` (X (B,L,D), W (D,H)) if HAS_W, else
    ``zp = X`` (B,L,H); invalid positions give 0. Writes ``P[t] = sum_{k<t} zp[k]``
    (B, L+1, H) in float32, scanning blocks of BLOCK_L positions: a tree cumsum inside a
    block and a Kahan-compensated carry across blocks, so the error of P stays at a few ulps
    of |P| however long L is (a plain running float32 sum drifts like L * eps)."""
    b = tl.program_id(0)
    n = tl.load(LENGTHS + b).to(tl.int32)
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    x_b = X + b.to(tl.int64) * stride_xb
    p_b = P + b.to(tl.int64) * stride_pb
    tl.store(p_b + offs_h, tl.zeros([BLOCK_H], tl.float32), mask=mask_h)  # P[0] = 0
    carry = tl.zeros([BLOCK_H], tl.float32)
    comp = tl.zeros([BLOCK_H], tl.float32)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        valid = offs_l < n
        if HAS_W:
            zp = tl.zeros([BLOCK_L, BLOCK_H], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                x = tl.load(x_b + offs_l[:, None] * stride_xt + offs_d[None, :],
                            mask=valid[:, None] & (offs_d[None, :] < D), other=0.0)
                w = tl.load(W + offs_d[:, None] * H + offs_h[None, :],
                            mask=(offs_d[:, None] < D) & mask_h[None, :], other=0.0)
                zp = tl.dot(x, w, zp, input_precision=DOT_PRECISION)
            tl.store(ZP + b.to(tl.int64) * L * H + offs_l[:, None] * H + offs_h[None, :], zp,
                     mask=(offs_l[:, None] < L) & mask_h[None, :])
        else:
            zp = tl.load(x_b + offs_l[:, None] * stride_xt + offs_h[None, :],
                         mask=valid[:, None] & mask_h[None, :], other=0.0).to(tl.float32)
        local = tl.cumsum(zp, axis=0)
        tl.store(p_b + (offs_l[:, None] + 1) * stride_pt + offs_h[None, :],
                 carry[None, :] + (local - comp[None, :]),
                 mask=(offs_l[:, None] < L) & mask_h[None, :])
        carry, comp = _kahan_add(carry, comp, tl.sum(zp, axis=0))


@triton.jit
def _suffix_kernel(DP, DZP, LENGTHS, L, H, stride_db, stride_dt, stride_dh,
                   BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr):
    """The adjoint of ``_prefix_kernel``'s scan: ``dzp[k] = sum_{t=k+1..L} dP[t]`` for valid k,
    0 elsewhere; dP (B, L+1, H) strided, dzp (B, L, H) float32 contiguous. Scans blocks from
    the end with the same compensated carry."""
    b = tl.program_id(0)
    n = tl.load(LENGTHS + b).to(tl.int32)
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    d_b = DP + b.to(tl.int64) * stride_db
    carry = tl.zeros([BLOCK_H], tl.float32)
    comp = tl.zeros([BLOCK_H], tl.float32)
    num_blocks = tl.cdiv(L, BLOCK_L)
    for r in range(0, num_blocks):
        offs_l = (num_blocks - 1 - r) * BLOCK_L + tl.arange(0, BLOCK_L)
        in_range = (offs_l[:, None] < L) & mask_h[None, :]
        g = tl.load(d_b + (offs_l[:, None] + 1) * stride_dt + offs_h[None, :] * stride_dh,
                    mask=in_range, other=0.0).to(tl.float32)
        local = tl.cumsum(g, axis=0, reverse=True)
        out = tl.where((offs_l < n)[:, None], carry[None, :] + (local - comp[None, :]), 0.0)
        tl.store(DZP + b.to(tl.int64) * L * H + offs_l[:, None] * H + offs_h[None, :], out, mask=in_range)
        carry, comp = _kahan_add(carry, comp, tl.sum(g, axis=0))


# ----------------------------------------------------------------------------- attention

@triton.jit
def _attn_fwd_kernel(Q, K, V, P, LENGTHS, OUT, LSE2, scale, dist, L, H, Dh, stride_pb, stride_pt,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     DOT_PRECISION: tl.constexpr):
    """FlashAttention-2 forward for one block of query rows of one (batch, head): online softmax
    over every valid key block, the ECCE bias added on the tiles that touch the band. Saves the
    base-2 log-sum-exp of each row (0 at invalid rows, which are written as 0)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    n = tl.load(LENGTHS + b).to(tl.int32)
    m0 = pid_m * BLOCK_M
    offs_i = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d[None, :] < Dh
    row_valid = offs_i < n
    base = bh.to(tl.int64) * L * Dh
    P_bh = P + b.to(tl.int64) * stride_pb + h
    # masked loads (other=0) everywhere: padding, even inf, never reaches a product
    q = tl.load(Q + base + offs_i[:, None] * Dh + offs_d[None, :], mask=row_valid[:, None] & mask_d, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    qk_scale = scale * LOG2E
    hi = tl.where(m0 < n, n, 0)  # a block of invalid rows visits nothing
    for n0 in range(0, hi, BLOCK_N):
        offs_j = n0 + tl.arange(0, BLOCK_N)
        col_valid = offs_j < n
        kv_mask = col_valid[:, None] & mask_d
        k = tl.load(K + base + offs_j[:, None] * Dh + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + base + offs_j[:, None] * Dh + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if _touches_band(m0, n0, BLOCK_M, BLOCK_N, dist):
            bias, inv_w, lower = _band_bias(P_bh, stride_pt, offs_i, offs_j, n, dist)
            s += bias * LOG2E
        s = tl.where(col_valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every visited block holds a valid key
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = tl.where(row_valid[:, None], acc / l_safe[:, None], 0.0)
    tl.store(OUT + base + offs_i[:, None] * Dh + offs_d[None, :], out.to(OUT.dtype.element_ty),
             mask=(offs_i[:, None] < L) & mask_d)
    lse2 = tl.where(row_valid, m_i + tl.log2(l_safe), 0.0)
    tl.store(LSE2 + bh.to(tl.int64) * L + offs_i, lse2, mask=offs_i < L)


@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, P, LENGTHS, DO, LSE2, DELTA, DQ, ROW_PLUS, ROW_MINUS,
                        scale, dist, L, H, Dh, stride_pb, stride_pt,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        DOT_PRECISION: tl.constexpr):
    """dQ for one block of query rows, and the bias gradient summed along those rows:
    ``ROW_PLUS[i] = sum_{j<=i} G`` (goes to dP[i+1]), ``ROW_MINUS[i] = sum_{j>i} G`` (to -dP[i])."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    n = tl.load(LENGTHS + b).to(tl.int32)
    m0 = pid_m * BLOCK_M
    offs_i = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d[None, :] < Dh
    row_valid = offs_i < n
    base = bh.to(tl.int64) * L * Dh
    P_bh = P + b.to(tl.int64) * stride_pb + h
    q_mask = row_valid[:, None] & mask_d
    q = tl.load(Q + base + offs_i[:, None] * Dh + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DO + base + offs_i[:, None] * Dh + offs_d[None, :], mask=q_mask, other=0.0)
    lse2 = tl.load(LSE2 + bh.to(tl.int64) * L + offs_i, mask=row_valid, other=0.0)
    delta = tl.load(DELTA + bh.to(tl.int64) * L + offs_i, mask=row_valid, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    row_plus = tl.zeros([BLOCK_M], tl.float32)
    row_minus = tl.zeros([BLOCK_M], tl.float32)
    qk_scale = scale * LOG2E
    hi = tl.where(m0 < n, n, 0)
    for n0 in range(0, hi, BLOCK_N):
        offs_j = n0 + tl.arange(0, BLOCK_N)
        col_valid = offs_j < n
        kv_mask = col_valid[:, None] & mask_d
        k = tl.load(K + base + offs_j[:, None] * Dh + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + base + offs_j[:, None] * Dh + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        touches = _touches_band(m0, n0, BLOCK_M, BLOCK_N, dist)
        inv_w = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        lower = offs_i[:, None] >= offs_j[None, :]
        if touches:
            bias, inv_w, lower = _band_bias(P_bh, stride_pt, offs_i, offs_j, n, dist)
            s += bias * LOG2E
        p = tl.where(row_valid[:, None] & col_valid[None, :], tl.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])  # dLoss/dS, S the natural-base logits
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
        if touches:
            g = ds * inv_w
            row_plus += tl.sum(tl.where(lower, g, 0.0), 1)
            row_minus += tl.sum(tl.where(lower, 0.0, g), 1)
    tl.store(DQ + base + offs_i[:, None] * Dh + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=(offs_i[:, None] < L) & mask_d)
    tl.store(ROW_PLUS + bh.to(tl.int64) * L + offs_i, row_plus, mask=offs_i < L)
    tl.store(ROW_MINUS + bh.to(tl.int64) * L + offs_i, row_minus, mask=offs_i < L)


@triton.jit
def _attn_bwd_dkv_kernel(Q, K, V, P, LENGTHS, DO, LSE2, DELTA, DK, DV, COL_PLUS, COL_MINUS,
                         scale, dist, L, H, Dh, stride_pb, stride_pt,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                         DOT_PRECISION: tl.constexpr):
    """dK, dV for one block of keys, and the bias gradient summed down those columns:
    ``COL_PLUS[j] = sum_{i<j} G`` (goes to dP[j+1]), ``COL_MINUS[j] = sum_{i>=j} G`` (to -dP[j])."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    n = tl.load(LENGTHS + b).to(tl.int32)
    n0 = pid_n * BLOCK_N
    offs_j = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d[None, :] < Dh
    col_valid = offs_j < n
    base = bh.to(tl.int64) * L * Dh
    P_bh = P + b.to(tl.int64) * stride_pb + h
    kv_mask = col_valid[:, None] & mask_d
    k = tl.load(K + base + offs_j[:, None] * Dh + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + base + offs_j[:, None] * Dh + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    col_plus = tl.zeros([BLOCK_N], tl.float32)
    col_minus = tl.zeros([BLOCK_N], tl.float32)
    qk_scale = scale * LOG2E
    hi = tl.where(n0 < n, n, 0)  # a block of invalid keys gets no gradient
    for m0 in range(0, hi, BLOCK_M):
        offs_i = m0 + tl.arange(0, BLOCK_M)
        row_valid = offs_i < n
        q_mask = row_valid[:, None] & mask_d
        q = tl.load(Q + base + offs_i[:, None] * Dh + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(DO + base + offs_i[:, None] * Dh + offs_d[None, :], mask=q_mask, other=0.0)
        lse2 = tl.load(LSE2 + bh.to(tl.int64) * L + offs_i, mask=row_valid, other=0.0)
        delta = tl.load(DELTA + bh.to(tl.int64) * L + offs_i, mask=row_valid, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        touches = _touches_band(m0, n0, BLOCK_M, BLOCK_N, dist)
        inv_w = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        lower = offs_i[:, None] >= offs_j[None, :]
        if touches:
            bias, inv_w, lower = _band_bias(P_bh, stride_pt, offs_i, offs_j, n, dist)
            s += bias * LOG2E
        p = tl.where(row_valid[:, None] & col_valid[None, :], tl.exp2(s - lse2[:, None]), 0.0)
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv, input_precision=DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk, input_precision=DOT_PRECISION)
        if touches:
            g = ds * inv_w
            col_plus += tl.sum(tl.where(lower, 0.0, g), 0)
            col_minus += tl.sum(tl.where(lower, g, 0.0), 0)
    out_mask = (offs_j[:, None] < L) & mask_d
    tl.store(DK + base + offs_j[:, None] * Dh + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=out_mask)
    tl.store(DV + base + offs_j[:, None] * Dh + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=out_mask)
    tl.store(COL_PLUS + bh.to(tl.int64) * L + offs_j, col_plus, mask=offs_j < L)
    tl.store(COL_MINUS + bh.to(tl.int64) * L + offs_j, col_minus, mask=offs_j < L)


# ----------------------------------------------------------------------------- materialised bias

@triton.jit
def _bias_fwd_kernel(P, LENGTHS, E, dist, L, H, stride_pb, stride_pt,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) tile of E (B, H, L, L); tiles off the band are written as 0."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // H
    h = bh % H
    n = tl.load(LENGTHS + b).to(tl.int32)
    m0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    offs_i = m0 + tl.arange(0, BLOCK_M)
    offs_j = n0 + tl.arange(0, BLOCK_N)
    bias = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if _touches_band(m0, n0, BLOCK_M, BLOCK_N, dist):
        bias, inv_w, lower = _band_bias(P + b.to(tl.int64) * stride_pb + h, stride_pt, offs_i, offs_j, n, dist)
    tl.store(E + bh.to(tl.int64) * L * L + offs_i[:, None] * L + offs_j[None, :], bias.to(E.dtype.element_ty),
             mask=(offs_i[:, None] < L) & (offs_j[None, :] < L))


@triton.jit
def _bias_bwd_kernel(DE, LENGTHS, PLUS, MINUS, dist, L, H,
                     BLOCK: tl.constexpr):
    """The bias gradient for positions t in one block: G = dE / (|i-j|+1) on the band, summed
    along the block's rows (the block as i) and down its columns (the block as j), visiting
    only the tiles that touch the band. ``PLUS[t]`` goes to dP[t+1], ``MINUS[t]`` to -dP[t]."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    n = tl.load(LENGTHS + bh // H).to(tl.int32)
    t0 = pid * BLOCK
    offs_t = t0 + tl.arange(0, BLOCK)
    de_bh = DE + bh.to(tl.int64) * L * L
    plus = tl.zeros([BLOCK], tl.float32)
    minus = tl.zeros([BLOCK], tl.float32)
    lo = tl.maximum(t0 - dist + 1, 0) // BLOCK * BLOCK
    hi = tl.where(t0 < n, tl.minimum(t0 + BLOCK + dist - 1, n), 0)
    for c0 in range(lo, hi, BLOCK):
        offs_c = c0 + tl.arange(0, BLOCK)
        # the block as rows i = t, columns j = c: E[t, c]
        inv_w, lower = _band_weights(offs_t, offs_c, n, dist)
        g = tl.load(de_bh + offs_t[:, None] * L + offs_c[None, :], mask=inv_w > 0, other=0.0).to(tl.float32) * inv_w
        plus += tl.sum(tl.where(lower, g, 0.0), 1)
        minus += tl.sum(tl.where(lower, 0.0, g), 1)
        # the block as columns j = t, rows i = c: E[c, t]
        inv_w, lower = _band_weights(offs_c, offs_t, n, dist)
        g = tl.load(de_bh + offs_c[:, None] * L + offs_t[None, :], mask=inv_w > 0, other=0.0).to(tl.float32) * inv_w
        plus += tl.sum(tl.where(lower, 0.0, g), 0)
        minus += tl.sum(tl.where(lower, g, 0.0), 0)
    tl.store(PLUS + bh.to(tl.int64) * L + offs_t, plus, mask=offs_t < L)
    tl.store(MINUS + bh.to(tl.int64) * L + offs_t, minus, mask=offs_t < L)


# ----------------------------------------------------------------------------- launchers

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _op(name: str, mutates_args=()):
    """``triton_op`` where the kernels compile; under the interpreter an opaque ``custom_op``
    whose fake implementation is the function itself (see the module docstring)."""
    def decorate(fn):
        if not INTERPRET:
            return triton_op(name, mutates_args=mutates_args)(fn)
        op = torch.library.custom_op(name, fn, mutates_args=mutates_args)
        op.register_fake(fn)
        return op
    return decorate


class _Interpreted:
    """``kernel[grid](*args)`` in the interpreter, doing nothing when an argument is a fake tensor
    (the op's fake implementation only needs the outputs' metadata)."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if any(isinstance(a, torch.Tensor) and (is_fake(a) or a.device.type == "meta") for a in args):
                return None
            return self.kernel[grid](*args, **kwargs)
        return launch


def _wrap(kernel):
    return _Interpreted(kernel) if INTERPRET else wrap_triton(kernel)


def _interpreted(device: torch.device) -> bool:
    return INTERPRET or device.type != "cuda"


def _blocks(device: torch.device, head_bytes: int = 0) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N): small in the interpreter, so that small test sizes still span several
    blocks (L not a multiple, tiles off the band). On a GPU 64 x 64, smaller where a row of a
    q/k/v tile (``head_bytes``: padded head dim x element size) is long, so that the pipelined
    tiles fit in shared memory (227 KB per block on an H100, 164 KB on an A100): at 64 x 64 the
    float32 backward needs ~210 KB at Dh = 128 and ~400 KB at Dh = 256 (sm_90 compile)."""
    if _interpreted(device):
        return 16, 16
    if head_bytes > 512:
        return 16, 16
    return (32, 32) if head_bytes > 256 else (64, 64)


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs get true float32 products: TF32 (Triton's default) would miss the float32 tolerances
    return "ieee" if dtype == torch.float32 else "tf32"


def _head_block(Dh: int) -> int:
    if not 1 <= Dh <= MAX_HEAD_DIM:
        raise ValueError(f"the Triton ECCE attention supports head dims 1..{MAX_HEAD_DIM}, got {Dh}")
    return max(16, triton.next_power_of_2(Dh))  # padded with masked lanes; tl.dot needs >= 16


def _scan_block_h(H: int) -> int:
    return max(16, triton.next_power_of_2(H))


def _prefix(x: torch.Tensor, w: torch.Tensor | None, lengths: torch.Tensor):
    """Launch ``_prefix_kernel``: ``(zp, P)`` float32, zp None when ``w`` is None (x is zp)."""
    B, L, _ = x.shape
    H = x.shape[2] if w is None else w.shape[1]
    D = x.shape[2]
    P = torch.empty(B, L + 1, H, device=x.device, dtype=torch.float32)
    zp = torch.empty(B, L, H, device=x.device, dtype=torch.float32) if w is not None else None
    _wrap(_prefix_kernel)[(B,)](
        x, w if w is not None else x, zp if zp is not None else P, P, lengths, L, D, H,
        x.stride(0), x.stride(1), P.stride(0), P.stride(1),
        HAS_W=w is not None, BLOCK_L=64, BLOCK_D=min(64, max(16, triton.next_power_of_2(D))),
        BLOCK_H=_scan_block_h(H), DOT_PRECISION=_dot_precision(x.dtype))
    return zp, P


def _dzp_from_band_sums(plus: torch.Tensor, minus: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """dzp (B, L, H) float32 from the band sums (B, H, L): ``dP[t] = plus[t-1] - minus[t]``,
    then ``dzp[k] = sum_{t>k} dP[t]``."""
    dP = torch.nn.functional.pad(plus, (1, 0)) - torch.nn.functional.pad(minus, (0, 1))  # (B, H, L+1)
    return torch.ops.iteach_fast.ecce_suffix_sum(dP.transpose(1, 2), lengths)


# ----------------------------------------------------------------------------- ops: prefix

@_op("iteach_fast::ecce_suffix_sum", mutates_args=())
def _suffix_sum(dP: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``dzp[b, k] = sum_{t>k} dP[b, t]`` for ``k < lengths[b]``, else 0: (B, L+1, H) -> (B, L, H) float32."""
    B, L1, H = dP.shape
    L = L1 - 1
    dzp = torch.empty(B, L, H, device=dP.device, dtype=torch.float32)
    if B and L:
        _wrap(_suffix_kernel)[(B,)](dP, dzp, lengths, L, H, dP.stride(0), dP.stride(1), dP.stride(2),
                                          BLOCK_L=64, BLOCK_H=_scan_block_h(H))
    return dzp


@_op("iteach_fast::ecce_prefix", mutates_args=())
def _prefix_op(z: torch.Tensor, w: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, L, D = z.shape
    H = w.shape[1]
    if B == 0 or L == 0:
        return (torch.zeros(B, L, H, device=z.device, dtype=torch.float32),
                torch.zeros(B, L + 1, H, device=z.device, dtype=torch.float32))
    return _prefix(z, w, lengths)


def _prefix_setup(ctx, inputs, output):
    z, w, lengths = inputs
    ctx.save_for_backward(z, w, lengths)


def _prefix_backward(ctx, dzp, dP):
    z, w, lengths = ctx.saved_tensors
    B, L, _ = z.shape
    valid = (torch.arange(L, device=z.device) < lengths[:, None])[..., None]
    g = torch.zeros(B, L, w.shape[1], device=z.device, dtype=torch.float32)
    if dP is not None:
        g = g + torch.ops.iteach_fast.ecce_suffix_sum(dP, lengths)
    if dzp is not None:
        g = g + torch.where(valid, dzp.float(), 0.0)
    zm = torch.where(valid, z.float(), 0.0)  # invalid rows of z did not take part
    dz = (g @ w.float().t()).to(z.dtype)
    dw = torch.einsum("bld,blh->dh", zm, g).to(w.dtype)
    return dz, dw, None


_prefix_op.register_autograd(_prefix_backward, setup_context=_prefix_setup)


def ecce_prefix(z: torch.Tensor, w: torch.Tensor, lengths: torch.Tensor | None = None):
    """``(zp, P)``: ``zp = Z @ W`` (B, L, H) and its exclusive prefix sums ``P`` (B, L+1, H),
    both float32, positions ``>= lengths`` contributing 0 (zp is 0 there). One kernel;
    differentiable in ``z`` and ``w``."""
    if z.dim() != 3 or w.dim() != 2 or w.shape[0] != z.shape[2]:
        raise ValueError(f"ecce_prefix expects z (B, L, D) and w (D, H), got {tuple(z.shape)} and {tuple(w.shape)}")
    if z.dtype != w.dtype:
        raise TypeError(f"z and w must share a dtype, got {z.dtype} and {w.dtype}")
    B, L, _ = z.shape
    if lengths is None:
        lengths = torch.full((B,), L, dtype=torch.int64, device=z.device)
    return torch.ops.iteach_fast.ecce_prefix(z.contiguous(), w.contiguous(), lengths.to(z.device, torch.int64))


# ----------------------------------------------------------------------------- ops: attention

@_op("iteach_fast::ecce_attention_fwd", mutates_args=())
def _attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, zp: torch.Tensor, lengths: torch.Tensor,
                   dist: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, lse2, P)``: the attention output, each row's base-2 log-sum-exp (B, H, L) and
    the prefix sums of zp (B, L+1, H), the last two kept for the backward."""
    B, H, L, Dh = q.shape
    out = torch.empty_like(q)
    lse2 = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    if B == 0 or L == 0:
        return out, lse2, torch.zeros(B, L + 1, H, device=q.device, dtype=torch.float32)
    _, P = _prefix(zp, None, lengths)
    BLOCK_M, BLOCK_N = _blocks(q.device, _head_block(Dh) * q.element_size())
    _wrap(_attn_fwd_kernel)[(triton.cdiv(L, BLOCK_M), B * H)](
        q, k, v, P, lengths, out, lse2, scale, min(dist, L + 1), L, H, Dh, P.stride(0), P.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=_head_block(Dh), DOT_PRECISION=_dot_precision(q.dtype))
    return out, lse2, P


@_op("iteach_fast::ecce_attention_bwd", mutates_args=())
def _attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse2: torch.Tensor, P: torch.Tensor, lengths: torch.Tensor, dist: int,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv, dzp)``; dzp float32."""
    B, H, L, Dh = q.shape
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if B == 0 or L == 0:
        return dq, dk, dv, torch.zeros(B, L, H, device=q.device, dtype=torch.float32)
    delta = (dout.float() * out.float()).sum(-1)  # (B, H, L): rowsum(dO * O), FA2's D
    sums = torch.empty(4, B, H, L, device=q.device, dtype=torch.float32)  # row+, row-, col+, col-
    BLOCK_M, BLOCK_N = _blocks(q.device, _head_block(Dh) * q.element_size())
    meta = dict(BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=_head_block(Dh), DOT_PRECISION=_dot_precision(q.dtype))
    common = (scale, min(dist, L + 1), L, H, Dh, P.stride(0), P.stride(1))
    _wrap(_attn_bwd_dq_kernel)[(triton.cdiv(L, BLOCK_M), B * H)](
        q, k, v, P, lengths, dout, lse2, delta, dq, sums[0], sums[1], *common, **meta)
    _wrap(_attn_bwd_dkv_kernel)[(triton.cdiv(L, BLOCK_N), B * H)](
        q, k, v, P, lengths, dout, lse2, delta, dk, dv, sums[2], sums[3], *common, **meta)
    dzp = _dzp_from_band_sums(sums[0] + sums[2], sums[1] + sums[3], lengths)
    return dq, dk, dv, dzp


def _attention_setup(ctx, inputs, output):
    q, k, v, zp, lengths, dist, scale = inputs
    out, lse2, P = output
    ctx.save_for_backward(q, k, v, out, lse2, P, lengths)
    ctx.dist, ctx.scale, ctx.zp_dtype = dist, scale, zp.dtype
    ctx.mark_non_differentiable(lse2, P)


def _attention_backward(ctx, dout, _dlse2, _dP):
    q, k, v, out, lse2, P, lengths = ctx.saved_tensors
    dq, dk, dv, dzp = torch.ops.iteach_fast.ecce_attention_bwd(
        dout.contiguous(), q, k, v, out, lse2, P, lengths, ctx.dist, ctx.scale)
    return dq, dk, dv, dzp.to(ctx.zp_dtype), None, None, None


_attention_fwd.register_autograd(_attention_backward, setup_context=_attention_setup)


def ecce_attention(q, k, v, zp, lengths, dist: int, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale + E) v`` per head with ECCE's bias E built on the fly (see the
    module docstring); inputs as ``iteach_fast.ops.ecce_attention`` validates them."""
    _head_block(q.shape[-1])
    out, _, _ = torch.ops.iteach_fast.ecce_attention_fwd(
        q.contiguous(), k.contiguous(), v.contiguous(), zp.contiguous(), lengths, int(dist), float(scale))
    return out


# ----------------------------------------------------------------------------- ops: materialised bias

@_op("iteach_fast::ecce_bias_fwd", mutates_args=())
def _bias_fwd(zp: torch.Tensor, lengths: torch.Tensor, dist: int) -> torch.Tensor:
    B, L, H = zp.shape
    E = torch.empty(B, H, L, L, device=zp.device, dtype=zp.dtype)
    if B == 0 or L == 0:
        return E
    _, P = _prefix(zp, None, lengths)
    BLOCK_M, BLOCK_N = _blocks(zp.device)
    _wrap(_bias_fwd_kernel)[(triton.cdiv(L, BLOCK_M), triton.cdiv(L, BLOCK_N), B * H)](
        P, lengths, E, min(dist, L + 1), L, H, P.stride(0), P.stride(1), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
    return E


@_op("iteach_fast::ecce_bias_bwd", mutates_args=())
def _bias_bwd(dE: torch.Tensor, lengths: torch.Tensor, dist: int) -> torch.Tensor:
    """dzp (B, L, H) float32 from dE (B, H, L, L)."""
    B, H, L, _ = dE.shape
    if B == 0 or L == 0:
        return torch.zeros(B, L, H, device=dE.device, dtype=torch.float32)
    sums = torch.empty(2, B, H, L, device=dE.device, dtype=torch.float32)
    BLOCK = _blocks(dE.device)[0]
    _wrap(_bias_bwd_kernel)[(triton.cdiv(L, BLOCK), B * H)](
        dE, lengths, sums[0], sums[1], min(dist, L + 1), L, H, BLOCK=BLOCK)
    return _dzp_from_band_sums(sums[0], sums[1], lengths)


def _bias_setup(ctx, inputs, output):
    zp, lengths, dist = inputs
    ctx.save_for_backward(lengths)
    ctx.dist, ctx.zp_dtype = dist, zp.dtype


def _bias_backward(ctx, dE):
    (lengths,) = ctx.saved_tensors
    return torch.ops.iteach_fast.ecce_bias_bwd(dE.contiguous(), lengths, ctx.dist).to(ctx.zp_dtype), None, None


_bias_fwd.register_autograd(_bias_backward, setup_context=_bias_setup)


def ecce_bias(zp: torch.Tensor, lengths: torch.Tensor, dist: int) -> torch.Tensor:
    """ECCE's bias ``E (B, H, L, L)`` materialised from the same prefix sums the attention uses."""
    return torch.ops.iteach_fast.ecce_bias_fwd(zp.contiguous(), lengths, int(dist))
