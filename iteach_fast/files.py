"""Files the package writes: every output goes through :func:`atomic_write` (a reader never
sees half a file, a crash never leaves one). A leaf module: every tier may import it.
"""
from __future__ import annotations

import os

__all__ = ["atomic_write"]


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
