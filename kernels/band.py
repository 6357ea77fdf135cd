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

Gradient: with ``G = dE / (hi - lo + 1)`` on the band, ``S[hi] += G`` and, at ``lo``, ``zp -= S``
terms (same chunk: ``S[lo] -= G``, ``zp[lo] += G``) or ``R[lo] += G`` (next chunk). The kernels
sum these along rows and down columns (``band_grads``) into ``(dS, dR, dzp)``.

    band_tile(T_bh, stride_c, stride_t, offs_i, offs_j, n, dist, CAUSAL)  -> the E tile
    band_grads(dE, offs_i, offs_j, n, dist, CAUSAL, ROWS)  -> (dS, dR, dzp) of the tile's rows or columns
    touches_band(m0, n0, BLOCK_M, BLOCK_N, dist)  -> whether a tile holds a band pair
    LOG2E                                          log2(e), a ``tl.constexpr``
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["LOG2E", "band_tile", "band_grads", "touches_band"]

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
def _band_masks(offs_i, offs_j, n, dist, CAUSAL: tl.constexpr):
    """``keep`` (valid band pairs), ``lower`` (i >= j), ``same`` (one chunk) and ``1 / (|i-j| + 1)``."""
    diff = offs_i[:, None] - offs_j[None, :]
    width = tl.abs(diff)
    keep = (offs_i[:, None] < n) & (offs_j[None, :] < n) & (width < dist)
    lower = diff >= 0
    if CAUSAL:
        keep = keep & lower
    same = (offs_i // dist)[:, None] == (offs_j // dist)[None, :]
    return keep, lower, same, 1.0 / (width + 1).to(tl.float32)


@triton.jit
def band_tile(T_bh, stride_c, stride_t, offs_i, offs_j, n, dist, CAUSAL: tl.constexpr):
    """The bias tile ``E[offs_i, offs_j]`` of one (batch, head) from its tables ``T_bh``."""
    keep, lower, same, inv_w = _band_masks(offs_i, offs_j, n, dist, CAUSAL)
    s_i, r_i, u_i = _table_vectors(T_bh, stride_c, stride_t, offs_i, n)
    s_j, r_j, u_j = _table_vectors(T_bh, stride_c, stride_t, offs_j, n)
    # i is the later end (hi) on and below the diagonal, j above it
    total = s_i[:, None] + tl.where(same, u_j[None, :], r_j[None, :])
    if not CAUSAL:
        total = tl.where(lower, total, s_j[None, :] + tl.where(same, u_i[:, None], r_i[:, None]))
    return tl.where(keep, total * inv_w, 0.0)


@triton.jit
def band_grads(dE, offs_i, offs_j, n, dist, CAUSAL: tl.constexpr, ROWS: tl.constexpr):
    """``(dS, dR, dzp)`` of the tables at the rows (``ROWS``) or the columns of a tile, from the
    gradient ``dE`` of its bias. The masks are recomputed rather than kept from ``band_tile``:
    fewer tiles live across the matmuls in between. A row is the later end of its pairs at and
    below the diagonal and the earlier end above it; a column the other way round."""
    keep, lower, same, inv_w = _band_masks(offs_i, offs_j, n, dist, CAUSAL)
    G = tl.where(keep, dE * inv_w, 0.0)
    if CAUSAL and ROWS:  # a row is never the earlier end
        d_s = tl.sum(G, 1)
        return d_s, tl.zeros_like(d_s), tl.zeros_like(d_s)
    if ROWS:
        hi_end = lower
    else:
        hi_end = ~lower
    lo_same = _sum(tl.where(same & (~hi_end), G, 0.0), ROWS)
    lo_next = _sum(tl.where(same | hi_end, 0.0, G), ROWS)
    if CAUSAL:  # a column is never the later end
        return -lo_same, lo_next, lo_same
    return _sum(tl.where(hi_end, G, 0.0), ROWS) - lo_same, lo_next, lo_same


@triton.jit
def _sum(x, ROWS: tl.constexpr):
    if ROWS:
        return tl.sum(x, 1)
    return tl.sum(x, 0)


@triton.jit
def touches_band(m0, n0, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, dist):
    """Whether tile rows [m0, m0+BLOCK_M) x cols [n0, n0+BLOCK_N) holds a pair with |i-j| < dist."""
    gap = tl.maximum(n0 - (m0 + BLOCK_M - 1), m0 - (n0 + BLOCK_N - 1))
    return gap < dist
