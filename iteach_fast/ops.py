"""The public operators: validation, then dispatch to a backend (docs/maths.md gives the maths).

    ecce_prefix(z, w_fc, lengths=None, backend="auto")                        -> (zp, P) (B, L, H), (B, L+1, H)
    ecce_bias(zp, lengths=None, dist=30, backend="auto")                      -> E   (B, H, L, L)
    ecce_attention(q, k, v, zp, lengths=None, dist=30, scale=None, backend="auto") -> out (B, H, L, Dh)
    routed_mixture(logits, x, y_attn, y_mlp, lengths=None, pool_size=3, backend="auto") -> out (B, L, D)

Backends: ``"reference"`` (pure PyTorch, the oracle), ``"triton"`` (K1), ``"cpp"`` (K2, the
compiled extension), ``"auto"`` (the most preferred one that runs on the inputs' device
and dtype; see ``iteach_fast.backends``). Bad input raises ``ValueError`` / ``TypeError``
naming the argument.
"""
from __future__ import annotations

import math

import torch

from . import backends
from .backends import BackendUnavailable  # noqa: F401  (re-exported)

__all__ = ["ecce_prefix", "ecce_bias", "ecce_attention", "routed_mixture", "check_lengths", "BackendUnavailable"]


def _check_tensor(name: str, t, ndim: int, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {layout}, got shape {tuple(t.shape)}")


def _check_same(named: dict[str, torch.Tensor]) -> None:
    (first, t0), *rest = named.items()
    for name, t in rest:
        if t.device != t0.device:
            raise ValueError(f"{name} is on {t.device} but {first} is on {t0.device}; all inputs must share a device")
        if t.dtype != t0.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first} has {t0.dtype}; all inputs must share a dtype")


def _check_dims(name: str, t: torch.Tensor, expected: dict[int, tuple[str, int]]) -> None:
    for dim, (what, size) in expected.items():
        if t.shape[dim] != size:
            raise ValueError(f"{name} has {what} = {t.shape[dim]} (shape {tuple(t.shape)}), expected {size}")


def check_lengths(lengths, B: int, L: int, device: torch.device) -> torch.Tensor:
    """``lengths`` as int64 ``(B,)`` on ``device``; None means every conversation has length L."""
    if lengths is None:
        return torch.full((B,), L, dtype=torch.int64, device=device)
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor of shape ({B},), got dtype {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},) (one length per conversation), got {tuple(lengths.shape)}")
    lengths = lengths.to(device=device, dtype=torch.int64)
    # a data-dependent check: skipped while torch.compile traces (it would break the graph)
    if B and not torch.compiler.is_compiling():
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > L:
            raise ValueError(f"lengths must lie in [0, L={L}], got values in [{lo}, {hi}]")
    return lengths


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def ecce_prefix(z: torch.Tensor, w_fc: torch.Tensor, lengths=None, backend: str = "auto"):
    """ECCE's projection and its prefix sums in one pass: ``zp = z @ w_fc`` ``(B, L, H)`` (0 beyond
    ``lengths``) and ``P[t] = sum_{k<t} zp[k]`` ``(B, L+1, H)``, both in float32 (float64 for
    float64 inputs). ``z``: ``(B, L, D)``, ``w_fc``: ``(D, H)`` (``nn.Linear(D, H).weight.T``)."""
    _check_tensor("z", z, 3, "(B, L, D)")
    _check_tensor("w_fc", w_fc, 2, "(D, H)")
    _check_same({"z": z, "w_fc": w_fc})
    B, L, D = z.shape
    _check_dims("w_fc", w_fc, {0: ("input dim", D)})
    lengths = check_lengths(lengths, B, L, z.device)
    return backends.select("ecce_prefix", backend, z.device, z.dtype).load()(z, w_fc, lengths)


