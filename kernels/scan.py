"""ECCE's band tables and their adjoint: the chunk-local scans under the band bias (``docs/maths.md``).

    ecce_prefix(z, w, lengths, dist) -> (zp, T)   zp = Z @ W (B, L, H) and its tables T (B, H, 3, L)
    band_tables(zp, lengths, dist)   -> T         the tables of a given zp

``T`` holds, for chunks of ``dist`` positions (``c(t) = t // dist``), ``T[:, :, 0, t] = S[t]`` the
inclusive sum of zp from the chunk's start to t, ``T[:, :, 1, t] = R[t]`` from t to the chunk's
end, ``T[:, :, 2, t] = zp[t]`` (see ``iteach_fast.kernels.band`` for how a band mean reads them).
One program per (chunk, conversation) scans its chunk in blocks of positions: a tree cumsum inside
a block and a Kahan-compensated carry across blocks, forwards for S, backwards for R, so the
error of a table entry stays at a few ulps of the chunk's sums however long the chunk is. Each
scan restarts at its chunk: nothing crosses a chunk boundary, so a NaN or a huge value in zp
stays in its own chunk's tables.

The adjoint (``dzp[k] = dT2[k] + sum_{t >= k} dS[t] + sum_{t <= k} dR[t]`` over k's chunk, 0 beyond
the length) is the same scan run the other way. Ops, registered through
``iteach_fast.kernels._compat``: ``iteach_fast::ecce_prefix`` (differentiable in z and w),
``iteach_fast::ecce_band_tables`` (differentiable in zp) and ``iteach_fast::ecce_tables_adjoint``.
For the other kernel modules: ``dot_precision(dtype)``, the ``input_precision`` of every ``tl.dot``,
and ``chunk(dist, L)``, the chunk length the kernels use.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._compat import batch_slices, launcher, sliced, triton_op_or_custom, wide_offsets
from .band import addresses

__all__ = ["ecce_prefix", "band_tables", "tables_adjoint", "dot_precision", "chunk", "scan_meta"]


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _kahan_add(total, comp, x):
    """Compensated ``total += x``: ``comp`` keeps what float32 rounding dropped."""
    y = x - comp
    t = total + y
    return t, (t - total) - y


@triton.jit
def _tables_kernel(X, W, ZP, T, LENGTHS, L, D, H, dist,
                   stride_xb, stride_xt, stride_xd, stride_wd, stride_wh,
                   stride_tb, stride_th, stride_tc, stride_tt,
                   HAS_W: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr, WIDE: tl.constexpr):
    """One program per (chunk, conversation). ``zp = X @ W`` (X (B, L, D), W (D, H)) if HAS_W,
    written to ZP (B, L, H) float32, else ``zp = X`` (B, L, H); 0 beyond the length. Writes the
    chunk's S (forward scan), then R (backward scan, reading back the zp just written)."""
    c = tl.program_id(0)
    b = tl.program_id(1)
    n = tl.load(LENGTHS + b).to(tl.int32)
    start = c * dist
    end = tl.minimum(start + dist, L)
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h[None, :] < H
    x_b = X + b.to(tl.int64) * stride_xb
    t_b = T + b.to(tl.int64) * stride_tb + addresses(offs_h, WIDE)[None, :] * stride_th
    carry = tl.zeros([BLOCK_H], tl.float32)
    comp = tl.zeros([BLOCK_H], tl.float32)
    for l0 in range(start, end, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        al = addresses(offs_l, WIDE)  # what multiplies a stride
        valid = offs_l[:, None] < n
        in_chunk = (offs_l[:, None] < end) & mask_h
        if HAS_W:
            zp = tl.zeros([BLOCK_L, BLOCK_H], tl.float32)
            for d0 in range(0, tl.where(l0 < n, D, 0), BLOCK_D):  # a block of padding: no products
                offs_d = d0 + tl.arange(0, BLOCK_D)
                x = tl.load(x_b + al[:, None] * stride_xt + addresses(offs_d, WIDE)[None, :] * stride_xd,
                            mask=valid & (offs_d[None, :] < D), other=0.0)
                w = tl.load(W + addresses(offs_d, WIDE)[:, None] * stride_wd + offs_h[None, :] * stride_wh,
                            mask=(offs_d[:, None] < D) & mask_h, other=0.0)
                zp = tl.dot(x, w, zp, input_precision=DOT_PRECISION)
            tl.store(ZP + b.to(tl.int64) * L * H + al[:, None] * H + offs_h[None, :], zp, mask=in_chunk)
        else:
            zp = tl.load(x_b + al[:, None] * stride_xt + addresses(offs_h, WIDE)[None, :] * stride_xd,
                         mask=valid & mask_h, other=0.0).to(tl.float32)
        tl.store(t_b + 2 * stride_tc + al[:, None] * stride_tt, zp, mask=in_chunk)
        tl.store(t_b + al[:, None] * stride_tt, carry[None, :] + (tl.cumsum(zp, 0) - comp[None, :]),
                 mask=in_chunk)
        carry, comp = _kahan_add(carry, comp, tl.sum(zp, 0))
    tl.debug_barrier()  # the zp just stored, read back below by other threads of this program
    carry = tl.zeros([BLOCK_H], tl.float32)
    comp = tl.zeros([BLOCK_H], tl.float32)
    num_blocks = tl.cdiv(end - start, BLOCK_L)
    for r in range(0, num_blocks):
        offs_l = start + (num_blocks - 1 - r) * BLOCK_L + tl.arange(0, BLOCK_L)
        al = addresses(offs_l, WIDE)
        in_chunk = (offs_l[:, None] < end) & mask_h
        zp = tl.load(t_b + 2 * stride_tc + al[:, None] * stride_tt, mask=in_chunk, other=0.0)
        tl.store(t_b + stride_tc + al[:, None] * stride_tt,
                 carry[None, :] + (tl.cumsum(zp, 0, reverse=True) - comp[None, :]), mask=in_chunk)
        carry, comp = _kahan_add(carry, comp, tl.sum(zp, 0))


@triton.jit
def _tables_adjoint_kernel(DT, EXTRA, DZP, LENGTHS, L, H, dist,
                           stride_db, stride_dh, stride_dc, stride_dt, stride_eb, stride_et, stride_eh,
                           HAS_EXTRA: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr,
                           WIDE: tl.constexpr):
    """The adjoint of ``_tables_kernel``'s scans, one program per (chunk, conversation):
    ``dzp[k] = dT[2, k] (+ EXTRA[k]) + sum_{t >= k} dT[0, t] + sum_{t <= k} dT[1, t]`` over k's
    chunk, 0 beyond the length; dT (B, H, 3, L) and EXTRA (B, L, H) strided, DZP (B, L, H) float32.
    The backward scan of dS is written first, then the forward scan of dR added to it."""
    c = tl.program_id(0)
    b = tl.program_id(1)
    n = tl.load(LENGTHS + b).to(tl.int32)
    start = c * dist
    end = tl.minimum(start + dist, L)
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h[None, :] < H
    d_b = DT + b.to(tl.int64) * stride_db + addresses(offs_h, WIDE)[None, :] * stride_dh
    out_b = DZP + b.to(tl.int64) * L * H + offs_h[None, :]
    carry = tl.zeros([BLOCK_H], tl.float32)
    comp = tl.zeros([BLOCK_H], tl.float32)
    num_blocks = tl.cdiv(end - start, BLOCK_L)
    for r in range(0, num_blocks):
        offs_l = start + (num_blocks - 1 - r) * BLOCK_L + tl.arange(0, BLOCK_L)
        al = addresses(offs_l, WIDE)
        in_chunk = (offs_l[:, None] < end) & mask_h
        g = tl.load(d_b + al[:, None] * stride_dt, mask=in_chunk, other=0.0).to(tl.float32)
        tl.store(out_b + al[:, None] * H, carry[None, :] + (tl.cumsum(g, 0, reverse=True) - comp[None, :]),
                 mask=in_chunk)
        carry, comp = _kahan_add(carry, comp, tl.sum(g, 0))
    tl.debug_barrier()  # the partial sums just stored, read back below by other threads
    carry = tl.zeros([BLOCK_H], tl.float32)
    comp = tl.zeros([BLOCK_H], tl.float32)
    for l0 in range(start, end, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        al = addresses(offs_l, WIDE)
        in_chunk = (offs_l[:, None] < end) & mask_h
        g = tl.load(d_b + stride_dc + al[:, None] * stride_dt, mask=in_chunk, other=0.0).to(tl.float32)
        part = tl.load(out_b + al[:, None] * H, mask=in_chunk, other=0.0)
        dz = tl.load(d_b + 2 * stride_dc + al[:, None] * stride_dt, mask=in_chunk, other=0.0).to(tl.float32)
        total = part + dz + carry[None, :] + (tl.cumsum(g, 0) - comp[None, :])
        if HAS_EXTRA:
            e = tl.load(EXTRA + b.to(tl.int64) * stride_eb + al[:, None] * stride_et
                        + addresses(offs_h, WIDE)[None, :] * stride_eh, mask=in_chunk, other=0.0)
            total += e.to(tl.float32)
        tl.store(out_b + al[:, None] * H, tl.where(offs_l[:, None] < n, total, 0.0), mask=in_chunk)
        carry, comp = _kahan_add(carry, comp, tl.sum(g, 0))


# ----------------------------------------------------------------------------- launch parameters

def dot_precision(dtype: torch.dtype) -> str:
    """The ``input_precision`` of a ``tl.dot`` on inputs of ``dtype``: float32 on tensor cores
    with float32-level accuracy (3xTF32: each operand split into a TF32 head and tail, three
    products); ignored for 16-bit inputs (and by the interpreter, which multiplies in float32)."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def chunk(dist: int, L: int) -> int:
    """The chunk length for ``dist`` at length ``L``: ``dist`` itself, capped at ``max(L, 1)`` (a
    band at least as wide as the conversation is one chunk; also keeps it an int32)."""
    return max(1, min(int(dist), L))


def scan_meta(chunk_len: int, D: int | None, H: int) -> dict:
    """The constexprs of the scan kernels: a block of positions no longer than needed for a
    chunk (at least 16, tl.dot's minimum), D and H padded to powers of two."""
    meta = dict(BLOCK_L=max(16, min(64, triton.next_power_of_2(chunk_len))),
                BLOCK_H=max(16, triton.next_power_of_2(H)))
    if D is not None:
        meta["BLOCK_D"] = min(64, max(16, triton.next_power_of_2(D)))
    return meta


def _launch_tables(x: torch.Tensor, w: torch.Tensor | None, lengths: torch.Tensor, dist: int):
    """``(zp, T)`` float32, zp None when ``w`` is None (x is zp)."""
    B, L, D = x.shape
    H = D if w is None else w.shape[1]
    T = torch.empty(B, H, 3, L, device=x.device, dtype=torch.float32)
    zp = torch.empty(B, L, H, device=x.device, dtype=torch.float32) if w is not None else None
    if B == 0 or L == 0:
        return (zp.zero_() if zp is not None else None), T
    c = chunk(dist, L)
    meta = scan_meta(c, D if w is not None else None, H)
    if w is None:
        meta["BLOCK_D"] = 16  # unused
    wide = wide_offsets(x, w, zp, T)
    for b0, b1 in batch_slices(B, 1):  # the conversations on grid axis 1
        xs, zps, Ts, lens = sliced((x, zp if zp is not None else T, T, lengths), b0, b1, B)  # (w is not batched)
        launcher(_tables_kernel)[(triton.cdiv(L, c), b1 - b0)](
            xs, w if w is not None else xs, zps, Ts, lens, L, D, H, c,
            x.stride(0), x.stride(1), x.stride(2), *(w.stride() if w is not None else (0, 0)), *T.stride(),
            HAS_W=w is not None, DOT_PRECISION=dot_precision(x.dtype), WIDE=wide, **meta)
    return zp, T


def _launch_adjoint(dT: torch.Tensor, extra: torch.Tensor | None, lengths: torch.Tensor, dist: int) -> torch.Tensor:
    B, H, _, L = dT.shape
    dzp = torch.empty(B, L, H, device=dT.device, dtype=torch.float32)
    if B == 0 or L == 0:
        return dzp
    c = chunk(dist, L)
    e = extra if extra is not None else dzp
    wide = wide_offsets(dT, e, dzp)
    for b0, b1 in batch_slices(B, 1):  # the conversations on grid axis 1
        launcher(_tables_adjoint_kernel)[(triton.cdiv(L, c), b1 - b0)](
            *sliced((dT, e, dzp, lengths), b0, b1, B), L, H, c, *dT.stride(), *e.stride(),
            HAS_EXTRA=extra is not None, WIDE=wide, **scan_meta(c, None, H))
    return dzp


# ----------------------------------------------------------------------------- ops

@triton_op_or_custom("iteach_fast::ecce_tables_adjoint", mutates_args=())
def _adjoint_op(dT: torch.Tensor, extra: torch.Tensor | None, lengths: torch.Tensor, dist: int) -> torch.Tensor:
    """``dzp (B, L, H)`` float32 from the tables' gradient ``dT (B, H, 3, L)`` (plus ``extra``, a
    gradient of zp itself, if given), 0 beyond the lengths."""
    return _launch_adjoint(dT, extra, lengths, dist)


@triton_op_or_custom("iteach_fast::ecce_band_tables", mutates_args=())
def _tables_op(zp: torch.Tensor, lengths: torch.Tensor, dist: int) -> torch.Tensor:
    return _launch_tables(zp, None, lengths, dist)[1]


def _tables_setup(ctx, inputs, output):
    zp, lengths, dist = inputs
    ctx.save_for_backward(lengths)
    ctx.dist, ctx.zp_dtype = dist, zp.dtype


def _tables_backward(ctx, dT):
    (lengths,) = ctx.saved_tensors
    return torch.ops.iteach_fast.ecce_tables_adjoint(dT, None, lengths, ctx.dist).to(ctx.zp_dtype), None, None


_tables_op.register_autograd(_tables_backward, setup_context=_tables_setup)


@triton_op_or_custom("iteach_fast::ecce_prefix", mutates_args=())
def _prefix_op(z: torch.Tensor, w: torch.Tensor, lengths: torch.Tensor, dist: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_tables(z, w, lengths, dist)


def _prefix_setup(ctx, inputs, output):
    z, w, lengths, dist = inputs
    ctx.save_for_backward(z, w, lengths)
    ctx.dist = dist


def _prefix_backward(ctx, dzp, dT):
    z, w, lengths = ctx.saved_tensors
    B, L, _ = z.shape
    valid = (torch.arange(L, device=z.device) < lengths[:, None])[..., None]
    if dT is not None:  # the adjoint adds dzp and zeroes the padding
        g = torch.ops.iteach_fast.ecce_tables_adjoint(dT, dzp, lengths, ctx.dist)
    elif dzp is not None:
        g = torch.where(valid, dzp.float(), 0.0)
    else:
        return None, None, None, None
    zm = torch.where(valid, z.float(), 0.0)  # invalid rows of z did not take part
    dz = (g @ w.float().t()).to(z.dtype)
    dw = torch.einsum("bld,blh->dh", zm, g).to(w.dtype)
    return dz, dw, None, None


_prefix_op.register_autograd(_prefix_backward, setup_context=_prefix_setup)


def ecce_prefix(z: torch.Tensor, w: torch.Tensor, lengths: torch.Tensor, dist: int):
    """``(zp, T)``: ``zp = Z @ W`` (B, L, H) and its band tables ``T`` (B, H, 3, L), both float32,
    0 at positions ``>= lengths``; one kernel, differentiable in ``z`` and ``w`` (any strides)."""
    return torch.ops.iteach_fast.ecce_prefix(z, w, lengths, chunk(dist, z.shape[1]))


def band_tables(zp: torch.Tensor, lengths: torch.Tensor, dist: int) -> torch.Tensor:
    """The band tables ``T`` (B, H, 3, L) float32 of ``zp`` (B, L, H), differentiable in zp."""
    return torch.ops.iteach_fast.ecce_band_tables(zp, lengths, chunk(dist, zp.shape[1]))


def tables_adjoint(dT: torch.Tensor, lengths: torch.Tensor, dist: int) -> torch.Tensor:
    """``dzp`` (B, L, H) float32 from a gradient of the tables (for tests)."""
    return torch.ops.iteach_fast.ecce_tables_adjoint(dT, None, lengths, chunk(dist, dT.shape[-1]))

