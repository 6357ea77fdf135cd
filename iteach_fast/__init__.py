"""iteach_fast: fused kernels and drop-in PyTorch modules for ITEACH-Net.

    >>> import iteach_fast
    >>> iteach_fast.ops.ecce_attention(q, k, v, zp, lengths)         # the fused operator
    >>> net = iteach_fast.ITEACHNet(input_dims=(1024, 512, 1024), num_classes=4)

The package in tiers, each a subpackage that imports only those below it (docs/architecture.md):
``ops`` (the checked operators, their backends and the reference) < ``nn`` (the modules, the
model, streaming) < the application: ``data``, ``training``, ``evaluation``, ``reproduce``, and
``cli``. See README.md and docs/maths.md (the maths).
"""
import importlib

__version__ = "0.1.0"  # the one place: setup.py reads it, and passes it to the C++ extension

from . import ops  # noqa: E402, F401  (the public API; after __version__, which setup.py reads)
from .ops import backends  # noqa: E402

backends.warn_missing_once()

_LAZY_MODULES = ("nn", "data", "training", "evaluation", "reproduce")


def __getattr__(name):
    # the model, training and plotting import torch.nn, sklearn and matplotlib: load them on first use
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in ("ITEACHNet", "ITEACHModel"):
        return getattr(importlib.import_module(f"{__name__}.nn"), name)
    raise AttributeError(f"module 'iteach_fast' has no attribute {name!r}")
