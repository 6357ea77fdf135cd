"""Loading the compiled extension ``iteach_fast._C`` and Triton, and saying why not.

The package must import without either: the reference backend always works. What is
missing is reported once, as a warning, when the package is imported.
"""
from __future__ import annotations

import importlib
import os
import re
import warnings
from functools import lru_cache

import torch


@lru_cache(maxsize=None)
def extension():
    """``(module, None)`` if ``iteach_fast._C`` loads, else ``(None, reason)``."""
    if os.environ.get("ITEACH_FAST_NO_EXT", "0") == "1":
        return None, "ITEACH_FAST_NO_EXT=1"
    try:
        module = importlib.import_module("iteach_fast._C")
    except ImportError as err:  # not built, or built against another torch
        return None, f"iteach_fast._C is not built or does not load ({err}); run `make build`"
    return module, None


def has_ops(*names: str) -> bool:
    """Whether the extension loads and registers every op in ``names`` (``torch.ops.iteach_fast.<name>``)."""
    module, _ = extension()
    return module is not None and all(hasattr(torch.ops.iteach_fast, n) for n in names)


def extension_has_cuda() -> bool:
    module, _ = extension()
    return module is not None and bool(torch.ops.iteach_fast.has_cuda())


def triton_interpret() -> bool:
    """Whether Triton runs on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Resolved once, then read from a plain dict: torch.compile traces a dict lookup, while it
# only warns about (and re-traces through) an lru_cache wrapper.
_TRITON_STATUS: dict[str, tuple[bool, str | None]] = {}


def triton_status() -> tuple[bool, str | None]:
    """``(True, None)`` if Triton kernels can run here, else ``(False, reason)``."""
    if "status" not in _TRITON_STATUS:
        _TRITON_STATUS["status"] = _triton_status()
    return _TRITON_STATUS["status"]


def _triton_status() -> tuple[bool, str | None]:
    try:
        import triton
    except ImportError as err:
        return False, f"triton is not installed ({err})"
    if not (torch.cuda.is_available() or triton_interpret()):
        return False, "no CUDA device (set TRITON_INTERPRET=1 to run Triton on the CPU, slowly)"
    if triton_interpret():
        import numpy

        # triton <= 3.6's interpreter turns 1-element arrays into Python ints (loop bounds),
        # which numpy >= 2.4 rejects ("only 0-dimensional arrays can be converted")
        if _major_minor(triton.__version__) < (3, 7) and _major_minor(numpy.__version__) >= (2, 4):
            return False, (f"the Triton interpreter of triton {triton.__version__} does not work with "
                           f"numpy {numpy.__version__}: use triton >= 3.7 or numpy < 2.4")
    return True, None


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


_warned = False


def warn_missing_once() -> None:
    """Warn once per process if the extension is missing, naming every unavailable backend."""
    global _warned
    if _warned:
        return
    _warned = True
    _, ext_reason = extension()
    if ext_reason is None:
        return
    parts = [f"cpp ({ext_reason})"]
    ok, triton_reason = triton_status()
    if not ok:
        parts.append(f"triton ({triton_reason})")
    warnings.warn("iteach_fast: backends unavailable: " + "; ".join(parts)
                  + ". The reference backend is used instead.", RuntimeWarning, stacklevel=3)
