"""The compiled extension ``iteach_fast._C`` (csrc/): loading it, and the Python face of its ops.

The C++ side declares the schemas and the kernels of ``torch.ops.iteach_fast.routed_mixture``
(K2, CPU and CUDA), ``ecce_attention`` (K1 on the CPU, csrc/attention.cpp) and ``band_means``
(ECCE's bias on the CPU), each with its backward; this module registers what
``torch.compile``, autograd and ``torch.func`` need on top — a fake (meta) implementation of
every op, so they trace without a graph break, the autograd formula of each forward, which
calls its single fused backward kernel, and (for the mixture) vmap rules that fold a vmapped
dimension into the batch. The package imports without the extension: :data:`STATUS`
then says why it is missing and the backend registry falls back to the reference.
"""
from __future__ import annotations

import importlib
import os

import torch

from .padding import accumulation_dtype, prefix_table, valid_mask, zero_invalid

__all__ = ["STATUS", "CPP_OPS", "REBUILD", "built_for", "load", "has_ops", "has_cuda", "routed_mixture", "ecce_bias",
           "ecce_attention"]

_FWD = "iteach_fast::routed_mixture"
_BWD = "iteach_fast::routed_mixture_backward"
_BAND = "iteach_fast::band_means"
_BAND_BWD = "iteach_fast::band_means_backward"
_ATTN = "iteach_fast::ecce_attention"
_ATTN_BWD = "iteach_fast::ecce_attention_backward"

#: the C++ ops (forward, backward) each public op's cpp implementation needs
CPP_OPS = {"routed_mixture": ("routed_mixture", "routed_mixture_backward"),
           "ecce_bias": ("band_means", "band_means_backward"),
           "ecce_attention": ("ecce_attention", "ecce_attention_backward")}


#: how to rebuild the extension, for the messages
REBUILD = ("rebuild it: `make build` in a checkout, or reinstall (pip install --no-build-isolation "
           "--force-reinstall --no-deps <the package or checkout>)")


def built_for() -> str | None:
    """The torch version ``iteach_fast._C`` was built against (``_build_info.py``, which setup.py
    writes beside it), or None where unrecorded (an extension built before it was recorded)."""
    try:
        info = importlib.import_module("iteach_fast._build_info")
    except ImportError:
        return None
    return getattr(info, "TORCH_VERSION", None)


def load():
    """``(module, None)`` if ``iteach_fast._C`` loads, else ``(None, reason)``. An extension built
    against another torch is not loaded (its C++ ABI may not match: a crash rather than an
    error), and the reason says to rebuild it."""
    if os.environ.get("ITEACH_FAST_NO_EXT", "0") == "1":
        return None, "ITEACH_FAST_NO_EXT=1"
    built = built_for()
    if built is not None and built != torch.__version__:
        return None, f"iteach_fast._C was built for torch {built} but this is torch {torch.__version__}: {REBUILD}"
    try:
        module = importlib.import_module("iteach_fast._C")
    except ImportError as err:  # not built, or built against another torch
        return None, f"iteach_fast._C is not built or does not load ({err}); run `make build`"
    return module, None


#: ``(module or None, reason or None)``, resolved once at import (torch.compile then reads a constant)
STATUS = load()


def has_ops(*names: str) -> bool:
    """Whether the extension loaded and registers every op in ``names`` (``torch.ops.iteach_fast.<name>``)."""
    return STATUS[0] is not None and all(hasattr(torch.ops.iteach_fast, n) for n in names)


def has_cuda() -> bool:
    """Whether the loaded extension holds its CUDA kernels."""
    return has_ops("has_cuda") and bool(torch.ops.iteach_fast.has_cuda())


def _fake_forward(logits, x, y_attn, y_mlp, lengths, pool_size, causal):
    return x.new_empty(x.shape)


def _fake_backward(grad, logits, x, y_attn, y_mlp, lengths, pool_size, causal):
    return logits.new_empty(logits.shape), x.new_empty(x.shape), x.new_empty(x.shape), x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    logits, x, y_attn, y_mlp, lengths, pool_size, causal = inputs
    ctx.save_for_backward(logits, x, y_attn, y_mlp, lengths)
    ctx.pool_size, ctx.causal = pool_size, causal


