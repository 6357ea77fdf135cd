"""Primitives for padded, ragged batches: which positions are valid, zeroing the rest, the
masked pools of the NAS token mixers, and the layout of ECCE's band table (:func:`prefix_table`,
the operator contract's ``prefix``: every backend builds or reads this one layout).

Position ``i`` of conversation ``b`` is valid iff ``i < lengths[b]``. Masking uses
``torch.where``, never multiplication: garbage (even inf or NaN) in the padding then cannot
leak through a ``0 * inf``. Nothing here builds a tensor from host data (``torch.tensor``): inside
a training step that is a host-to-device copy, which synchronises and cannot be graph-captured.
Shared by the reference operators and the modules.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["valid_mask", "zero_invalid", "masked_avg_pool", "masked_max_pool", "accumulation_dtype", "prefix_table"]


def valid_mask(lengths: torch.Tensor, L: int) -> torch.Tensor:
    """``(B, L)`` bool: position ``i`` of conversation ``b`` is valid iff ``i < lengths[b]``."""
    return torch.arange(L, device=lengths.device) < lengths[:, None]


def zero_invalid(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``x`` where ``valid`` (broadcast), exactly 0 elsewhere."""
    return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _clip(pool_size: int, L: int) -> int:
    """A window wider than ``2L - 1`` sees the same positions as one of ``2L - 1`` (odd, as the
    centred window needs): clipping keeps a huge ``pool_size`` from padding by as much."""
    return min(pool_size, max(1, 2 * L - 1))


def _window(t: torch.Tensor, pool_size: int, causal: bool, value: float) -> torch.Tensor:
    """``t (B, C, L)`` padded with ``value`` so that a stride-1 pool of ``pool_size`` (already
    clipped) without padding covers ``[i - p//2, i + p//2]`` (``[i - p + 1, i]`` if ``causal``)
    at output ``i``."""
    left = pool_size - 1 if causal else pool_size // 2
    return F.pad(t, (left, pool_size - 1 - left), value=value)


def masked_avg_pool(x: torch.Tensor, valid: torch.Tensor, pool_size: int, causal: bool = False) -> torch.Tensor:
    """Mean of ``x (B, L, D)`` over ``[i - p//2, i + p//2]`` (``[i - p + 1, i]`` if ``causal``)
    clipped to the valid positions (``valid (B, L, 1)`` bool), in ``x``'s dtype. Values at
    invalid rows are unspecified (finite); callers mask them."""
    pool_size = _clip(pool_size, x.shape[1])
    xs = _window(zero_invalid(x, valid).transpose(1, 2), pool_size, causal, 0.0)  # (B, D, L + p - 1)
    window_sum = F.avg_pool1d(xs, pool_size, stride=1) * pool_size
    ones = _window(valid.to(x.dtype).transpose(1, 2), pool_size, causal, 0.0)  # (B, 1, L + p - 1)
    window_count = F.avg_pool1d(ones, pool_size, stride=1) * pool_size
    return (window_sum / window_count.clamp_min(1)).transpose(1, 2)


def masked_max_pool(x: torch.Tensor, valid: torch.Tensor, pool_size: int, causal: bool = False) -> torch.Tensor:
    """Max of ``x (B, L, D)`` over ``[i - p//2, i + p//2]`` (``[i - p + 1, i]`` if ``causal``)
    clipped to the valid positions (``valid (B, L, 1)`` bool). Invalid rows are ``-inf``;
    callers mask them. Ties route the gradient to the first (lowest) index of the window, as
    ``torch.max_pool1d`` does."""
    pool_size = _clip(pool_size, x.shape[1])
    # -inf as a scalar: filled on the device, never a host tensor copied in (a CUDA graph cannot hold that copy)
    xm = torch.where(valid, x, float("-inf")).transpose(1, 2)
    return F.max_pool1d(_window(xm, pool_size, causal, float("-inf")), pool_size, stride=1).transpose(1, 2)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def prefix_table(zp: torch.Tensor, dist: int) -> torch.Tensor:
    """The band-mean table ``(B, H, 3, L)`` of ``zp (B, L, H)`` (already 0 beyond the lengths),
    in ``zp``'s dtype: sums that restart every ``dist`` positions (docs/maths.md, "Local numerics")

        [:, :, 0, t] = S[t] = sum zp[chunk start .. t]      [:, :, 1, t] = R[t] = sum zp[t .. chunk end]
        [:, :, 2, t] = zp[t]
    """
    B, L, H = zp.shape
    width = max(1, min(dist, L))  # a band wider than L: one chunk
    chunks = -(-L // width)
    x = torch.nn.functional.pad(zp.transpose(1, 2), (0, chunks * width - L)).reshape(B, H, chunks, width)
    S = x.cumsum(-1)
    R = x.flip(-1).cumsum(-1).flip(-1)  # summed from the chunk's end: each entry sees only its own chunk
    return torch.stack((S, R, x), dim=2).reshape(B, H, 3, chunks * width)[..., :L]
