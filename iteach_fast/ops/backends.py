"""The registry of implementations: one :class:`Implementation` per (op, backend).

Each backend declares, once (:data:`BACKEND_SPECS`): how to probe whether it can run in this
process, on which device types it runs, on which of them ``backend="auto"`` may pick it,
which (device, dtype) pairs it refuses, and its rank (``auto`` prefers the highest). Each
implementation adds where its code lives, its dtypes, its features (``"causal"``: it takes
``causal=True``) and the tolerances its tests hold it to against the reference.

Every implementation takes its op's positional arguments as :data:`SIGNATURES` states them
(the one statement of the operator contract; :func:`call` runs one). ``lengths`` is an int64
``(B,)`` tensor on the inputs' device with values in ``[0, L]``, ``prefix`` the band table of
``ecce_prefix`` (or None: no bias), and nothing is checked: :mod:`iteach_fast.ops` validates
the public calls, the model validates once at its boundary. An implementation written to an
older signature names an ``adapt`` that wraps it into this one.

Three things iterate over this one table: dispatch (:func:`select`), the conformance tests
(``tests/ops/test_conformance.py``) and the benchmarks (``bench/``). Adding a backend is a
:class:`BackendSpec` and its :func:`register` calls here, plus its module; its tests and
benchmark rows follow with no other edit.

Everything is resolved once, at import (:func:`refresh`): the probes run, the available
implementations are imported, and :func:`select` afterwards only reads dicts — so
``torch.compile`` traces dispatch without meeting an import.
"""
from __future__ import annotations

import importlib
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..choices import BACKENDS
from . import cpp

__all__ = ["SIGNATURES", "call", "OPS", "FEATURES", "BackendUnavailable", "BackendSpec", "Implementation", "REGISTRY",
           "register", "implementations", "select", "available_backends", "refresh", "warn_missing_once"]

