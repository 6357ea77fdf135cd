"""Files the package writes. A leaf module: every tier may import it.

* :func:`check_output` — every output (a file or a folder) is checked before any work starts:
  it is not one of the command's inputs (a checkpoint, a data file), a file is not a folder
  and a folder is not a file, and the place is proven writable (a probe file created and
  removed). A refusal is an :class:`OutputError` naming the argument and the path.
* :func:`atomic_write` — every output file is written atomically (a reader never sees half a
  file, a crash never leaves one); a failed write (a full disk) is an :class:`OutputError`
  naming the file, the previous version intact.
"""
from __future__ import annotations

import os

__all__ = ["OutputError", "check_output", "atomic_write", "same_path"]


class OutputError(ValueError, OSError):
    """An output cannot be written where asked; the message names the argument or the path and
    why. A ValueError (a bad argument) and an OSError (what the file system said)."""


def same_path(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name the same file or folder (links and ``./`` resolved)."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _probe(folder: str) -> None:
    """Create ``folder`` if needed and write and remove a probe file in it."""
    os.makedirs(folder, exist_ok=True)
    probe = os.path.join(folder, f".write-probe-{os.getpid()}")
    try:
        with open(probe, "wb") as f:
            f.write(b"probe")
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def check_output(path: str, what: str = "--out", folder: bool = False, inputs=()) -> str:
    """``path`` if it can take this command's output, checked before any work starts; an
    :class:`OutputError` naming ``what`` (the argument) otherwise.

    ``folder``: the output is a folder (created if needed), else a file (its folder created if
    needed). ``inputs``: the paths the command reads (a checkpoint, data files or folders);
    the output may be none of them."""
    if not path:
        raise OutputError(f"{what}: an empty path; expected a {'folder' if folder else 'file'} to write")
    for source in inputs:
        if source and same_path(path, source):
            raise OutputError(f"{what} {path}: is also an input of this command ({source}); writing there would "
                              f"destroy it: choose another {'folder' if folder else 'file'}")
    if folder:
        if os.path.exists(path) and not os.path.isdir(path):
            raise OutputError(f"{what} {path}: is a file; expected a folder to write into")
        where = path
    else:
        if os.path.isdir(path):
            raise OutputError(f"{what} {path}: is a folder; expected a file path to write")
        where = os.path.dirname(os.path.abspath(path))
    try:
        _probe(where)
    except OSError as err:
        raise OutputError(f"{what} {path}: not a writable {'folder' if folder else 'file path'} "
                          f"({err.strerror or err}{': ' + str(err.filename) if err.filename else ''})") from None
    if not folder and os.path.exists(path) and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path}: the file exists and is read-only")
    return path


def atomic_write(path: str, data: str | bytes) -> str:
    """Write ``data`` (text gets a trailing newline) to ``path`` atomically; returns ``path``.
    A failed write (no space left, no permission) is an :class:`OutputError` naming ``path``;
    the previous file, if any, is left as it was and no temporary file remains."""
    folder = os.path.dirname(os.path.abspath(path))
    if isinstance(data, str):
        data = (data if data.endswith("\n") else data + "\n").encode()
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({err.strerror or err})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
