"""Pure-PyTorch reference of every ITEACH-Net operator: the oracle the kernels are tested against.

Vectorised (chunk-local prefix sums for the band means, pooling through torch's own ops; no
Python loop over positions), any device, any floating dtype. Half-precision inputs are
computed in float32 and cast back, float64 stays float64. Inputs are assumed validated
(:mod:`iteach_fast.ops` does that); ``lengths`` is an int64 tensor ``(B,)`` on the inputs'
device. Every output at an invalid position is exactly 0 and invalid positions never
influence valid ones (``torch.where``, not multiplication, so garbage such as inf in the
padding cannot leak through a ``0 * inf``).

Each function takes its op's arguments as ``iteach_fast.ops.backends.SIGNATURES`` states
them, and nothing else: no hook for the code under test. See docs/maths.md for the maths,
and its "Local numerics" section for the prefix table.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .padding import accumulation_dtype, masked_avg_pool, masked_max_pool, prefix_table, valid_mask, zero_invalid

__all__ = ["band_means", "ecce_prefix", "ecce_bias", "ecce_attention",
           "routed_mixture"]


def band_means(prefix: torch.Tensor, dist: int, causal: bool, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """``E (B, H, L, L)`` in ``prefix``'s dtype: ``mean(zp[min(i,j)..max(i,j)])`` for pairs with
    ``|i-j| < dist`` (and ``j <= i`` if ``causal``), else 0; with ``lengths``, also 0 unless
    both ``i`` and ``j`` are valid (the attention masks its keys itself).

    Built from broadcast differences of the table (no gather, whose backward is a slow
    ``index_put``): for ``j <= i``, ``sum zp[j..i] = S[i] + (zp[j] - S[j])`` when ``i`` and ``j``
    share a chunk, ``S[i] + R[j]`` when ``j`` lies in the chunk before. Pairs further apart are
    masked with ``torch.where``, so whatever their formula gives (even NaN) reaches nothing.
    """
    S, R, zp = prefix.unbind(2)  # (B, H, L) each
    L = S.shape[-1]
    idx = torch.arange(L, device=prefix.device)
    offset = idx[:, None] - idx[None, :]  # i - j
    chunk = idx // dist
    lower = torch.where(chunk[:, None] == chunk[None, :], (zp - S)[..., None, :], R[..., None, :]) + S[..., :, None]
    band = (offset < dist) & ((offset >= 0) if causal else (offset > -dist))
    if lengths is not None:
        valid = valid_mask(lengths, L)
        band = band & valid[:, None, :, None] & valid[:, None, None, :]
    sums = lower if causal else torch.where(offset >= 0, lower, lower.transpose(-1, -2))
    inverse_width = 1 / (offset.abs() + 1).to(prefix.dtype)
    return torch.where(band, sums, torch.zeros((), dtype=prefix.dtype, device=prefix.device)) * inverse_width


def _oom_hint(err: Exception, what: str, shape: tuple) -> Exception:
    """The out-of-memory error of a materialised ``L x L`` tensor, saying so and what avoids it."""
    B, H, L = shape
    gib = B * H * L * L * 4 / 2**30
    return torch.OutOfMemoryError(
        f"reference {what}: out of memory materialising a B x H x L x L = {B} x {H} x {L} x {L} bias "
        f"(~{gib:.1f} GiB per float32 copy). At this length use backend='triton' on a CUDA device, which "
        f"never materialises it, or shorter conversations. ({err})")


def _exact(device: torch.device):
    """Autocast off: the reference computes in the accumulation dtype it chose, whatever the caller's autocast."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _is_oom(err: RuntimeError) -> bool:
    # CUDA raises torch.OutOfMemoryError; the CPU allocator a plain RuntimeError
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


def ecce_prefix(z: torch.Tensor, w: torch.Tensor, lengths: torch.Tensor, dist: int):
    """``(zp, prefix)``: ECCE's per-head projection ``zp = z @ w`` ``(B, L, H)``, 0 beyond
    ``lengths``, and its band-mean table ``(B, H, 3, L)`` (:func:`prefix_table`), both in the
    accumulation dtype."""
    acc = accumulation_dtype(z.dtype)
    valid = valid_mask(lengths, z.shape[1])[..., None]
    # padding zeroed before the product: whatever it holds (even NaN) then reaches no gradient of w
    zp = zero_invalid(z.to(acc), valid) @ w.to(acc)
    return zp, prefix_table(zp, dist)


