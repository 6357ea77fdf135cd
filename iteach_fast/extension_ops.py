"""The Python face of the compiled K2 ops (``torch.ops.iteach_fast.routed_mixture`` and its
backward), as the ``"cpp"`` backend of :func:`iteach_fast.ops.routed_mixture`.

The C++ extension declares the schemas and the CPU / CUDA kernels; this module registers
what torch.compile and autograd need on top: a fake (meta) implementation of both ops, so
they trace without a graph break, and the autograd formula of the forward, which calls
the single fused backward kernel.
"""
from __future__ import annotations

import torch

from . import _extension

__all__ = ["routed_mixture", "available"]

_FWD = "iteach_fast::routed_mixture"
_BWD = "iteach_fast::routed_mixture_backward"


def available() -> bool:
    """Whether the loaded extension has the routed_mixture ops."""
    return _extension.has_ops("routed_mixture", "routed_mixture_backward")


def _fake_forward(logits, x, y_attn, y_mlp, lengths, pool_size):
    return x.new_empty(x.shape)


def _fake_backward(grad, logits, x, y_attn, y_mlp, lengths, pool_size):
    return logits.new_empty(logits.shape), x.new_empty(x.shape), x.new_empty(x.shape), x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    logits, x, y_attn, y_mlp, lengths, pool_size = inputs
    ctx.save_for_backward(logits, x, y_attn, y_mlp, lengths)
    ctx.pool_size = pool_size


def _backward(ctx, grad):
    logits, x, y_attn, y_mlp, lengths = ctx.saved_tensors
    d_logits, dx, d_y_attn, d_y_mlp = torch.ops.iteach_fast.routed_mixture_backward.default(
        grad.contiguous(), logits, x, y_attn, y_mlp, lengths, ctx.pool_size)
    needs = ctx.needs_input_grad
    grads = tuple(g if need else None for g, need in zip((d_logits, dx, d_y_attn, d_y_mlp), needs))
    return grads + (None, None)


_AVAILABLE = available()  # once, at import: torch.compile then reads a constant

if _AVAILABLE:
    torch.library.register_fake(_FWD)(_fake_forward)
    torch.library.register_fake(_BWD)(_fake_backward)
    torch.library.register_autograd(_FWD, _backward, setup_context=_setup_context)


def routed_mixture(logits: torch.Tensor, x: torch.Tensor, y_attn: torch.Tensor, y_mlp: torch.Tensor,
                   lengths: torch.Tensor, pool_size: int) -> torch.Tensor:
    """The K2 kernel: ``softmax(logits)``-weighted mixture of ``y_attn``, ``y_mlp`` and the
    masked avg- and max-pools of ``x`` (window ``pool_size``), 0 at invalid rows.

    Inputs as :func:`iteach_fast.ops.routed_mixture` passes them (validated; ``lengths``
    int64 ``(B,)`` on the inputs' device). Non-contiguous inputs are made contiguous once
    here, so the kernels and the saved tensors of the backward see contiguous memory.
    """
    if not _AVAILABLE:
        raise NotImplementedError("iteach_fast._C has no routed_mixture op in this build")
    return torch.ops.iteach_fast.routed_mixture.default(
        logits.contiguous(), x.contiguous(), y_attn.contiguous(), y_mlp.contiguous(),
        lengths.to(torch.int64).contiguous(), int(pool_size))
