"""The argument rules every tier shares, each stated once: the public operators, the modules
and the configuration all call these, so a rule (and its message) cannot drift between
them. A leaf module: no torch, nothing of the package but the names of ``choices`` (the command
line's help stays light).
"""
from __future__ import annotations

from .choices import IEMOCAP_FOLDS

__all__ = ["MAX_INT", "check_int", "check_odd", "check_heads", "check_fold"]

#: the largest dist / pool_size / length: the kernels take them as 32-bit ints
MAX_INT = 2**31 - 1


def check_int(name: str, value, minimum: int = 0) -> int:
    """``value`` if it is an int in ``[minimum, 2**31 - 1]``; else a ``TypeError`` /
    ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > MAX_INT:
        raise ValueError(f"{name} must be <= 2**31 - 1 (the kernels take a 32-bit int), got {value}")
    return value


def check_odd(name: str, value) -> int:
    """A window width: an odd int >= 1 (a window centred on each position)."""
    check_int(name, value, 1)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd (a window centred on each position), got {value}")
    return value


def check_heads(dim, heads) -> None:
    """Attention heads: ``heads >= 1`` dividing ``dim >= 1``."""
    check_int("dim", dim, 1)
    check_int("heads", heads, 1)
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")


def check_fold(dataset: str, fold) -> None:
    """IEMOCAP's folds are its five sessions; other datasets have one split (any fold reads it)."""
    if dataset.startswith("iemocap") and fold not in IEMOCAP_FOLDS:
        raise ValueError(f"--fold {fold}: {dataset}'s folds are its sessions 1..5 (fold k tests on Session k)")
