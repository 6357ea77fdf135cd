"""Files a run writes: atomic writes, checkpoints, and the RNG state they carry.

Every file the package writes goes through :func:`atomic_write` (a temporary file in the
same folder, then ``os.replace``), so a reader never sees half a file and an interrupted
write leaves the previous version intact.
"""
from __future__ import annotations

import io
import os
import random

import numpy as np
import torch

__all__ = ["CHECKPOINT_VERSION", "atomic_write", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]

CHECKPOINT_VERSION = 1


def atomic_write(path: str, data: str | bytes) -> str:
    """Write ``data`` (text gets a trailing newline) to ``path`` atomically; returns ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = (data if data.endswith("\n") else data + "\n").encode()
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_checkpoint(path: str, **payload) -> str:
    """``torch.save`` of ``{"version", **payload}``, written atomically."""
    buffer = io.BytesIO()
    torch.save({"version": CHECKPOINT_VERSION, **payload}, buffer)
    return atomic_write(path, buffer.getvalue())


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """A checkpoint written by :func:`save_checkpoint` (``weights_only``: no code runs on load)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many kinds
        raise ValueError(f"{path}: not an iteach-fast checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not an iteach-fast checkpoint (expected keys model, config)")
    return ckpt


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """The global RNG states (torch, CUDA, numpy, python) and ``generators``', loadable with ``weights_only``."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             # numpy's state as a tensor and plain numbers, so the checkpoint loads with weights_only=True
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])),
             **{f"gen_{k}": g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    for k, g in generators.items():
        g.set_state(state[f"gen_{k}"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
