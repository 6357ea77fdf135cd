"""The unchecked twins of the public ops: dispatch only, for code that validated its inputs once.

    ecce_prefix(z, w_fc, lengths, dist, backend)                                  -> (zp, prefix)
    ecce_bias(zp, lengths, dist, causal, backend)                                 -> E (B, H, L, L)
    ecce_attention(q, k, v, prefix, lengths, dist, scale, causal, backend)        -> out (B, H, L, Dh)
    routed_mixture(logits, x, y_attn, y_mlp, lengths, pool_size, causal, backend) -> out (B, L, D)

Every argument is positional and required, nothing is checked and nothing synchronises with
the device: ``lengths`` is an int64 ``(B,)`` tensor on the inputs' device with values in
``[0, L]``, ``dist`` / ``pool_size`` ints as :mod:`iteach_fast.ops` accepts them, ``scale``
a float, ``causal`` a bool, ``prefix`` a table from ``ecce_prefix`` with the same lengths
and dist (or None: no ECCE bias). The modules and the model call these after validating at
the model's boundary; users call :mod:`iteach_fast.ops`, which validates and then calls these.
The backend is picked by :func:`iteach_fast.backends.select` (dict reads after the first call).
"""
from __future__ import annotations

import torch

from .backends import select

__all__ = ["ecce_prefix", "ecce_bias", "ecce_attention", "routed_mixture"]


def ecce_prefix(z: torch.Tensor, w_fc: torch.Tensor, lengths: torch.Tensor, dist: int, backend: str):
    return select("ecce_prefix", backend, z.device, z.dtype).load()(z, w_fc, lengths, dist)


def ecce_bias(zp: torch.Tensor, lengths: torch.Tensor, dist: int, causal: bool, backend: str) -> torch.Tensor:
    return select("ecce_bias", backend, zp.device, zp.dtype, causal).load()(zp, lengths, dist, causal)


def ecce_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: torch.Tensor | None,
                   lengths: torch.Tensor, dist: int, scale: float, causal: bool, backend: str) -> torch.Tensor:
    fn = select("ecce_attention", backend, q.device, q.dtype, causal).load()
    return fn(q, k, v, prefix, lengths, dist, scale, causal)


def routed_mixture(logits: torch.Tensor, x: torch.Tensor, y_attn: torch.Tensor, y_mlp: torch.Tensor,
                   lengths: torch.Tensor, pool_size: int, causal: bool, backend: str) -> torch.Tensor:
    fn = select("routed_mixture", backend, x.device, x.dtype, causal).load()
    return fn(logits, x, y_attn, y_mlp, lengths, pool_size, causal)
