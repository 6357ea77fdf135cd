"""Pure-PyTorch reference of every ITEACH-Net operator: the oracle the kernels are tested against.

Vectorised (prefix sums for the band means, pooling through torch's own ops; no Python
loop over positions), any device, any floating dtype. Half-precision inputs are computed
in float32 and cast back, float64 stays float64. Inputs are assumed validated
(:mod:`iteach_fast.ops` does that); ``lengths`` is an int64 tensor ``(B,)`` on the inputs'
device. Every output at an invalid position is exactly 0 and invalid positions never
influence valid ones (``torch.where``, not multiplication, so garbage such as inf in the
padding cannot leak through a ``0 * inf``).

See docs/maths.md for the maths.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .padding import masked_avg_pool, masked_max_pool, valid_mask, zero_invalid


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def band_prefix(zp: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Exclusive prefix sums ``P (B, L+1, H)`` of ``zp`` over valid positions, in the accumulation dtype."""
    B, L, H = zp.shape
    acc = zp.to(accumulation_dtype(zp.dtype))
    acc = torch.where(valid_mask(lengths, L)[..., None], acc, torch.zeros((), dtype=acc.dtype, device=acc.device))
    return F.pad(torch.cumsum(acc, dim=1), (0, 0, 1, 0))


def ecce_prefix(z: torch.Tensor, w: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(zp, P)``: ECCE's per-head projection ``zp = z @ w`` ``(B, L, H)``, 0 beyond ``lengths``,
    and its exclusive prefix sums ``P (B, L+1, H)``, both in the accumulation dtype."""
    acc = accumulation_dtype(z.dtype)
    valid = valid_mask(lengths, z.shape[1])[..., None]
    # padding zeroed before the product: whatever it holds (even NaN) then reaches no gradient of w
    zp = zero_invalid(z.to(acc), valid) @ w.to(acc)
    return zp, F.pad(torch.cumsum(zp, dim=1), (0, 0, 1, 0))


def ecce_bias(zp: torch.Tensor, lengths: torch.Tensor, dist: int) -> torch.Tensor:
    """ECCE's global bias ``E (B, H, L, L)`` (DESIGN eq. 6, Algorithm 1 with inclusive windows).

    ``E[b,h,i,j] = mean(zp[b, min(i,j)..max(i,j), h])`` for valid pairs with ``|i-j| < dist``,
    else 0, computed from prefix sums: ``(P[max+1] - P[min]) / (|i-j| + 1)``.
    """
    B, L, H = zp.shape
    P = band_prefix(zp, lengths)  # (B, L+1, H)
    idx = torch.arange(L, device=zp.device)
    lo = torch.minimum(idx[:, None], idx[None, :])
    hi = torch.maximum(idx[:, None], idx[None, :])
    width = (hi - lo + 1).to(P.dtype)  # (L, L)
    sums = P[:, (hi + 1).reshape(-1)] - P[:, lo.reshape(-1)]  # (B, L*L, H)
    E = (sums.reshape(B, L, L, H) / width[None, :, :, None]).permute(0, 3, 1, 2)
    valid = valid_mask(lengths, L)
    keep = (valid[:, :, None] & valid[:, None, :]) & ((hi - lo) < dist)[None]
    E = torch.where(keep[:, None], E, torch.zeros((), dtype=E.dtype, device=E.device))
    return E.to(zp.dtype)


def ecce_attention(q, k, v, zp, lengths, dist: int, scale: float) -> torch.Tensor:
    """ECCE-guided attention: ``softmax(q k^T * scale + E) v`` per head, keys beyond
    ``lengths`` excluded, rows beyond ``lengths`` (and whole length-0 conversations) 0."""
    B, H, L, Dh = q.shape
    dtype, acc = q.dtype, accumulation_dtype(q.dtype)
    valid = valid_mask(lengths, L)
    rows = valid[:, None, :, None]
    zero = torch.zeros((), dtype=acc, device=q.device)
    # zero the padding first: whatever it holds (even inf) then cannot reach a value or a gradient
    q, k, v = (torch.where(rows, t.to(acc), zero) for t in (q, k, v))
    E = ecce_bias(zp.to(acc), lengths, dist)
    S = torch.matmul(q, k.transpose(-1, -2)) * scale + E
    # A finite fill (not -inf): a length-0 row then softmaxes to a harmless uniform row,
    # which the output mask below zeroes, instead of to NaN.
    S = S.masked_fill(~valid[:, None, None, :], torch.finfo(acc).min)
    A = torch.softmax(S, dim=-1)
    return torch.where(rows, torch.matmul(A, v), zero).to(dtype)


def routed_mixture(logits, x, y_attn, y_mlp, lengths, pool_size: int) -> torch.Tensor:
    """Router-weighted mixture of the four token mixers (DESIGN eq. 8-9, Appendix C).

    ``w = softmax(logits)``; ``out = w0*y_attn + w1*y_mlp + w2*avgpool(x) + w3*maxpool(x)``,
    pools over ``[i - p//2, i + p//2]`` clipped to the valid positions. Max-pool ties route
    the gradient to the first (lowest) index of the window, as ``torch.max_pool1d`` does.
    """
    B, L, D = x.shape
    acc = accumulation_dtype(x.dtype)
    if x.numel() == 0:  # torch's pools reject empty inputs; the answer is empty (and differentiable)
        return (x + logits.sum(-1, keepdim=True) * 0 + y_attn * 0 + y_mlp * 0).to(x.dtype)
    valid = valid_mask(lengths, L)[..., None]  # (B, L, 1)
    zero = torch.zeros((), dtype=acc, device=x.device)
    xa = x.to(acc)
    avg = masked_avg_pool(xa, valid, pool_size)
    mx = masked_max_pool(xa, valid, pool_size)

    w = torch.softmax(torch.where(valid, logits.to(acc), zero), dim=-1)
    # mask every term before mixing: at invalid rows max-pool is -inf, and 0 * -inf is NaN
    terms = [torch.where(valid, t, zero) for t in (y_attn.to(acc), y_mlp.to(acc), avg, mx)]
    out = sum(w[..., o:o + 1] * t for o, t in enumerate(terms))
    return torch.where(valid, out, zero).to(x.dtype)