def ecce_bias(zp: torch.Tensor, lengths=None, dist: int = 30, backend: str = "auto") -> torch.Tensor:
    """ECCE's global context-changing bias ``E (B, H, L, L)`` from the projected local context
    ``zp (B, L, H)``: the mean of ``zp`` over ``min(i,j)..max(i,j)`` for valid pairs within
    ``|i-j| < dist``, else 0. Materialises ``L x L``: for inspection and heatmaps."""
    _check_tensor("zp", zp, 3, "(B, L, H)")
    B, L, _ = zp.shape
    dist = _check_int("dist", dist, 1)
    lengths = check_lengths(lengths, B, L, zp.device)
    return backends.select("ecce_bias", backend, zp.device, zp.dtype).load()(zp, lengths, dist)


def ecce_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, zp: torch.Tensor, lengths=None,
                   dist: int = 30, scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """ECCE-guided attention ``softmax(q k^T * scale + E) v`` per head (paper eq. 10-11).

    ``q, k, v``: ``(B, H, L, Dh)``; ``zp``: ``(B, L, H)``; keys beyond ``lengths`` are
    excluded and rows beyond them are 0. ``scale`` defaults to ``1/sqrt(Dh)``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t, 4, "(B, H, L, Dh)")
    _check_tensor("zp", zp, 3, "(B, L, H)")
    _check_same({"q": q, "k": k, "v": v, "zp": zp})
    B, H, L, Dh = q.shape
    for name, t in (("k", k), ("v", v)):
        _check_dims(name, t, {0: ("batch size", B), 1: ("number of heads", H), 2: ("length", L),
                              3: ("head dim", Dh)})
    _check_dims("zp", zp, {0: ("batch size", B), 1: ("length", L), 2: ("number of heads", H)})
    dist = _check_int("dist", dist, 1)
    if scale is None:
        scale = 1.0 / math.sqrt(Dh) if Dh else 1.0
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite float or None, got {scale!r}")
    lengths = check_lengths(lengths, B, L, q.device)
    return backends.select("ecce_attention", backend, q.device, q.dtype).load()(q, k, v, zp, lengths, dist,
                                                                               float(scale))


def routed_mixture(logits: torch.Tensor, x: torch.Tensor, y_attn: torch.Tensor, y_mlp: torch.Tensor,
                   lengths=None, pool_size: int = 3, backend: str = "auto") -> torch.Tensor:
    """Router-weighted mixture of the four token mixers (paper eq. 8-9).

    ``logits (B, L, 4)`` in the order (attention, mlp, avgpool, maxpool); ``x`` the mixer
    input, ``y_attn`` / ``y_mlp`` the attention and MLP mixers' outputs, all ``(B, L, D)``.
    The pools over ``[i - p//2, i + p//2]`` (clipped to the valid positions) are computed
    from ``x``; ``pool_size`` must be odd and positive.
    """
    _check_tensor("logits", logits, 3, "(B, L, 4)")
    for name, t in (("x", x), ("y_attn", y_attn), ("y_mlp", y_mlp)):
        _check_tensor(name, t, 3, "(B, L, D)")
    _check_same({"x": x, "logits": logits, "y_attn": y_attn, "y_mlp": y_mlp})
    B, L, D = x.shape
    _check_dims("logits", logits, {0: ("batch size", B), 1: ("length", L), 2: ("number of token mixers", 4)})
    for name, t in (("y_attn", y_attn), ("y_mlp", y_mlp)):
        _check_dims(name, t, {0: ("batch size", B), 1: ("length", L), 2: ("feature dim", D)})
    pool_size = _check_int("pool_size", pool_size, 1)
    if pool_size % 2 == 0:
        raise ValueError(f"pool_size must be odd (a window centred on each token), got {pool_size}")
    lengths = check_lengths(lengths, B, L, x.device)
    return backends.select("routed_mixture", backend, x.device, x.dtype).load()(logits, x, y_attn, y_mlp, lengths,
                                                                               pool_size)
