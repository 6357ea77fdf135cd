"""What one call costs the host: its host-device synchronisations and its kernel launches.

    from bench.counters import count_syncs, count_ops
    count_syncs(lambda: int(t.sum()))   # {"aten._local_scalar_dense": 1}
    count_syncs(lambda: t * 2)          # {}
    sum(count_ops(step).values())       # aten ops dispatched: a launch count on the CPU

Both count with a ``TorchDispatchMode``, so they see every aten op the call dispatches,
the backward included when the call runs it (the autograd engine carries the mode into its
threads). A *synchronising* op is one that makes the host wait for the device's result:
reading a scalar (``_local_scalar_dense``: ``.item()``, ``int(t)``, ``if t``), data-
dependent output shapes (``nonzero``, ``masked_select``, boolean-mask indexing), the
comparisons that return a Python bool (``equal``, ``is_nonzero``) and copies from a CUDA
tensor to the host. Each blocks CUDA-graph capture; on the CPU they cost nothing, but the
count is the same, so it is checked here.

On CUDA, :func:`count_kernels` counts the kernels ``torch.profiler`` sees launched (compiled
code launches its own fused kernels without dispatching aten ops).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SYNC_OPS", "count_syncs", "count_ops", "count_kernels", "count_cuda_syncs", "is_sync"]

aten = torch.ops.aten

#: ops that always wait for the device: a scalar or a data-dependent shape comes back to the host
SYNC_OPS = {
    aten._local_scalar_dense.default: "aten._local_scalar_dense",
    aten.nonzero.default: "aten.nonzero",
    aten.masked_select.default: "aten.masked_select",
    aten.equal.default: "aten.equal",
    aten.is_nonzero.default: "aten.is_nonzero",
}
# ``aten.item`` is a composite that reaches the dispatcher as _local_scalar_dense; named for completeness
if hasattr(aten, "item"):
    SYNC_OPS[aten.item.default] = "aten.item"
#: indexing ops whose tensor indices synchronise when one of them is a boolean mask (nonzero inside)
_INDEX_OPS = {aten.index.Tensor: "aten.index.Tensor (boolean mask)",
              aten.index_put_.default: "aten.index_put_ (boolean mask)",
              aten.index_put.default: "aten.index_put (boolean mask)",
              aten._index_put_impl_.default: "aten._index_put_impl_ (boolean mask)"}
_COPY_OPS = (aten._to_copy.default, aten.copy_.default)


def _device_of(x) -> torch.device | None:
    return x.device if isinstance(x, torch.Tensor) else None


def is_sync(func, args, kwargs) -> str | None:
    """The name under which ``func(*args, **kwargs)`` counts as a host synchronisation, or None."""
    if func in SYNC_OPS:
        return SYNC_OPS[func]
    if func in _INDEX_OPS:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()):
            return _INDEX_OPS[func]
        return None
    if func in _COPY_OPS:  # a device-to-host copy: the host waits for the data
        if func is aten.copy_.default:
            dst, src = _device_of(args[0]), _device_of(args[1])
        else:
            src = _device_of(args[0])
            dst = kwargs.get("device") or src
            dst = torch.device(dst) if dst is not None else None
        if src is not None and dst is not None and src.type != "cpu" and dst.type == "cpu":
            return f"{func.overloadpacket.__name__} (device to host)"
    return None


class _Counting(TorchDispatchMode):
    def __init__(self, syncs_only: bool):
        super().__init__()
        self.syncs_only = syncs_only
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.syncs_only:
            name = is_sync(func, args, kwargs)
            if name is not None:
                self.counts[name] += 1
        else:
            self.counts[str(func.overloadpacket)] += 1
        return func(*args, **kwargs)


def _run_counting(fn: Callable[[], object], syncs_only: bool) -> dict[str, int]:
    mode = _Counting(syncs_only)
    with mode:
        fn()
    return dict(mode.counts)


def count_syncs(fn: Callable[[], object]) -> dict[str, int]:
    """``{op name: count}`` of the host synchronisations one call of ``fn`` issues (empty: none)."""
    return _run_counting(fn, syncs_only=True)


def count_ops(fn: Callable[[], object], views: bool = False) -> dict[str, int]:
    """``{aten op: count}`` of the ops one call of ``fn`` dispatches; views and other
    metadata-only ops (which launch nothing) are left out unless ``views``."""
    counts = _run_counting(fn, syncs_only=False)
    if views:
        return counts
    return {name: n for name, n in counts.items() if not _metadata_only(name)}


#: ops that allocate or alias without computing: no kernel
_NO_KERNEL = {"detach", "alias", "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty",
              "new_empty_strided", "_unsafe_view", "set_", "sym_size", "sym_stride", "sym_numel",
              "sym_storage_offset"}


def _metadata_only(name: str) -> bool:
    """Whether the aten op ``name`` (e.g. ``"aten.view"``) only makes a view or allocates."""
    op = name.split(".", 1)[1]
    packet = getattr(aten, op, None)
    return op in _NO_KERNEL or (packet is not None and any(getattr(packet, o).is_view for o in packet.overloads()))


def count_kernels(fn: Callable[[], object]) -> int:
    """The CUDA kernels one call of ``fn`` launches, from ``torch.profiler``'s device events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def count_cuda_syncs(fn: Callable[[], object]) -> int:
    """The synchronising CUDA calls one call of ``fn`` makes, as ``torch.cuda.set_sync_debug_mode``
    reports them (compiled code included, which a dispatch mode does not see)."""
    import warnings

    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchronizing" in str(w.message) for w in caught)