def ecce_bias(zp: torch.Tensor, lengths: torch.Tensor, dist: int, causal: bool = False) -> torch.Tensor:
    """ECCE's global bias ``E (B, H, L, L)`` (docs/maths.md, eq. 6 / Algorithm 1 with inclusive windows):
    ``E[b,h,i,j] = mean(zp[b, min(i,j)..max(i,j), h])`` for valid pairs with ``|i-j| < dist``
    (and ``j <= i`` if ``causal``), else 0."""
    B, L, H = zp.shape
    acc = zero_invalid(zp.to(accumulation_dtype(zp.dtype)), valid_mask(lengths, L)[..., None])
    try:
        with _exact(zp.device):
            return band_means(prefix_table(acc, dist), dist, causal, lengths).to(zp.dtype)
    except RuntimeError as err:
        if _is_oom(err):
            raise _oom_hint(err, "ecce_bias", (B, H, L)) from err
        raise


def ecce_attention(q, k, v, prefix, lengths, dist: int, scale: float, causal: bool) -> torch.Tensor:
    """ECCE-guided attention: ``softmax(q k^T * scale + E) v`` per head, ``E`` the band means of
    ``prefix`` (no bias when ``prefix`` is None); keys beyond ``lengths`` (and, if ``causal``,
    after the query) excluded, rows beyond ``lengths`` (and whole length-0 conversations) 0."""
    B, H, L, _ = q.shape
    try:
        with _exact(q.device):
            return _attention(q, k, v, prefix, lengths, dist, scale, causal)
    except RuntimeError as err:
        if _is_oom(err):
            raise _oom_hint(err, "ecce_attention", (B, H, L)) from err
        raise


def _attention(q, k, v, prefix, lengths, dist, scale, causal):
    L = q.shape[2]
    acc = accumulation_dtype(q.dtype)
    out = torch.empty_like(q)
    valid = valid_mask(lengths, L)
    rows = valid[:, None, :, None]
    zero = torch.zeros((), dtype=acc, device=q.device)
    # zero the padding first: whatever it holds (even inf) then cannot reach a value or a gradient
    q, k, v = (torch.where(rows, t.to(acc), zero) for t in (q, k, v))
    keys = valid[:, None, None, :]
    if causal:
        idx = torch.arange(L, device=q.device)
        keys = keys & (idx[None, :] <= idx[:, None])
    # A finite fill (not -inf): a length-0 row then softmaxes to a harmless uniform row,
    # which the output mask below zeroes, instead of to NaN.
    fill = torch.finfo(acc).min
    if prefix is None:  # no bias: PyTorch's own attention, the key mask as an additive bias
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.where(keys, zero, fill), scale=scale)
    else:  # E + scale * q k^T in one pass
        E = band_means(prefix.to(acc), dist, causal)
        S = torch.baddbmm(E.flatten(0, 1), q.flatten(0, 1), k.flatten(0, 1).transpose(-1, -2), alpha=scale)
        S = S.view(E.shape).masked_fill(~keys, torch.finfo(S.dtype).min)  # S's dtype: half under autocast
        o = torch.matmul(torch.softmax(S, dim=-1), v)
    # written into q's layout (the contract: out.transpose(1, 2) of a (B, L, H, Dh) view is contiguous)
    return out.copy_(torch.where(rows, o, zero))


def routed_mixture(logits, x, y_attn, y_mlp, lengths, pool_size: int, causal: bool = False) -> torch.Tensor:
    """Router-weighted mixture of the four token mixers (docs/maths.md, eq. 8-9, Appendix C).

    ``w = softmax(logits)``; ``out = w0*y_attn + w1*y_mlp + w2*avgpool(x) + w3*maxpool(x)``,
    pools over ``[i - p//2, i + p//2]`` (``[i - p + 1, i]`` if ``causal``) clipped to the
    valid positions. Max-pool ties route the gradient to the first (lowest) index of the
    window, as ``torch.max_pool1d`` does.
    """
    acc = accumulation_dtype(x.dtype)
    if x.numel() == 0:  # torch's pools reject empty inputs; the answer is empty (and differentiable)
        return (x + logits.sum(-1, keepdim=True) * 0 + y_attn * 0 + y_mlp * 0).to(x.dtype)
    valid = valid_mask(lengths, x.shape[1])[..., None]  # (B, L, 1)
    zero = torch.zeros((), dtype=acc, device=x.device)
    xa = x.to(acc)
    avg = masked_avg_pool(xa, valid, pool_size, causal)
    mx = masked_max_pool(xa, valid, pool_size, causal)

    w = torch.softmax(torch.where(valid, logits.to(acc), zero), dim=-1)
    # mask every term before mixing: at invalid rows max-pool is -inf, and 0 * -inf is NaN
    terms = [torch.where(valid, t, zero) for t in (y_attn.to(acc), y_mlp.to(acc), avg, mx)]
    out = sum(w[..., o:o + 1] * t for o, t in enumerate(terms))
    return torch.where(valid, out, zero).to(x.dtype)
