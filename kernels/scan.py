"""ECCE's prefix sums and their adjoint: the scans under the band bias (``docs/maths.md``, "ECCE").

    ecce_prefix(z, w, lengths) -> (zp, P)   Zp = Z @ W (B, L, H) and P[t] = sum_{k<t} Zp[k] (B, L+1, H)

Both scans run one program per conversation over blocks of positions: a tree cumsum inside a
block and a Kahan-compensated carry across blocks, so the error of P stays at a few ulps of
|P| however long L is. The ops, ``iteach_fast::ecce_prefix`` (differentiable in z and w) and
``iteach_fast::ecce_suffix_sum`` (its adjoint, ``dzp[k] = sum_{t>k} dP[t]``), are registered
through ``iteach_fast.kernels._compat``. For the attention and bias modules:

    prefix_sums(x, w, lengths)                -> (zp, P)  the launch, zp None when w is None (x is zp)
    dzp_from_band_sums(plus, minus, lengths)  -> dzp      the bias gradient from the band sums
    dot_precision(dtype)                      -> the ``input_precision`` of every ``tl.dot``
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._compat import launcher, triton_op_or_custom

__all__ = ["ecce_prefix", "prefix_sums", "dzp_from_band_sums", "dot_precision"]


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _kahan_add(total, comp, x):
    """Compensated ``total += x``: ``comp`` keeps what float32 rounding dropped."""
    y = x - comp
    t = total + y
    return t, (t - total) - y


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


# ----------------------------------------------------------------------------- launchers

def dot_precision(dtype: torch.dtype) -> str:
    """The ``input_precision`` of a ``tl.dot`` on inputs of ``dtype`` (the scan's and attention's)."""
    # float32 inputs get true float32 products: TF32 (Triton's default) would miss the float32 tolerances
    return "ieee" if dtype == torch.float32 else "tf32"


def _scan_block_h(H: int) -> int:
    return max(16, triton.next_power_of_2(H))


def prefix_sums(x: torch.Tensor, w: torch.Tensor | None, lengths: torch.Tensor):
    """Launch ``_prefix_kernel``: ``(zp, P)`` float32, zp None when ``w`` is None (x is zp)."""
    B, L, _ = x.shape
    H = x.shape[2] if w is None else w.shape[1]
    D = x.shape[2]
    P = torch.empty(B, L + 1, H, device=x.device, dtype=torch.float32)
    zp = torch.empty(B, L, H, device=x.device, dtype=torch.float32) if w is not None else None
    launcher(_prefix_kernel)[(B,)](
        x, w if w is not None else x, zp if zp is not None else P, P, lengths, L, D, H,
        x.stride(0), x.stride(1), P.stride(0), P.stride(1),
        HAS_W=w is not None, BLOCK_L=64, BLOCK_D=min(64, max(16, triton.next_power_of_2(D))),
        BLOCK_H=_scan_block_h(H), DOT_PRECISION=dot_precision(x.dtype))
    return zp, P


def dzp_from_band_sums(plus: torch.Tensor, minus: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """dzp (B, L, H) float32 from the band sums (B, H, L): ``dP[t] = plus[t-1] - minus[t]``,
    then ``dzp[k] = sum_{t>k} dP[t]``."""
    dP = torch.nn.functional.pad(plus, (1, 0)) - torch.nn.functional.pad(minus, (0, 1))  # (B, H, L+1)
    return torch.ops.iteach_fast.ecce_suffix_sum(dP.transpose(1, 2), lengths)


# ----------------------------------------------------------------------------- ops

@triton_op_or_custom("iteach_fast::ecce_suffix_sum", mutates_args=())
def _suffix_sum(dP: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``dzp[b, k] = sum_{t>k} dP[b, t]`` for ``k < lengths[b]``, else 0: (B, L+1, H) -> (B, L, H) float32."""
    B, L1, H = dP.shape
    L = L1 - 1
    dzp = torch.empty(B, L, H, device=dP.device, dtype=torch.float32)
    if B and L:
        launcher(_suffix_kernel)[(B,)](dP, dzp, lengths, L, H, dP.stride(0), dP.stride(1), dP.stride(2),
                                       BLOCK_L=64, BLOCK_H=_scan_block_h(H))
    return dzp


@triton_op_or_custom("iteach_fast::ecce_prefix", mutates_args=())
def _prefix_op(z: torch.Tensor, w: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, L, D = z.shape
    H = w.shape[1]
    if B == 0 or L == 0:
        return (torch.zeros(B, L, H, device=z.device, dtype=torch.float32),
                torch.zeros(B, L + 1, H, device=z.device, dtype=torch.float32))
    return prefix_sums(z, w, lengths)


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
