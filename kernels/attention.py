"""ECCE-guided attention with the band bias fused in, in Triton (``docs/maths.md``, "ECCE-guided MixMap").

    ecce_attention(q, k, v, zp, lengths, dist, scale) -> out (B, H, L, Dh)   (E never materialised)

FlashAttention-2, forward and backward, with ECCE's bias E added to the logits tile by tile
from the prefix sums P of zp (``iteach_fast.kernels.band`` builds a tile of E;
``iteach_fast.kernels.scan`` computes P). The ops ``iteach_fast::ecce_attention_fwd`` and
``iteach_fast::ecce_attention_bwd`` carry the autograd.

Backward of the bias, without atomics (as flash-linear-attention's forgetting attention
does for its ``g_cumsum``): with ``G = dS / (|i-j|+1)`` on the band,
``dP[i+1] += G`` and ``dP[j] -= G`` for ``i >= j``, ``dP[j+1] += G`` and ``dP[i] -= G`` for ``i < j``.
The dQ kernel owns a block of rows and sums G along them, the dK/dV kernel owns a block of
columns and sums G down them; each writes its own ``plus`` (goes to ``dP[t+1]``) and ``minus``
(goes to ``-dP[t]``) buffer, with no two programs touching the same element. Then
``dP = shift(plus) - minus`` and ``dzp[k] = sum_{t>k} dP[t]`` by one reverse scan. Atomics
would save the two small (B, H, L) buffers but make the result order-dependent
(non-deterministic), and bfloat16 atomics do not run in the Triton interpreter.

Also for the bias module: ``blocks(device, head_bytes)``, the tile sizes; ``MAX_HEAD_DIM``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._compat import interpreted, launcher, triton_op_or_custom
from .band import LOG2E, band_bias, touches_band
from .scan import dot_precision, dzp_from_band_sums, prefix_sums

__all__ = ["ecce_attention", "blocks", "head_block", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 256  # one (BLOCK, Dh) tile of q/k/v must fit in registers


# ----------------------------------------------------------------------------- kernels

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
        if touches_band(m0, n0, BLOCK_M, BLOCK_N, dist):
            bias, inv_w, lower = band_bias(P_bh, stride_pt, offs_i, offs_j, n, dist)
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
        touches = touches_band(m0, n0, BLOCK_M, BLOCK_N, dist)
        inv_w = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        lower = offs_i[:, None] >= offs_j[None, :]
        if touches:
            bias, inv_w, lower = band_bias(P_bh, stride_pt, offs_i, offs_j, n, dist)
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
        touches = touches_band(m0, n0, BLOCK_M, BLOCK_N, dist)
        inv_w = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        lower = offs_i[:, None] >= offs_j[None, :]
        if touches:
            bias, inv_w, lower = band_bias(P_bh, stride_pt, offs_i, offs_j, n, dist)
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


# ----------------------------------------------------------------------------- launch parameters

def blocks(device: torch.device, head_bytes: int = 0) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N): small in the interpreter, so that small test sizes still span several
    blocks (L not a multiple, tiles off the band). On a GPU 64 x 64, smaller where a row of a
    q/k/v tile (``head_bytes``: padded head dim x element size) is long, so that the pipelined
    tiles fit in shared memory (227 KB per block on an H100, 164 KB on an A100): at 64 x 64 the
    float32 backward needs ~210 KB at Dh = 128 and ~400 KB at Dh = 256 (sm_90 compile)."""
    if interpreted(device):
        return 16, 16
    if head_bytes > 512:
        return 16, 16
    return (32, 32) if head_bytes > 256 else (64, 64)


def head_block(Dh: int) -> int:
    """BLOCK_D, the head dim padded to a power of two; ValueError beyond ``MAX_HEAD_DIM``."""
    if not 1 <= Dh <= MAX_HEAD_DIM:
        raise ValueError(f"the Triton ECCE attention supports head dims 1..{MAX_HEAD_DIM}, got {Dh}")
    return max(16, triton.next_power_of_2(Dh))  # padded with masked lanes; tl.dot needs >= 16


# ----------------------------------------------------------------------------- ops

@triton_op_or_custom("iteach_fast::ecce_attention_fwd", mutates_args=())
def _attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, zp: torch.Tensor, lengths: torch.Tensor,
                   dist: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, lse2, P)``: the attention output, each row's base-2 log-sum-exp (B, H, L) and
    the prefix sums of zp (B, L+1, H), the last two kept for the backward."""
    B, H, L, Dh = q.shape
    out = torch.empty_like(q)
    lse2 = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    if B == 0 or L == 0:
        return out, lse2, torch.zeros(B, L + 1, H, device=q.device, dtype=torch.float32)
    _, P = prefix_sums(zp, None, lengths)
    BLOCK_M, BLOCK_N = blocks(q.device, head_block(Dh) * q.element_size())
    launcher(_attn_fwd_kernel)[(triton.cdiv(L, BLOCK_M), B * H)](
        q, k, v, P, lengths, out, lse2, scale, min(dist, L + 1), L, H, Dh, P.stride(0), P.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=head_block(Dh), DOT_PRECISION=dot_precision(q.dtype))
    return out, lse2, P


@triton_op_or_custom("iteach_fast::ecce_attention_bwd", mutates_args=())
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
    BLOCK_M, BLOCK_N = blocks(q.device, head_block(Dh) * q.element_size())
    meta = dict(BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=head_block(Dh), DOT_PRECISION=dot_precision(q.dtype))
    common = (scale, min(dist, L + 1), L, H, Dh, P.stride(0), P.stride(1))
    launcher(_attn_bwd_dq_kernel)[(triton.cdiv(L, BLOCK_M), B * H)](
        q, k, v, P, lengths, dout, lse2, delta, dq, sums[0], sums[1], *common, **meta)
    launcher(_attn_bwd_dkv_kernel)[(triton.cdiv(L, BLOCK_N), B * H)](
        q, k, v, P, lengths, dout, lse2, delta, dk, dv, sums[2], sums[3], *common, **meta)
    dzp = dzp_from_band_sums(sums[0] + sums[2], sums[1] + sums[3], lengths)
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
    """``softmax(q k^T * scale + E) v`` per head with ECCE's bias E built on the fly (see
    ``iteach_fast.kernels.band``); inputs as ``iteach_fast.ops.ecce_attention`` validates them."""
    head_block(q.shape[-1])
    out, _, _ = torch.ops.iteach_fast.ecce_attention_fwd(
        q.contiguous(), k.contiguous(), v.contiguous(), zp.contiguous(), lengths, int(dist), float(scale))
    return out

