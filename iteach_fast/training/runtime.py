"""Where and how a run computes: the device, the precision (autocast), threads and seeds.

One owner for these so that training, evaluation and the command line resolve them the
same way and fail the same way (a ``ValueError`` naming the flag) before any work starts.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from ..choices import PRECISIONS, check_choice

__all__ = ["resolve_device", "check_precision", "autocast", "op_dtype", "seed_everything", "set_threads"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (CUDA if available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"--device {device!r} is not a device (use auto, cpu, cuda or cuda:N)") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: runs use cpu or cuda (use auto, cpu, cuda or cuda:N)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_precision(precision: str, device: torch.device) -> str:
    """``fp32``, or ``bf16`` / ``fp16`` (autocast), which run on a GPU only."""
    check_choice("--dtype", precision, PRECISIONS)
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"--dtype {precision} needs a CUDA device (mixed precision is used on GPU only); "
                         f"this run is on {device}: use --dtype fp32")
    return precision


def autocast(device: torch.device, precision: str, cache: bool = True):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32). ``cache=False``
    inside CUDA-graph capture (autocast's weight cache would outlive the graph's memory)."""
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=op_dtype(precision), cache_enabled=cache)


def op_dtype(precision: str) -> torch.dtype:
    """The dtype the fused operators see under ``precision`` (autocast's compute dtype)."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    """torch's CPU threads (0 leaves torch's default)."""
    if threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)