#: the operator contract: each op's positional arguments and outputs, the same for every backend
SIGNATURES = {
    "ecce_prefix": "(z, w_fc, lengths, dist) -> (zp (B, L, H), prefix (B, H, 3, L))",
    "ecce_bias": "(zp, lengths, dist, causal) -> E (B, H, L, L)",
    "ecce_attention": "(q, k, v, prefix, lengths, dist, scale, causal) -> out (B, H, L, Dh)",
    "routed_mixture": "(logits, x, y_attn, y_mlp, lengths, pool_size, causal) -> out (B, L, D)",
}
OPS = tuple(SIGNATURES)
#: what a call may need beyond the plain op, and which ops take it
FEATURES = {"causal": ("ecce_bias", "ecce_attention", "routed_mixture")}

ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
HALF_AND_FLOAT = (torch.float32, torch.float16, torch.bfloat16)
#: (atol, rtol) per dtype against the float64 reference, for implementations that accumulate in float32
TOLERANCES = {torch.float64: (1e-10, 1e-8), torch.float32: (2e-5, 2e-4),
              torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (not built, not installed, or wrong device)."""


# ----------------------------------------------------------------------------- probes

def triton_interpret() -> bool:
    """Whether Triton runs on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def probe_triton() -> str | None:
    """None if Triton kernels can run in this process, else why not."""
    try:
        import triton
    except ImportError as err:
        return f"triton is not installed ({err})"
    if not (torch.cuda.is_available() or triton_interpret()):
        return "no CUDA device (set TRITON_INTERPRET=1 to run Triton on the CPU, slowly)"
    if triton_interpret():
        import numpy

        # triton <= 3.6's interpreter turns 1-element arrays into Python ints (loop bounds),
        # which numpy >= 2.4 rejects ("only 0-dimensional arrays can be converted")
        if _major_minor(triton.__version__) < (3, 7) and _major_minor(numpy.__version__) >= (2, 4):
            return (f"the Triton interpreter of triton {triton.__version__} does not work with "
                    f"numpy {numpy.__version__}: use triton >= 3.7 or numpy < 2.4")
    return None


def probe_cpp(op: str) -> str | None:
    """None if the compiled extension has ``op`` and its backward, else why not."""
    module, why = cpp.STATUS
    if module is None:
        return why
    forward, backward = cpp.CPP_OPS[op]
    if not cpp.has_ops(forward, backward):
        return f"iteach_fast._C has no op {forward!r} (with its {backward!r}) in this build"
    return None


def triton_refuses(device_type: str, dtype: torch.dtype) -> str | None:
    """Why Triton cannot compute ``dtype`` on ``device_type`` (None: it can)."""
    if device_type == "cpu" and dtype == torch.bfloat16:
        return ("the Triton interpreter (TRITON_INTERPRET=1) computes bfloat16 tl.dot wrongly: run bfloat16 "
                "on a CUDA GPU, or use float32 / float16 on the CPU")
    return None


# ----------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class BackendSpec:
    """What every implementation of one backend shares."""
    name: str
    rank: int  # backend="auto" prefers the highest
    probe: Callable[[str], str | None]  # op -> None if it can run in this process, else why not
    devices: Callable[[], tuple[str, ...] | None]  # device types it runs on (None: any)
    auto_devices: Callable[[], tuple[str, ...] | None]  # where "auto" may pick it (None: wherever it runs)
    wrong_device: str = ""  # the hint when a tensor is on a device it does not run on
    refuses: Callable[[str, torch.dtype], str | None] = lambda device_type, dtype: None  # why not, or None


BACKEND_SPECS = {
    "reference": BackendSpec("reference", rank=0, probe=lambda op: None, devices=lambda: None,
                             auto_devices=lambda: None),
    # the interpreter makes Triton run on the CPU, as a correctness tool: never an automatic choice
    "triton": BackendSpec("triton", rank=2, probe=lambda op: probe_triton(),
                          devices=lambda: ("cuda", "cpu") if triton_interpret() else ("cuda",),
                          auto_devices=lambda: ("cuda",), refuses=triton_refuses,
                          wrong_device="Triton kernels need CUDA tensors (or set TRITON_INTERPRET=1 for the CPU)"),
    "cpp": BackendSpec("cpp", rank=1, probe=probe_cpp,
                       devices=lambda: ("cpu", "cuda") if cpp.has_cuda() else ("cpu",),
                       auto_devices=lambda: None,
                       wrong_device="iteach_fast._C has kernels for cpu and cuda (cuda only when built with CUDA)"),
}


@dataclass(frozen=True)
class Implementation:
    op: str
    backend: str
    target: str  # "module:function"
    dtypes: tuple = ALL_DTYPES
    tolerances: dict = field(default_factory=lambda: dict(TOLERANCES))  # per dtype, vs the float64 reference
    features: frozenset = frozenset()  # of FEATURES: what it supports beyond the plain op
    adapt: Callable[[Callable], Callable] | None = None  # wraps a function of an older signature
    devices: tuple[str, ...] | None = None  # narrower than its backend's (None: wherever the backend runs)

    def supports(self, needs: frozenset) -> bool:
        return needs <= self.features

    @property
    def spec(self) -> BackendSpec:
        return BACKEND_SPECS[self.backend]

    @property
    def rank(self) -> int:
        return self.spec.rank

    def runs_on(self, device_type: str, auto: bool = False) -> bool:
        """Whether it runs on ``device_type`` (and, with ``auto``, whether "auto" may pick it there)."""
        devices, auto_devices = _STATE.devices[self.backend]
        if (devices is not None and device_type not in devices) or (
                self.devices is not None and device_type not in self.devices):
            return False
        return not auto or auto_devices is None or device_type in auto_devices

    def unavailable_reason(self, device: torch.device | str | None = None) -> str | None:
        """None if this implementation can run on ``device`` (or anywhere, if None), else why not."""
        why = _STATE.reasons.get((self.op, self.backend))
        if why is not None:
            return why
        if device is not None and not self.runs_on(torch.device(device).type):
            if self.devices is not None and torch.device(device).type not in self.devices:
                return f"its {self.op} runs on {', '.join(self.devices)} only; got device {device}"
            return f"{self.spec.wrong_device or 'it does not run there'}; got device {device}"
        return None

    def load(self) -> Callable:
        """The implementation's function (imported at :func:`refresh`)."""
        fn = _STATE.functions.get((self.op, self.backend))
        if fn is None:
            raise BackendUnavailable(f"{self.op}: backend {self.backend!r} is unavailable: "
                                     f"{self.unavailable_reason()}")
        return fn


REGISTRY: dict[str, dict[str, Implementation]] = {op: {} for op in OPS}


def register(impl: Implementation) -> None:
    if impl.backend not in BACKEND_SPECS:
        raise ValueError(f"unknown backend {impl.backend!r}; declare its BackendSpec first")
    unknown = [f for f in impl.features if impl.op not in FEATURES.get(f, ())]
    if unknown:
        raise ValueError(f"{impl.op} has no feature {unknown}; features: {FEATURES}")
    REGISTRY[impl.op][impl.backend] = impl


for _op in OPS:
    register(Implementation(_op, "reference", f"iteach_fast.ops.reference:{_op}", features=frozenset(
        f for f, ops_ in FEATURES.items() if _op in ops_)))
for _op in ("ecce_prefix", "ecce_bias", "ecce_attention"):
    register(Implementation(_op, "triton", f"iteach_fast.kernels.ecce:{_op}", dtypes=HALF_AND_FLOAT,
                            tolerances={torch.float32: (1e-4, 1e-3), torch.float16: (3e-3, 3e-3),
                                        torch.bfloat16: (2e-2, 2e-2)},
                            features=frozenset({"causal"} if _op != "ecce_prefix" else ())))
register(Implementation("routed_mixture", "cpp", "iteach_fast.ops.cpp:routed_mixture",
                        features=frozenset({"causal"})))
# ECCE's band means in C++ (the reference's code around them): the CPU's fast path; CUDA has Triton
for _op in ("ecce_bias", "ecce_attention"):
    register(Implementation(_op, "cpp", f"iteach_fast.ops.cpp:{_op}", features=frozenset({"causal"}),
                            devices=("cpu",)))
assert set(BACKEND_SPECS) <= set(BACKENDS), "every backend must be a choice in iteach_fast.choices.Backend"


# ----------------------------------------------------------------------------- resolution

@dataclass
class _Resolved:
    functions: dict = field(default_factory=dict)  # (op, backend) -> callable
    reasons: dict = field(default_factory=dict)  # (op, backend) -> why it cannot run in this process
    devices: dict = field(default_factory=dict)  # backend -> (devices, auto_devices), as its spec says
    selected: dict = field(default_factory=dict)  # (op, backend, device type, dtype, causal) -> Implementation | error


_STATE = _Resolved()


def _import_target(target: str) -> Callable:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def refresh() -> None:
    """Probe every backend and import every available implementation (done at import; call
    again after changing the environment, e.g. ``TRITON_INTERPRET``)."""
    state = _Resolved()
    # read once here: the probes call into the extension, which torch.compile must not trace
    state.devices = {name: (spec.devices(), spec.auto_devices()) for name, spec in BACKEND_SPECS.items()}
    for op, impls in REGISTRY.items():
        for impl in impls.values():
            key = (op, impl.backend)
            why = impl.spec.probe(op)
            if why is None:
                try:
                    fn = _import_target(impl.target)
                    state.functions[key] = impl.adapt(fn) if impl.adapt is not None else fn
                except ModuleNotFoundError as err:
                    if (err.name or "").startswith("iteach_fast.kernels"):
                        why = ("iteach_fast.kernels is missing: install the package (pip install -e .), which maps "
                               "kernels/ to iteach_fast.kernels; a bare checkout on PYTHONPATH does not")
                    else:
                        why = f"{impl.target} is not available ({err})"
                except (ImportError, AttributeError, NotImplementedError) as err:
                    why = f"{impl.target} is not available ({err})"
            if why is not None:
                state.reasons[key] = why
    _STATE.functions, _STATE.reasons, _STATE.devices, _STATE.selected = (state.functions, state.reasons,
                                                                           state.devices, {})


def implementations(op: str) -> list[Implementation]:
    """``op``'s implementations, the most preferred first."""
    return sorted(REGISTRY[op].values(), key=lambda i: -i.rank)


def _choose(op: str, backend: str, device_type: str, dtype: torch.dtype, needs: frozenset):
    if backend == "auto":
        for impl in implementations(op):
            if (dtype in impl.dtypes and impl.supports(needs) and impl.runs_on(device_type, auto=True)
                    and impl.unavailable_reason() is None and impl.spec.refuses(device_type, dtype) is None):
                return impl
        return ValueError(f"{op}: no implementation supports dtype {dtype} on {device_type}"
                          + (f" with {', '.join(sorted(needs))}" if needs else ""))
    if backend not in REGISTRY[op]:
        return ValueError(f"backend must be one of {('auto',) + tuple(REGISTRY[op])} for {op}, got {backend!r}")
    impl = REGISTRY[op][backend]
    why = impl.unavailable_reason(device_type)
    if why is not None:
        return BackendUnavailable(f"{op}: backend {backend!r} is unavailable: {why}")
    if dtype not in impl.dtypes:
        return TypeError(f"{op}: backend {backend!r} supports dtypes {impl.dtypes}, got {dtype}")
    why = impl.spec.refuses(device_type, dtype)
    if why is not None:
        return TypeError(f"{op}: backend {backend!r} cannot run {dtype} on {device_type}: {why}")
    if not impl.supports(needs):
        others = [i.backend for i in implementations(op) if i.supports(needs)]
        return ValueError(f"{op}: backend {backend!r} does not support {', '.join(sorted(needs - impl.features))}"
                          f"=True; backends that do: {others}")
    return impl


def select(op: str, backend: str, device: torch.device, dtype: torch.dtype, causal: bool = False) -> Implementation:
    """The implementation ``backend`` names, or for ``"auto"`` the highest-ranked one that runs
    on ``device`` with ``dtype`` and supports what the call needs (``causal``); decided once per
    (op, backend, device type, dtype, causal), dict reads only afterwards."""
    key = (op, backend, device.type, dtype, causal)
    choice = _STATE.selected.get(key)
    if choice is None:
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        needs = frozenset({"causal"}) if causal else frozenset()
        choice = _STATE.selected[key] = _choose(op, backend, device.type, dtype, needs)
    if isinstance(choice, Exception):
        raise type(choice)(*choice.args)
    return choice


def call(op: str, backend: str, *args):
    """Run ``op`` on ``args`` (its :data:`SIGNATURES`, unchecked) with the implementation
    :func:`select` picks for ``backend`` and the first argument's device and dtype (and
    ``causal``, the last argument of the ops that take it): the fused operators' one path."""
    causal = bool(args[-1]) if op in FEATURES["causal"] else False
    return select(op, backend, args[0].device, args[0].dtype, causal).load()(*args)


def available_backends(device: torch.device | str = "cpu") -> dict[str, dict[str, str | None]]:
    """``{op: {backend: None if it runs on device else the reason}}`` (used by ``iteach-fast info``)."""
    return {op: {b: impl.unavailable_reason(device) for b, impl in REGISTRY[op].items()} for op in OPS}


_warned = False


def warn_missing_once() -> None:
    """Warn once per process if the extension is missing, naming every unavailable backend."""
    global _warned
    if _warned:
        return
    _warned = True
    ext_reason = cpp.STATUS[1]
    if ext_reason is None:
        return
    parts = [f"cpp ({ext_reason})"]
    triton_reason = probe_triton()
    if triton_reason is not None:
        parts.append(f"triton ({triton_reason})")
    warnings.warn("iteach_fast: backends unavailable: " + "; ".join(parts)
                  + ". The reference backend is used instead.", RuntimeWarning, stacklevel=3)


refresh()