def _backward(ctx, grad):
    logits, x, y_attn, y_mlp, lengths = ctx.saved_tensors
    d_logits, dx, d_y_attn, d_y_mlp = torch.ops.iteach_fast.routed_mixture_backward.default(
        grad, logits, x, y_attn, y_mlp, lengths, ctx.pool_size, ctx.causal)
    needs = ctx.needs_input_grad
    grads = tuple(g if need else None for g, need in zip((d_logits, dx, d_y_attn, d_y_mlp), needs))
    return grads + (None, None, None)


def _vmap_rule(op, n_tensors):
    """torch.vmap of an op that already loops over conversations: fold vmap's dimension into
    the batch (``(N, B, ...) -> (N * B, ...)``), run the op once, unfold its outputs."""
    def rule(info, in_dims, *args):
        n = info.batch_size
        tensors = [t.movedim(d, 0) if d is not None else t.expand(n, *t.shape)
                   for t, d in zip(args[:n_tensors], in_dims)]
        b = tensors[0].shape[1]
        out = op(*(t.reshape(n * b, *t.shape[2:]) for t in tensors), *args[n_tensors:])
        unfold = (lambda o: o.view(n, b, *o.shape[1:]))
        return (tuple(map(unfold, out)), (0,) * len(out)) if isinstance(out, tuple) else (unfold(out), 0)
    return rule


class _RoutedMixture(torch.autograd.Function):
    """The forward op with its registered backward, in the form torch.func accepts
    (``setup_context`` separate from ``forward``): ``torch.func.grad`` / ``vjp`` / ``jacrev``
    rejects the autograd that ``torch.library.register_autograd`` generates. ``torch.vmap``
    runs the ops' own vmap rules (:func:`_vmap_rule`), forward and backward."""
    generate_vmap_rule = True

    @staticmethod
    def forward(logits, x, y_attn, y_mlp, lengths, pool_size, causal):
        return torch.ops.iteach_fast.routed_mixture.default(logits, x, y_attn, y_mlp, lengths, pool_size, causal)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


_HAS_MIXTURE = has_ops("routed_mixture", "routed_mixture_backward")
if _HAS_MIXTURE:
    torch.library.register_fake(_FWD)(_fake_forward)
    torch.library.register_fake(_BWD)(_fake_backward)
    # for direct calls of the op (torch.ops.iteach_fast.routed_mixture)
    torch.library.register_autograd(_FWD, _backward, setup_context=_setup_context)
    torch.library.register_vmap(_FWD, _vmap_rule(torch.ops.iteach_fast.routed_mixture.default, 5))
    torch.library.register_vmap(_BWD, _vmap_rule(torch.ops.iteach_fast.routed_mixture_backward.default, 6))


def routed_mixture(logits: torch.Tensor, x: torch.Tensor, y_attn: torch.Tensor, y_mlp: torch.Tensor,
                   lengths: torch.Tensor, pool_size: int, causal: bool = False) -> torch.Tensor:
    """The K2 kernel: ``softmax(logits)``-weighted mixture of ``y_attn``, ``y_mlp`` and the
    masked avg- and max-pools of ``x`` (window ``pool_size``: centred, or ``[i - pool_size + 1, i]``
    if ``causal``), 0 at invalid rows.

    Inputs as :func:`iteach_fast.ops.routed_mixture` passes them (validated; ``lengths``
    int64 ``(B,)`` on the inputs' device). Non-contiguous inputs are made contiguous once
    here, so the kernels and the saved tensors of the backward see contiguous memory.
    Differentiable, also under ``torch.func`` (``grad``, ``vjp``, ``vmap``) and ``torch.compile``.
    """
    if not _HAS_MIXTURE:
        raise NotImplementedError("iteach_fast._C has no routed_mixture op in this build")
    return _RoutedMixture.apply(logits.contiguous(), x.contiguous(), y_attn.contiguous(), y_mlp.contiguous(),
                                lengths.to(torch.int64).contiguous(), int(pool_size), bool(causal))


# ----------------------------------------------------------------------------- ECCE on the CPU

class _BandMeans(torch.autograd.Function):
    """``E (B, H, L, L)`` from the prefix table, differentiable through the C++ backward
    (one pass over the band instead of autograd's passes over every ``L x L`` intermediate)."""

    @staticmethod
    def forward(prefix, lengths, dist, causal):
        return torch.ops.iteach_fast.band_means.default(prefix, lengths, dist, causal)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, lengths, ctx.dist, ctx.causal = inputs
        ctx.save_for_backward(lengths)

    @staticmethod
    def backward(ctx, grad):
        (lengths,) = ctx.saved_tensors
        d_prefix = torch.ops.iteach_fast.band_means_backward.default(grad, lengths, ctx.dist, ctx.causal)
        return d_prefix, None, None, None


