"""ECCE's band bias, tile by tile: the ``triton.jit`` helpers the attention and bias kernels share.

ECCE's bias (``docs/maths.md``, "ECCE") is the band mean of ``zp``: for a pair with ``|i - j| < dist``
(causal: ``0 <= i - j < dist``) the mean of ``zp[lo..hi]``, ``lo = min(i, j)``, ``hi = max(i, j)``.
It is read from the chunk-local tables ``T (B, H, 3, L)`` that ``iteach_fast.kernels.scan`` builds
(chunks of ``dist`` positions, ``c(t) = t // dist``)::

    T[0, t] = S[t] = sum zp[c(t)*dist .. t]        T[1, t] = R[t] = sum zp[t .. end of c(t)]
    T[2, t] = zp[t]

A band pair spans at most two chunks, so ``sum zp[lo..hi] = S[hi] + (zp[lo] - S[lo])`` when
``c(lo) == c(hi)`` and ``S[hi] + R[lo]`` otherwise: a tile needs three table vectors per row and
per column, no gather. A NaN or a huge value in ``zp[k]`` reaches only the sums whose window
holds ``k`` (or, for rounding, shares a chunk with it). Outside the band the bias is 0, chosen by
``tl.where`` (never multiplied: the off-band formula may read a NaN it must not spread).

Gradient: with ``G = dE / (hi - lo + 1)`` on the band, ``dS[hi] += G`` and at ``lo`` either
``dS[lo] -= G, dzp[lo] += G`` (one chunk) or ``dR[lo] += G`` (two chunks). The kernels
sum these along the rows of a tile (``band_grads``) into ``(dS, dR, dzp)``; a kernel that owns keys
works on transposed tiles (keys as rows), so every sum runs along rows.

    band_tile(T_bh, stride_c, stride_t, offs_r, offs_c, n, dist, CAUSAL, Q_ROWS)  -> the E tile (or its transpose)
    band_grads(dE, offs_r, offs_c, n, dist, CAUSAL, Q_ROWS)  -> (dS, dR, dzp) of the tile's rows
    touches_band(m0, n0, BLOCK_M, BLOCK_N, dist)  -> whether a tile holds a band pair
    addresses(offs, WIDE)                          -> positions as they multiply a stride (int64 if WIDE)
    LOG2E                                          log2(e), a ``tl.constexpr``
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["LOG2E", "addresses", "band_tile", "band_grads", "touches_band"]

# the softmax runs in base 2 (exp2 is the cheap instruction); a tl.constexpr, as every global
# a jit function reads must be to compile for a GPU
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _table_vectors(T_bh, stride_c, stride_t, offs, n):
    """``S``, ``R`` and ``zp - S`` at ``offs`` (0 beyond ``n``)."""
    valid = offs < n
    s = tl.load(T_bh + offs * stride_t, mask=valid, other=0.0)
    r = tl.load(T_bh + stride_c + offs * stride_t, mask=valid, other=0.0)
    z = tl.load(T_bh + 2 * stride_c + offs * stride_t, mask=valid, other=0.0)
    return s, r, z - s


@triton.jit
def _band_masks(offs_r, offs_c, n, dist, CAUSAL: tl.constexpr, Q_ROWS: tl.constexpr):
    """For a tile with positions ``offs_r`` as rows and ``offs_c`` as columns (queries as rows if
    ``Q_ROWS``, else keys): ``keep`` (valid band pairs), ``row_hi`` (the row is the pair's later
    end; on the diagonal the query is), ``same`` (one chunk) and ``1 / (|i-j| + 1)``."""
    diff = offs_r[:, None] - offs_c[None, :]
    width = tl.abs(diff)
    keep = (offs_r[:, None] < n) & (offs_c[None, :] < n) & (width < dist)
    if Q_ROWS:
        row_hi = diff >= 0
    else:
        row_hi = diff > 0
    if CAUSAL:  # keys up to the query only
        if Q_ROWS:
            keep = keep & (diff >= 0)
        else:
            keep = keep & (diff <= 0)
    same = (offs_r // dist)[:, None] == (offs_c // dist)[None, :]
    return keep, row_hi, same, 1.0 / (width + 1).to(tl.float32)


@triton.jit
def band_tile(T_bh, stride_c, stride_t, offs_r, offs_c, n, dist, CAUSAL: tl.constexpr, Q_ROWS: tl.constexpr):
    """The bias tile of one (batch, head) from its tables ``T_bh``: ``E[offs_r, offs_c]`` with
    queries as rows (``Q_ROWS``), or its transpose with keys as rows (E is symmetric; only the
    causal mask tells the two apart)."""
    keep, row_hi, same, inv_w = _band_masks(offs_r, offs_c, n, dist, CAUSAL, Q_ROWS)
    s_r, r_r, u_r = _table_vectors(T_bh, stride_c, stride_t, offs_r, n)
    s_c, r_c, u_c = _table_vectors(T_bh, stride_c, stride_t, offs_c, n)
    if CAUSAL and Q_ROWS:  # the row is always the later end
        total = s_r[:, None] + tl.where(same, u_c[None, :], r_c[None, :])
    elif CAUSAL:  # the row is always the earlier end
        total = s_c[None, :] + tl.where(same, u_r[:, None], r_r[:, None])
    else:
        total = tl.where(row_hi, s_r[:, None] + tl.where(same, u_c[None, :], r_c[None, :]),
                         s_c[None, :] + tl.where(same, u_r[:, None], r_r[:, None]))
    return tl.where(keep, total * inv_w, 0.0)


@triton.jit
def band_grads(dE, offs_r, offs_c, n, dist, CAUSAL: tl.constexpr, Q_ROWS: tl.constexpr):
    """``(dS, dR, dzp)`` of the tables at the rows of a tile (laid out as in ``band_tile``), from
    the gradient ``dE`` of its bias, summed along the rows. The masks are recomputed rather than
    kept from ``band_tile``: fewer tiles live across the matmuls in between."""
    keep, row_hi, same, inv_w = _band_masks(offs_r, offs_c, n, dist, CAUSAL, Q_ROWS)
    G = tl.where(keep, dE * inv_w, 0.0)
    if CAUSAL and Q_ROWS:  # the row is always the later end: S only
        d_s = tl.sum(G, 1)
        return d_s, tl.zeros_like(d_s), tl.zeros_like(d_s)
    if CAUSAL:  # the row is always the earlier end
        lo_same = tl.sum(tl.where(same, G, 0.0), 1)
        return -lo_same, tl.sum(tl.where(same, 0.0, G), 1), lo_same
    lo_same = tl.sum(tl.where(same & (~row_hi), G, 0.0), 1)
    lo_next = tl.sum(tl.where(same | row_hi, 0.0, G), 1)
    return tl.sum(tl.where(row_hi, G, 0.0), 1) - lo_same, lo_next, lo_same


@triton.jit
def touches_band(m0, n0, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, dist):
    """Whether tile rows [m0, m0+BLOCK_M) x cols [n0, n0+BLOCK_N) holds a pair with |i-j| < dist."""
    gap = tl.maximum(n0 - (m0 + BLOCK_M - 1), m0 - (n0 + BLOCK_N - 1))
    return gap < dist


@triton.jit
def addresses(offs, WIDE: tl.constexpr):
    """``offs`` as it multiplies a stride: int64 in a kernel's ``WIDE`` variant (an element offset
    can pass 2**31 - 1: ``iteach_fast.kernels._compat.wide_offsets``), else as it is (int32
    arithmetic: fewer registers). The scalar batch and head offsets are int64 in both."""
    if WIDE:
        offs = offs.to(tl.int64)
    return offs
