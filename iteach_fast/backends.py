"""The registry of implementations: one entry per (op, backend).

Dispatch (``backend="auto"``), the parametrised tests and the benchmarks all iterate over
this one table, so adding a backend is one entry here plus its module. Each entry says
where it can run, how much it is preferred, and the tolerances its tests hold it to.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field

import torch

from . import _extension

OPS = ("ecce_bias", "ecce_attention", "routed_mixture")
BACKENDS = ("reference", "triton", "cpp")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (not built, not installed, or wrong device)."""


@dataclass(frozen=True)
class Implementation:
    op: str
    backend: str
    target: str  # "module:function"
    rank: int  # higher is preferred by backend="auto"
    dtypes: tuple = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    # tolerances (atol, rtol) per dtype that tests hold this implementation to, against the reference
    tolerances: dict = field(default_factory=lambda: {
        torch.float64: (1e-10, 1e-8), torch.float32: (2e-5, 2e-4),
        torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)})

    def unavailable_reason(self, device: torch.device | None = None) -> str | None:
        """None if this implementation can run on ``device`` (or anywhere, if None), else why not."""
        if self.backend == "reference":
            return None
        if self.backend == "triton":
            ok, why = _extension.triton_status()
            if not ok:
                return why
            if device is not None and device.type != "cuda" and not _extension.triton_interpret():
                return f"Triton kernels need CUDA tensors, got device {device} (or set TRITON_INTERPRET=1)"
        if self.backend == "cpp":
            why, has_op, has_cuda = _cpp_status(self.op)
            if why is not None:
                return why
            if not has_op:
                return f"iteach_fast._C has no op {self.op!r} (with its {self.op + '_backward'!r}) in this build"
            if device is not None and device.type == "cuda" and not has_cuda:
                return "iteach_fast._C was built without CUDA"
            if device is not None and device.type not in ("cpu", "cuda"):
                return f"iteach_fast._C has kernels for cpu and cuda only, got {device}"
        try:
            self.load()
        except ModuleNotFoundError as err:
            if (err.name or "").startswith("iteach_fast.kernels"):
                return ("iteach_fast.kernels is missing: install the package (pip install -e .), which maps "
                        "kernels/ to iteach_fast.kernels; a bare checkout on PYTHONPATH does not")
            return f"{self.target} is not available ({err})"
        except (ImportError, AttributeError, NotImplementedError) as err:
            return f"{self.target} is not available ({err})"
        return None

    def load(self):
        module, name = self.target.split(":")
        # an imported module from sys.modules: torch.compile traces that, not importlib
        loaded = sys.modules.get(module)
        return getattr(loaded if loaded is not None else importlib.import_module(module), name)


# What the compiled extension offers, looked up once (at import, below) and then read from a
# plain dict: torch.compile traces that, but not the importlib call behind _extension.extension().
_CPP_STATUS: dict[str, tuple[str | None, bool, bool]] = {}


def _cpp_status(op: str) -> tuple[str | None, bool, bool]:
    """``(reason the extension is missing or None, has op and op_backward, built with CUDA)``."""
    status = _CPP_STATUS.get(op)
    if status is None:
        module, why = _extension.extension()
        if module is None:
            status = (why, False, False)
        else:
            # the forward op and its backward op (torch.ops.iteach_fast.<op>, <op>_backward)
            status = (None, _extension.has_ops(op, op + "_backward"), _extension.extension_has_cuda())
        _CPP_STATUS[op] = status
    return status


_F32_HALF = (torch.float32, torch.float16, torch.bfloat16)

REGISTRY: dict[str, dict[str, Implementation]] = {op: {} for op in OPS}


def register(impl: Implementation) -> None:
    REGISTRY[impl.op][impl.backend] = impl


for _op in OPS:
    register(Implementation(_op, "reference", f"iteach_fast.reference:{_op}", rank=0))
for _op in ("ecce_bias", "ecce_attention"):
    register(Implementation(_op, "triton", f"iteach_fast.kernels.ecce:{_op}", rank=2, dtypes=_F32_HALF,
                            tolerances={torch.float32: (1e-4, 1e-3), torch.float16: (3e-3, 3e-3),
                                        torch.bfloat16: (2e-2, 2e-2)}))
register(Implementation("routed_mixture", "cpp", "iteach_fast.extension_ops:routed_mixture", rank=1))
_cpp_status("routed_mixture")  # resolved now, outside any torch.compile trace
_extension.triton_status()


def implementations(op: str) -> list[Implementation]:
    return sorted(REGISTRY[op].values(), key=lambda i: -i.rank)


def select(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> Implementation:
    """The implementation ``backend`` names, or for ``"auto"`` the best one that runs here."""
    if backend == "auto":
        for impl in implementations(op):
            if dtype in impl.dtypes and impl.unavailable_reason(device) is None:
                # the Triton interpreter is a correctness tool, never an automatic choice
                if impl.backend == "triton" and device.type != "cuda":
                    continue
                return impl
        raise AssertionError("unreachable: the reference backend always runs")
    if backend not in REGISTRY[op]:
        raise ValueError(f"backend must be one of {('auto',) + tuple(REGISTRY[op])} for {op}, got {backend!r}")
    impl = REGISTRY[op][backend]
    why = impl.unavailable_reason(device)
    if why is not None:
        raise BackendUnavailable(f"{op}: backend {backend!r} is unavailable: {why}")
    if dtype not in impl.dtypes:
        raise TypeError(f"{op}: backend {backend!r} supports dtypes {impl.dtypes}, got {dtype}")
    return impl


def available_backends(device: torch.device | str = "cpu") -> dict[str, dict[str, str | None]]:
    """``{op: {backend: None if it runs on device else the reason}}`` (used by ``iteach-fast info``)."""
    device = torch.device(device)
    return {op: {b: impl.unavailable_reason(device) for b, impl in REGISTRY[op].items()} for op in OPS}