class _Attention(torch.autograd.Function):
    """K1 on the CPU: the fused forward returns ``(out, lse)``; the backward recomputes the
    probabilities from ``lse`` and returns every gradient (the table's too) in one call."""

    @staticmethod
    def forward(q, k, v, prefix, lengths, dist, scale, causal):
        return torch.ops.iteach_fast.ecce_attention.default(q, k, v, prefix, lengths, dist, scale, causal)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, prefix, lengths, ctx.dist, ctx.scale, ctx.causal = inputs
        out, lse = output
        ctx.has_prefix = prefix is not None
        ctx.save_for_backward(q, k, v, prefix, lengths, out, lse)
        ctx.mark_non_differentiable(lse)

    @staticmethod
    def backward(ctx, grad, _grad_lse):
        q, k, v, prefix, lengths, out, lse = ctx.saved_tensors
        dq, dk, dv, d_prefix = torch.ops.iteach_fast.ecce_attention_backward.default(
            grad, q, k, v, prefix, lengths, out, lse, ctx.dist, ctx.scale, ctx.causal)
        return dq, dk, dv, d_prefix if ctx.has_prefix else None, None, None, None, None


_HAS_BAND = has_ops(*CPP_OPS["ecce_bias"])
if _HAS_BAND:
    torch.library.register_fake(_BAND)(lambda prefix, lengths, dist, causal: prefix.new_empty(
        (*prefix.shape[:2], prefix.shape[3], prefix.shape[3])))
    torch.library.register_fake(_BAND_BWD)(lambda grad, lengths, dist, causal: grad.new_empty(
        (*grad.shape[:2], 3, grad.shape[3])))
_HAS_ATTENTION = has_ops(*CPP_OPS["ecce_attention"])
if _HAS_ATTENTION:  # outputs laid out as the C++ op lays them out (torch.empty_like keeps a dense layout)
    torch.library.register_fake(_ATTN)(lambda q, k, v, prefix, lengths, dist, scale, causal: (
        torch.empty_like(q), q.new_empty(q.shape[:3])))
    torch.library.register_fake(_ATTN_BWD)(lambda grad, q, k, v, prefix, lengths, out, lse, dist, scale, causal: (
        torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
        prefix.new_empty(prefix.shape) if prefix is not None else q.new_empty((0,))))


def _band_means(table: torch.Tensor, dist: int, causal: bool, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`iteach_fast.ops.reference.band_means` by the C++ op."""
    if not _HAS_BAND:
        raise NotImplementedError("iteach_fast._C has no band_means op in this build")
    return _BandMeans.apply(table.contiguous(), lengths, int(dist), bool(causal))


def ecce_bias(zp: torch.Tensor, lengths: torch.Tensor, dist: int, causal: bool = False) -> torch.Tensor:
    """ECCE's bias ``E`` with the band means in C++ (CPU), from the same table the reference reads."""
    acc = accumulation_dtype(zp.dtype)
    table = prefix_table(zero_invalid(zp.to(acc), valid_mask(lengths, zp.shape[1])[..., None]), dist)
    with torch.autocast("cpu", enabled=False):
        return _band_means(table, dist, causal, lengths).to(zp.dtype)


def ecce_attention(q, k, v, prefix, lengths, dist: int, scale: float, causal: bool) -> torch.Tensor:
    """:func:`iteach_fast.ops.reference.ecce_attention` fused per (batch, head) in C++ (csrc/attention.cpp):
    each head's scores stay in cache, the band bias is added from the table, the padding is
    neither read nor computed, and the ``(B, L, H, Dh)`` views are read and written in place.
    Half-precision inputs are computed in float32 (the reference's accumulation) and cast back."""
    if not _HAS_ATTENTION:
        raise NotImplementedError("iteach_fast._C has no ecce_attention op in this build")
    acc = accumulation_dtype(q.dtype)
    with torch.autocast("cpu", enabled=False):
        q32, k32, v32 = (t.to(acc) for t in (q, k, v))
        table = prefix.to(acc) if prefix is not None else None
        out, _ = _Attention.apply(q32, k32, v32, table, lengths, int(dist), float(scale), bool(causal))
    return out.to(q.dtype)
