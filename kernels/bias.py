"""ECCE's bias materialised, in Triton (``docs/maths.md``, "ECCE"): for heatmaps and tests.

    ecce_bias(zp, lengths, dist, causal) -> E (B, H, L, L)

Built tile by tile from the same band tables (``iteach_fast.kernels.scan``) and band maths
(``iteach_fast.kernels.band``) as the fused attention; tiles off the band are written as 0, and
with ``causal`` so is everything above the diagonal. The backward sums ``dE / (|i-j|+1)`` over the
band into the tables' gradient ``(dS, dR, dzp)``, along rows and down columns as the attention's
backward does; the tables' adjoint then gives dzp. The op is ``iteach_fast::ecce_bias_fwd``
(differentiable in the tables), with ``iteach_fast::ecce_bias_bwd``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._compat import batch_slices, interpreted, launcher, sliced, triton_op_or_custom, wide_offsets
from .band import addresses, band_grads, band_tile, touches_band
from .scan import band_tables, chunk

__all__ = ["ecce_bias", "bias_meta"]


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _bias_fwd_kernel(T, LENGTHS, E, dist, L, H, stride_tb, stride_th, stride_tc, stride_tt,
                     CAUSAL: tl.constexpr, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    """One (BLOCK, BLOCK) tile of E (B, H, L, L) contiguous; tiles off the band are written as 0."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    bh = tl.program_id(2)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    n = tl.load(LENGTHS + b).to(tl.int32)
    m0 = pid_m * BLOCK
    n0 = pid_n * BLOCK
    offs_i = m0 + tl.arange(0, BLOCK)
    offs_j = n0 + tl.arange(0, BLOCK)
    bias = tl.zeros([BLOCK, BLOCK], tl.float32)
    if touches_band(m0, n0, BLOCK, BLOCK, dist):
        bias = band_tile(T + b * stride_tb + h * stride_th, stride_tc, stride_tt, offs_i, offs_j, n, dist, CAUSAL,
                         True)
    ai, aj = addresses(offs_i, WIDE), addresses(offs_j, WIDE)  # L * L passes 2**31 at L = 46,341
    tl.store(E + bh.to(tl.int64) * L * L + ai[:, None] * L + aj[None, :], bias.to(E.dtype.element_ty),
             mask=(offs_i[:, None] < L) & (offs_j[None, :] < L))


