"""The operator tier: ITEACH-Net's fused operators, checked, and everything they stand on.

The public operators (this module): ``ecce_prefix``, ``ecce_bias``, ``ecce_attention``,
``routed_mixture`` — each validates every argument (a ``ValueError`` / ``TypeError`` naming
it), then runs the implementation the backend registry picks (:func:`.backends.call`).
Owns also: the registry (:mod:`.backends`: each backend's probe, devices, dtypes, features,
tolerances, and the operator contract :data:`.backends.SIGNATURES`), the pure-PyTorch oracle
(:mod:`.reference`), the ragged-batch primitives and the band table layout (:mod:`.padding`),
the compiled extension's Python face (:mod:`.cpp`), and what tests and benchmarks share
(:mod:`.testing`). The Triton kernels are ``iteach_fast.kernels``, the C++/CUDA ones ``_C``.
May import: torch, :mod:`iteach_fast.choices` and the kernels; nothing above it (nn, data,
training, evaluation, reproduce).
"""
from __future__ import annotations

import math

import torch

from ..checks import check_int, check_odd
from . import backends
from .backends import BackendUnavailable  # noqa: F401  (re-exported)
from .padding import accumulation_dtype, prefix_table, valid_mask, zero_invalid

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


def check_lengths(lengths, B: int, L: int, device: torch.device, sync: bool = True) -> torch.Tensor:
    """``lengths`` as int64 ``(B,)`` on ``device``; None means every conversation has length L.

    A CPU tensor or a list (what a data loader hands in) is checked on the host, a ``ValueError``
    naming the values. A tensor on an accelerator is read back for that message (one host
    synchronisation) unless ``sync`` is False — the model's boundary, which must not
    synchronise — or the call is traced by ``torch.compile``: it is then checked on the device
    (``torch._assert_async``), and an out-of-range value fails at the next synchronisation with
    the same message.
    """
    if lengths is None:
        return torch.full((B,), L, dtype=torch.int64, device=device)
    if isinstance(lengths, (str, bytes)):
        raise TypeError(f"lengths must be an integer tensor of shape ({B},) or None, got {type(lengths).__name__}")
    if not isinstance(lengths, torch.Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"lengths must be an integer tensor of shape ({B},) or None, "
                            f"got {type(lengths).__name__} ({err})") from None
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor of shape ({B},), got dtype {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},) (one length per conversation), got {tuple(lengths.shape)}")
    bad = f"lengths must lie in [0, L={L}]"
    if torch.compiler.is_compiling() or (lengths.device.type != "cpu" and not sync):
        torch._assert_async(((lengths >= 0) & (lengths <= L)).all(), bad)
    elif B:
        if lengths.device.type == "cpu" and torch._C._functorch.peek_interpreter_stack() is None:
            host = lengths.numpy()  # a plain CPU tensor's own memory: no dispatched op
            lo, hi = host.min(), host.max()
        else:  # an accelerator's values (a host synchronisation), or inside a torch.func transform
            lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > L:
            raise ValueError(f"{bad}, got values in [{lo}, {hi}]")
    return lengths.to(device=device, dtype=torch.int64, non_blocking=True)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def ecce_prefix(z: torch.Tensor, w_fc: torch.Tensor, lengths=None, dist: int = 30, backend: str = "auto"):
    """ECCE's projection and its band-mean table in one pass: ``zp = z @ w_fc`` ``(B, L, H)``
    (0 beyond ``lengths``) and ``prefix`` ``(B, H, 3, L)``, both float32 (float64 for float64
    inputs). ``z``: ``(B, L, D)``, ``w_fc``: ``(D, H)`` (``nn.Linear(D, H).weight.T``).

    ``prefix`` is for :func:`ecce_attention` (``prefix=``) with the same ``lengths`` and
    ``dist``; its layout is in docs/maths.md ("Local numerics"). Differentiable in z and w_fc.
    """
    _check_tensor("z", z, 3, "(B, L, D)")
    _check_tensor("w_fc", w_fc, 2, "(D, H)")
    _check_same({"z": z, "w_fc": w_fc})
    B, L, D = z.shape
    _check_dims("w_fc", w_fc, {0: ("input dim", D)})
    dist = check_int("dist", dist, 1)
    lengths = check_lengths(lengths, B, L, z.device)
    return backends.call("ecce_prefix", backend, z, w_fc, lengths, dist)


def ecce_bias(zp: torch.Tensor, lengths=None, dist: int = 30, causal: bool = False,
              backend: str = "auto") -> torch.Tensor:
    """ECCE's global context-changing bias ``E (B, H, L, L)`` from the projected local context
    ``zp (B, L, H)``: the mean of ``zp`` over ``min(i,j)..max(i,j)`` for valid pairs within
    ``|i-j| < dist`` (and ``j <= i`` if ``causal``), else 0. Materialises ``L x L``: for
    inspection and heatmaps."""
    _check_tensor("zp", zp, 3, "(B, L, H)")
    B, L, _ = zp.shape
    dist = check_int("dist", dist, 1)
    causal = _check_bool("causal", causal)
    lengths = check_lengths(lengths, B, L, zp.device)
    return backends.call("ecce_bias", backend, zp, lengths, dist, causal)


