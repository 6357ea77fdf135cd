"""The shim between the Triton ops and the two ways they run: compiled on a GPU, or interpreted.

All ops are ``torch.library.triton_op``s in the namespace ``iteach_fast`` (names prefixed
``ecce_``), with autograd registered, so they trace under torch.compile without a graph break
and Inductor sees the kernels. Under the Triton interpreter (``TRITON_INTERPRET=1``, read once
at import, as ``triton.jit`` does) a kernel is a plain Python function that ``wrap_triton``
cannot trace, so there each op is an opaque ``torch.library.custom_op`` instead, whose fake
(meta) implementation is the same function with the launches skipped on fake tensors: the
schema, fake-tensor and torch.compile paths still run, on the CPU.

    triton_op_or_custom(name, mutates_args)  the op decorator (triton_op, or custom_op + fake)
    launcher(kernel)[grid](*args)            wrap_triton(kernel), or the interpreter's launch
    interpreted(device)                      whether kernels run in the interpreter on ``device``
"""
from __future__ import annotations

import os

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton

__all__ = ["INTERPRET", "triton_op_or_custom", "launcher", "interpreted"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_op_or_custom(name: str, mutates_args=()):
    """``triton_op`` where the kernels compile; under the interpreter an opaque ``custom_op``
    whose fake implementation is the function itself (see the module docstring)."""
    def decorate(fn):
        if not INTERPRET:
            return triton_op(name, mutates_args=mutates_args)(fn)
        op = torch.library.custom_op(name, fn, mutates_args=mutates_args)
        op.register_fake(fn)
        return op
    return decorate


class _Interpreted:
    """``kernel[grid](*args)`` in the interpreter, doing nothing when an argument is a fake tensor
    (the op's fake implementation only needs the outputs' metadata)."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if any(isinstance(a, torch.Tensor) and (is_fake(a) or a.device.type == "meta") for a in args):
                return None
            return self.kernel[grid](*args, **kwargs)
        return launch


def launcher(kernel):
    """``launcher(kernel)[grid](*args, **meta)`` launches ``kernel`` from inside an op: through
    ``wrap_triton`` on a GPU, directly (skipping fake tensors) under the interpreter."""
    return _Interpreted(kernel) if INTERPRET else wrap_triton(kernel)


def interpreted(device: torch.device) -> bool:
    return INTERPRET or device.type != "cuda"