@triton.jit
def _bias_bwd_kernel(DE, LENGTHS, DT, dist, L, H, stride_eb, stride_eh, stride_ei, stride_ej,
                     stride_tb, stride_th, stride_tc, stride_tt,
                     CAUSAL: tl.constexpr, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    """The tables' gradient (dS, dR, dzp) at the positions t of one block, from dE (B, H, L, L)
    strided: the band pairs with t as the query (E[t, c]) and as the key (E[c, t]), visiting
    only the blocks c within ``dist`` of the block."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    n = tl.load(LENGTHS + b).to(tl.int32)
    t0 = pid * BLOCK
    offs_t = t0 + tl.arange(0, BLOCK)
    at = addresses(offs_t, WIDE)
    de_bh = DE + b * stride_eb + h * stride_eh
    d_s = tl.zeros([BLOCK], tl.float32)
    d_r = tl.zeros([BLOCK], tl.float32)
    d_z = tl.zeros([BLOCK], tl.float32)
    lo = tl.maximum(t0 - dist + 1, 0) // BLOCK * BLOCK
    hi = tl.where(t0 < n, tl.minimum(t0 + BLOCK + dist - 1, n), 0)
    for c0 in range(lo, hi, BLOCK):
        offs_c = c0 + tl.arange(0, BLOCK)
        ac = addresses(offs_c, WIDE)
        near = (tl.abs(offs_t[:, None] - offs_c[None, :]) < dist) & (offs_t[:, None] < n) & (offs_c[None, :] < n)
        # t as the query (E[t, c]), then as the key (E[c, t], loaded transposed: t along the rows)
        for Q_ROWS in tl.static_range(2):
            if Q_ROWS == 1:
                g = tl.load(de_bh + at[:, None] * stride_ei + ac[None, :] * stride_ej, mask=near, other=0.0)
            else:
                g = tl.load(de_bh + ac[None, :] * stride_ei + at[:, None] * stride_ej, mask=near, other=0.0)
            gs, gr, gz = band_grads(g.to(tl.float32), offs_t, offs_c, n, dist, CAUSAL, Q_ROWS == 1)
            d_s += gs
            d_r += gr
            d_z += gz
    dt = DT + b * stride_tb + h * stride_th + at * stride_tt
    tl.store(dt, d_s, mask=offs_t < L)
    tl.store(dt + stride_tc, d_r, mask=offs_t < L)
    tl.store(dt + 2 * stride_tc, d_z, mask=offs_t < L)


# ----------------------------------------------------------------------------- ops

def bias_meta(kernel: str, causal: bool, device: torch.device, wide: bool = False) -> dict:
    """The constexprs and launch options of the bias kernels (``"fwd"``, ``"bwd"``): 16 x 16 tiles in
    the interpreter (small tests span several); on a GPU 64 x 64 forward, 32 x 32 backward (two
    tiles of dE live at once: at 64 it spills, sm_90 compile report). ``wide``: 64-bit addresses
    (``_compat.wide_offsets``)."""
    block = 16 if interpreted(device) else (64 if kernel == "fwd" else 32)
    return dict(CAUSAL=causal, BLOCK=block, WIDE=wide, num_warps=4)


@triton_op_or_custom("iteach_fast::ecce_bias_fwd", mutates_args=())
def _bias_fwd(tables: torch.Tensor, lengths: torch.Tensor, dist: int, causal: bool,
              dtype: torch.dtype) -> torch.Tensor:
    """E (B, H, L, L) of ``dtype`` from the tables (B, H, 3, L); ``dist`` already a chunk length."""
    B, H, _, L = tables.shape
    E = torch.empty(B, H, L, L, device=tables.device, dtype=dtype)
    if B * H == 0 or L == 0:
        return E
    meta = bias_meta("fwd", causal, tables.device, wide_offsets(tables, E))
    blocks = triton.cdiv(L, meta["BLOCK"])
    for b0, b1 in batch_slices(B, H):  # B * H on grid axis 2: at most 65,535 a launch
        launcher(_bias_fwd_kernel)[(blocks, blocks, (b1 - b0) * H)](
            *sliced((tables, lengths, E), b0, b1, B), dist, L, H, *tables.stride(), **meta)
    return E


@triton_op_or_custom("iteach_fast::ecce_bias_bwd", mutates_args=())
def _bias_bwd(dE: torch.Tensor, lengths: torch.Tensor, dist: int, causal: bool) -> torch.Tensor:
    """The tables' gradient dT (B, H, 3, L) float32 from dE (B, H, L, L)."""
    B, H, L, _ = dE.shape
    dT = torch.empty(B, H, 3, L, device=dE.device, dtype=torch.float32)
    if B * H == 0 or L == 0:
        return dT
    meta = bias_meta("bwd", causal, dE.device, wide_offsets(dE, dT))
    for b0, b1 in batch_slices(B, H):  # B * H on grid axis 1
        launcher(_bias_bwd_kernel)[(triton.cdiv(L, meta["BLOCK"]), (b1 - b0) * H)](
            *sliced((dE, lengths, dT), b0, b1, B), dist, L, H, *dE.stride(), *dT.stride(), **meta)
    return dT


def _bias_setup(ctx, inputs, output):
    tables, lengths, dist, causal, dtype = inputs
    ctx.save_for_backward(lengths)
    ctx.dist, ctx.causal = dist, causal


def _bias_backward(ctx, dE):
    (lengths,) = ctx.saved_tensors
    return torch.ops.iteach_fast.ecce_bias_bwd(dE, lengths, ctx.dist, ctx.causal), None, None, None, None


_bias_fwd.register_autograd(_bias_backward, setup_context=_bias_setup)


def ecce_bias(zp: torch.Tensor, lengths: torch.Tensor, dist: int, causal: bool = False) -> torch.Tensor:
    """ECCE's bias ``E (B, H, L, L)`` (zp's dtype) materialised from the band tables of ``zp``
    (B, L, H); with ``causal``, 0 above the diagonal and the band ``i - dist < j <= i``."""
    c = chunk(dist, zp.shape[1])
    return torch.ops.iteach_fast.ecce_bias_fwd(band_tables(zp, lengths, c), lengths, c, bool(causal), zp.dtype)