def ecce_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, zp: torch.Tensor | None = None, lengths=None,
                   dist: int = 30, scale: float | None = None, causal: bool = False, backend: str = "auto", *,
                   prefix: torch.Tensor | None = None) -> torch.Tensor:
    """ECCE-guided attention ``softmax(q k^T * scale + E) v`` per head (paper eq. 10-11).

    ``q, k, v``: ``(B, H, L, Dh)``, any strides (e.g. ``t.view(B, L, H, Dh).transpose(1, 2)``);
    the bias ``E`` from ``zp (B, L, H)`` (q's dtype or float32 / float64 as ``ecce_prefix``
    returns it), or from ``prefix``, the table :func:`ecce_prefix` returned for the same
    ``lengths`` and ``dist``; neither: no bias. Keys beyond ``lengths`` (and, if ``causal``,
    after the query) are excluded and rows beyond them are 0. ``scale`` defaults to ``1/sqrt(Dh)``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t, 4, "(B, H, L, Dh)")
    _check_same({"q": q, "k": k, "v": v})
    B, H, L, Dh = q.shape
    for name, t in (("k", k), ("v", v)):
        _check_dims(name, t, {0: ("batch size", B), 1: ("number of heads", H), 2: ("length", L),
                              3: ("head dim", Dh)})
    acc = accumulation_dtype(q.dtype)
    if zp is not None and prefix is not None:
        raise ValueError("pass zp or prefix (the table ecce_prefix returns), not both")
    if zp is not None:
        _check_tensor("zp", zp, 3, "(B, L, H)")
        _check_dims("zp", zp, {0: ("batch size", B), 1: ("length", L), 2: ("number of heads", H)})
        _check_companion("zp", zp, q, (q.dtype, acc))
    if prefix is not None:
        _check_tensor("prefix", prefix, 4, "(B, H, 3, L)")
        _check_dims("prefix", prefix, {0: ("batch size", B), 1: ("number of heads", H), 2: ("table rows", 3),
                                       3: ("length", L)})
        _check_companion("prefix", prefix, q, (acc,))
    dist = check_int("dist", dist, 1)
    if scale is None:
        scale = 1.0 / math.sqrt(Dh) if Dh else 1.0
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite float or None, got {scale!r}")
    causal = _check_bool("causal", causal)
    lengths = check_lengths(lengths, B, L, q.device)
    if zp is not None:
        prefix = prefix_table(zero_invalid(zp.to(acc), valid_mask(lengths, L)[..., None]), dist)
    return backends.call("ecce_attention", backend, q, k, v, prefix, lengths, dist, float(scale), causal)


def _check_companion(name: str, t: torch.Tensor, q: torch.Tensor, dtypes: tuple) -> None:
    if t.device != q.device:
        raise ValueError(f"{name} is on {t.device} but q is on {q.device}; all inputs must share a device")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {t.dtype}; with q of dtype {q.dtype} it must be one of "
                        f"{tuple(str(d) for d in dict.fromkeys(dtypes))}")


def routed_mixture(logits: torch.Tensor, x: torch.Tensor, y_attn: torch.Tensor, y_mlp: torch.Tensor,
                   lengths=None, pool_size: int = 3, causal: bool = False, backend: str = "auto") -> torch.Tensor:
    """Router-weighted mixture of the four token mixers (paper eq. 8-9).

    ``logits (B, L, 4)`` in the order (attention, mlp, avgpool, maxpool); ``x`` the mixer
    input, ``y_attn`` / ``y_mlp`` the attention and MLP mixers' outputs, all ``(B, L, D)``.
    The pools over ``[i - p//2, i + p//2]`` (``[i - p + 1, i]`` if ``causal``), clipped to the
    valid positions, are computed from ``x``; ``pool_size`` must be odd and positive.
    """
    _check_tensor("logits", logits, 3, "(B, L, 4)")
    for name, t in (("x", x), ("y_attn", y_attn), ("y_mlp", y_mlp)):
        _check_tensor(name, t, 3, "(B, L, D)")
    _check_same({"x": x, "logits": logits, "y_attn": y_attn, "y_mlp": y_mlp})
    B, L, D = x.shape
    _check_dims("logits", logits, {0: ("batch size", B), 1: ("length", L), 2: ("number of token mixers", 4)})
    for name, t in (("y_attn", y_attn), ("y_mlp", y_mlp)):
        _check_dims(name, t, {0: ("batch size", B), 1: ("length", L), 2: ("feature dim", D)})
    pool_size = check_odd("pool_size", pool_size)
    causal = _check_bool("causal", causal)
    lengths = check_lengths(lengths, B, L, x.device)
    return backends.call("routed_mixture", backend, logits, x, y_attn, y_mlp, lengths, pool_size, causal)


# once per process, when the operators load (the package's root loads nothing eagerly): which
# backends are missing and why
backends.warn_missing_once()
