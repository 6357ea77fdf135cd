"""iteach_fast: fused kernels and drop-in PyTorch modules for ITEACH-Net.

    >>> import iteach_fast
    >>> iteach_fast.ops.ecce_attention(q, k, v, zp, lengths)         # the fused operator
    >>> net = iteach_fast.ITEACHNet(input_dims=(1024, 512, 1024), num_classes=4)
    >>> net, cfg, ckpt = iteach_fast.load_model("runs/its/best.pt")  # a trained checkpoint

The package in tiers, each a subpackage that imports only those below it (docs/architecture.md):
``ops`` (the checked operators, their backends and the reference) < ``nn`` (the modules, the
model, streaming) < the application: ``data``, ``training``, ``evaluation``, ``reproduce``, and
``cli``. See README.md and docs/maths.md (the maths).

Importing the package loads nothing else: each subpackage (and torch with it) loads on first
use — ``iteach_fast.ops``, ``from iteach_fast import nn`` or ``import iteach_fast.ops`` — so
``iteach-fast --help`` does not wait for torch. The operators warn once per process, when
they load, if a backend is missing (:func:`iteach_fast.ops.backends.warn_missing_once`).
"""
import importlib

__version__ = "0.1.0"  # the one place: setup.py reads it, and passes it to the C++ extension

#: the subpackages, each imported on first access
_LAZY_MODULES = ("ops", "nn", "data", "training", "evaluation", "reproduce")
#: names re-exported from a subpackage, each imported on first access
_LAZY_NAMES = {"ITEACHNet": "nn", "ITEACHModel": "nn", "load_model": "training.checkpoint"}

__all__ = ["__version__", *_LAZY_MODULES, *_LAZY_NAMES]


def __getattr__(name):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
    raise AttributeError(f"module 'iteach_fast' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
