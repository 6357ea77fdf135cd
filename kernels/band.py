"""ECCE's band bias, tile by tile: the ``triton.jit`` helpers the attention and bias kernels share.

ECCE's bias (``docs/maths.md``, "ECCE", eq. 6) is a band mean of ``Zp = Z @ W``, computed from
its exclusive prefix sums ``P[t] = sum_{k<t} Zp[k]`` (see ``iteach_fast.kernels.scan``).
The bias of a pair (i, j) inside the band ``|i - j| < dist`` is the band mean
``(P[max(i,j)+1] - P[min(i,j)]) / (|i-j| + 1)``: for ``i >= j`` that is ``P[i+1] - P[j]``, for
``i < j`` it is ``P[j+1] - P[i]``, so a tile needs four vectors of P (two per row, two per
column) and no gather. Outside the band the bias is 0 (not -inf), so attention still visits
every valid key block; only the tiles that touch the band compute the bias.

    band_weights(offs_i, offs_j, n, dist)                 -> (1/(|i-j|+1) on the band else 0, i >= j)
    band_bias(P_bh, stride_pt, offs_i, offs_j, n, dist)   -> (E tile, its band weights, i >= j)
    touches_band(m0, n0, BLOCK_M, BLOCK_N, dist)          -> whether a tile holds a band pair
    LOG2E                                                 log2(e), a ``tl.constexpr``
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["LOG2E", "band_weights", "band_bias", "touches_band"]

# the softmax runs in base 2 (exp2 is the cheap instruction); a tl.constexpr, as every global
# a jit function reads must be to compile for a GPU
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def band_weights(offs_i, offs_j, n, dist):
    """``1/(|i-j|+1)`` on the band among valid pairs, else 0; and which pairs have ``i >= j``."""
    diff = offs_i[:, None] - offs_j[None, :]
    width = tl.abs(diff)
    keep = (width < dist) & (offs_i[:, None] < n) & (offs_j[None, :] < n)
    inv_w = tl.where(keep, 1.0 / (width + 1).to(tl.float32), 0.0)
    return inv_w, diff >= 0


@triton.jit
def band_bias(P_bh, stride_pt, offs_i, offs_j, n, dist):
    """The bias tile E[offs_i, offs_j] from the prefix sums ``P_bh`` of one (batch, head)."""
    vi = offs_i < n
    vj = offs_j < n
    p_i1 = tl.load(P_bh + (offs_i + 1) * stride_pt, mask=vi, other=0.0)
    p_i = tl.load(P_bh + offs_i * stride_pt, mask=vi, other=0.0)
    p_j1 = tl.load(P_bh + (offs_j + 1) * stride_pt, mask=vj, other=0.0)
    p_j = tl.load(P_bh + offs_j * stride_pt, mask=vj, other=0.0)
    inv_w, lower = band_weights(offs_i, offs_j, n, dist)
    total = tl.where(lower, p_i1[:, None] - p_j[None, :], p_j1[None, :] - p_i[:, None])
    return total * inv_w, inv_w, lower


@triton.jit
def touches_band(m0, n0, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, dist):
    """Whether tile rows [m0, m0+BLOCK_M) x cols [n0, n0+BLOCK_N) holds a pair with |i-j| < dist."""
    gap = tl.maximum(n0 - (m0 + BLOCK_M - 1), m0 - (n0 + BLOCK_N - 1))
    return gap < dist
