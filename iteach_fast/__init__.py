"""iteach_fast: fused kernels and drop-in PyTorch modules for ITEACH-Net.

    >>> import iteach_fast
    >>> iteach_fast.ops.ecce_attention(q, k, v, zp, lengths)         # the fused operator
    >>> net = iteach_fast.ITEACHNet(input_dims=(1024, 512, 1024), num_classes=4)

See README.md and docs/maths.md.
"""
from . import _extension
from . import ops

__version__ = "0.1.0"

_extension.warn_missing_once()


def __getattr__(name):
    # modules and the model import torch.nn pieces; load them on first use
    if name in ("modules", "model", "data", "masking", "train", "evaluate"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name in ("ITEACHNet", "ITEACHModel"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'iteach_fast' has no attribute {name!r}")
