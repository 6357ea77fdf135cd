"""ECCE's bias materialised, in Triton (``docs/maths.md``, "ECCE", eq. 6): for heatmaps and tests.

    ecce_bias(zp, lengths, dist) -> E (B, H, L, L)

Built tile by tile from the same prefix sums P of zp (``iteach_fast.kernels.scan``) and band
maths (``iteach_fast.kernels.band``) as the fused attention, tiles off the band written as 0.
The backward sums ``G = dE / (|i-j|+1)`` over the band into the same ``plus`` / ``minus``
buffers as the attention's backward (see ``iteach_fast.kernels.attention``), then one reverse
scan. The ops are ``iteach_fast::ecce_bias_fwd`` and ``iteach_fast::ecce_bias_bwd``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._compat import launcher, triton_op_or_custom
from .attention import blocks
from .band import band_bias, band_weights, touches_band
from .scan import dzp_from_band_sums, prefix_sums

__all__ = ["ecce_bias"]


# ----------------------------------------------------------------------------- kernels

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
    if touches_band(m0, n0, BLOCK_M, BLOCK_N, dist):
        bias, inv_w, lower = band_bias(P + b.to(tl.int64) * stride_pb + h, stride_pt, offs_i, offs_j, n, dist)
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
        inv_w, lower = band_weights(offs_t, offs_c, n, dist)
        g = tl.load(de_bh + offs_t[:, None] * L + offs_c[None, :], mask=inv_w > 0, other=0.0).to(tl.float32) * inv_w
        plus += tl.sum(tl.where(lower, g, 0.0), 1)
        minus += tl.sum(tl.where(lower, 0.0, g), 1)
        # the block as columns j = t, rows i = c: E[c, t]
        inv_w, lower = band_weights(offs_c, offs_t, n, dist)
        g = tl.load(de_bh + offs_c[:, None] * L + offs_t[None, :], mask=inv_w > 0, other=0.0).to(tl.float32) * inv_w
        plus += tl.sum(tl.where(lower, 0.0, g), 0)
        minus += tl.sum(tl.where(lower, g, 0.0), 0)
    tl.store(PLUS + bh.to(tl.int64) * L + offs_t, plus, mask=offs_t < L)
    tl.store(MINUS + bh.to(tl.int64) * L + offs_t, minus, mask=offs_t < L)


# ----------------------------------------------------------------------------- ops

@triton_op_or_custom("iteach_fast::ecce_bias_fwd", mutates_args=())
def _bias_fwd(zp: torch.Tensor, lengths: torch.Tensor, dist: int) -> torch.Tensor:
    B, L, H = zp.shape
    E = torch.empty(B, H, L, L, device=zp.device, dtype=zp.dtype)
    if B == 0 or L == 0:
        return E
    _, P = prefix_sums(zp, None, lengths)
    BLOCK_M, BLOCK_N = blocks(zp.device)
    launcher(_bias_fwd_kernel)[(triton.cdiv(L, BLOCK_M), triton.cdiv(L, BLOCK_N), B * H)](
        P, lengths, E, min(dist, L + 1), L, H, P.stride(0), P.stride(1), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
    return E


@triton_op_or_custom("iteach_fast::ecce_bias_bwd", mutates_args=())
def _bias_bwd(dE: torch.Tensor, lengths: torch.Tensor, dist: int) -> torch.Tensor:
    """dzp (B, L, H) float32 from dE (B, H, L, L)."""
    B, H, L, _ = dE.shape
    if B == 0 or L == 0:
        return torch.zeros(B, L, H, device=dE.device, dtype=torch.float32)
    sums = torch.empty(2, B, H, L, device=dE.device, dtype=torch.float32)
    BLOCK = blocks(dE.device)[0]
    launcher(_bias_bwd_kernel)[(triton.cdiv(L, BLOCK), B * H)](
        dE, lengths, sums[0], sums[1], min(dist, L + 1), L, H, BLOCK=BLOCK)
    return dzp_from_band_sums(sums[0], sums[1], lengths)


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
