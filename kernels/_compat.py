"""The shim between the Triton ops and the two ways they run: compiled on a GPU, or interpreted.

All ops are ``torch.library.triton_op``s in the namespace ``iteach_fast`` (names prefixed
``ecce_``), with autograd registered, so they trace under torch.compile without a graph break
and Inductor sees the kernels. Under the Triton interpreter (``TRITON_INTERPRET=1``, read once
at import, as ``triton.jit`` does) a kernel is a plain Python function that ``wrap_triton``
cannot trace, so there each op is an opaque ``torch.library.custom_op`` instead, whose fake
(meta) implementation is the same function with the launches skipped on fake tensors: the
schema, fake-tensor and torch.compile paths still run, on the CPU.

    triton_op_or_custom(name, mutates_args)  the op decorator (triton_op, or custom_op + fake)
    launcher(kernel)[grid](*args)            wrap_triton(kernel), or the interpreter's launch, on the
                                             device of the first tensor argument (device_guard)
    interpreted(device)                      whether kernels run in the interpreter on ``device``
    wide_offsets(*tensors)                   whether a kernel must compute addresses in 64 bits
    batch_slices(B, per_batch)               the launches a batch takes: a grid's axes 1 and 2 hold
    sliced(args, b0, b1, B)                  65,535 programs, which B * H passes at 8,192
                                             conversations of 8 heads; the kernels keep their 2-D
                                             grids (blocks of positions on axis 0, the fastest, so
                                             one head's blocks run together and share its K/V in
                                             L2; no division in the kernel: it costs registers)
"""
from __future__ import annotations

import contextlib
import os

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton

__all__ = ["INTERPRET", "MAX_GRID_YZ", "triton_op_or_custom", "launcher", "interpreted", "device_guard",
           "wide_offsets", "batch_slices", "sliced"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
#: the programs a CUDA grid's axes 1 and 2 may hold (axis 0: 2**31 - 1)
MAX_GRID_YZ = 65_535


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


def device_guard(device: torch.device):
    """The context a launch on ``device`` runs in: that CUDA device made current (Triton launches
    on the current device's stream, whatever device the pointers belong to: without the guard a
    tensor on ``cuda:1`` is read by a kernel running on ``cuda:0``), nothing elsewhere."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class _Launcher:
    """``kernel[grid](*args)`` on the device of the first tensor argument (:func:`device_guard`);
    under the interpreter, doing nothing when an argument is a fake tensor (the op's fake
    implementation only needs the outputs' metadata)."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.launch_with = kernel if INTERPRET else wrap_triton(kernel)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if INTERPRET and any(isinstance(a, torch.Tensor) and (is_fake(a) or a.device.type == "meta")
                                 for a in args):
                return None
            with device_guard(first.device) if first is not None else contextlib.nullcontext():
                return self.launch_with[grid](*args, **kwargs)
        return launch


def launcher(kernel):
    """``launcher(kernel)[grid](*args, **meta)`` launches ``kernel`` from inside an op, on the
    device of its first tensor argument: through ``wrap_triton`` on a GPU, directly (skipping
    fake tensors) under the interpreter."""
    return _Launcher(kernel)


def wide_offsets(*tensors: torch.Tensor | None) -> bool:
    """Whether an element offset a kernel computes in 32 bits from these tensors' strides can
    pass ``2**31 - 1`` (then the kernels' ``WIDE`` variant computes addresses in 64 bits; 32-bit
    arithmetic, cheaper in registers, everywhere else). The batch offset (dimension 0 of a tensor
    of 3 or more dimensions) is a 64-bit scalar in every kernel and is not counted; every other
    dimension is, with a margin of 256 elements: a tile's padding lanes compute addresses past
    the end too (never loaded)."""
    for t in tensors:
        if t is None or not t.numel():
            continue
        dims = list(zip(t.shape, t.stride()))[1 if t.dim() >= 3 else 0:]
        if sum((n + 256) * s for n, s in dims) >= 2**31:  # strides are >= 0 (also symbolic ones, traced)
            return True
    return False


def batch_slices(B: int, per_batch: int) -> list[tuple[int, int]]:
    """``[(b0, b1), ...]`` covering conversations ``0..B``, each slice small enough that its
    ``(b1 - b0) * per_batch`` programs fit a grid's axis 1 or 2 (:data:`MAX_GRID_YZ`): one slice
    in every ordinary case."""
    if B * per_batch <= MAX_GRID_YZ:  # the usual case, without iterating over a (traced, symbolic) B
        return [(0, B)] if B else []
    if per_batch > MAX_GRID_YZ:
        raise ValueError(f"{per_batch} programs per conversation on a grid axis that holds {MAX_GRID_YZ}")
    step = MAX_GRID_YZ // max(1, per_batch)
    return [(b0, min(B, b0 + step)) for b0 in range(0, B, step)]


def sliced(args: tuple, b0: int, b1: int, B: int) -> tuple:
    """``args`` with every tensor whose first dimension is the batch (``B``) narrowed to
    conversations ``b0..b1`` (a view: strides, and so the kernel's arguments, unchanged)."""
    if (b0, b1) == (0, B):
        return args
    return tuple(a[b0:b1] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == B else a for a in args)


def interpreted(device: torch.device) -> bool:
    return INTERPRET or device.type != "cuda"
