"""Files a run writes: atomic writes, checkpoints, the RNG state they carry, and the lock
that gives a run its folder.

Every file the package writes goes through :func:`atomic_write` (a temporary file in the
same folder, then ``os.replace``), so a reader never sees half a file and an interrupted
write leaves the previous version intact. A run holds :func:`run_lock` on its folder, so
two runs cannot interleave their ``best.pt`` / ``last.pt``. :func:`load_weights` compares
a checkpoint's weights with the model its stored config builds before loading them, so a
mismatch is reported as the hyper-parameters that differ, not as a tensor shape error, and
checks every weight finite (a NaN weight would otherwise evaluate as class 0 everywhere).
:func:`load_checkpoint` refuses a checkpoint of a newer format than :data:`CHECKPOINT_VERSION`.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import io
import json
import numbers
import os
import random
import re
import socket

import numpy as np
import torch

from ..data.sources import splits_for
from ..files import atomic_write, check_output
from ..nn.model import ITEACHNet
from .config import TrainConfig
from .runtime import resolve_device

__all__ = ["CHECKPOINT_VERSION", "CheckpointError", "RunDirBusy", "atomic_write", "save_checkpoint",
           "load_checkpoint", "require_keys", "load_weights", "check_weights", "check_finite", "weights_hparams",
           "rng_state", "set_rng_state", "run_lock", "load_model", "load_for_eval"]

#: the format :func:`save_checkpoint` writes; :func:`load_checkpoint` reads this one and older
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be used as asked; the message names the file and what is wrong."""


class RunDirBusy(RuntimeError):
    """Another live run holds the output folder; the message names it (pid, host, start time)."""


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
    version = ckpt.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, numbers.Integral) or version < 0:
        raise CheckpointError(f"{path}: the checkpoint's format version is {version!r}; expected an integer "
                              f"0..{CHECKPOINT_VERSION}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: written by a newer iteach-fast (checkpoint format {version}; this one reads "
                              f"format {CHECKPOINT_VERSION} and older): upgrade iteach-fast to use it")
    return ckpt


def require_keys(ckpt: dict, path: str, keys, purpose: str) -> None:
    """One error naming every key of ``keys`` that ``ckpt`` lacks for ``purpose``."""
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: cannot {purpose}: the checkpoint has no {', '.join(missing)} "
                              f"(it holds {', '.join(sorted(ckpt))}); resume from a last.pt written by `train`")


# ----------------------------------------------------------------------------- weights vs config

# what a weight's shape reveals about the hyper-parameters that built it: (key pattern,
# hyper-parameter, the value from the matched tensor). ``{role}`` is teacher or student.
_REVEALS = (
    (r"(?P<role>teacher|student)\.proj\.0\.weight", "dim", lambda t: t.shape[0]),
    (r"(?P<role>teacher|student)\.proj\.(?P<m>\d)\.weight", "input dim {m} (text, audio, visual)",
     lambda t: t.shape[1]),
    (r"(?P<role>teacher|student)\.classifier\.weight", "num_classes (data)", lambda t: t.shape[0]),
    (r"(?P<role>teacher|student)\.ecce\.0\.fc\.weight", "heads", lambda t: t.shape[0]),
    (r"(?P<role>teacher|student)\.ecce\.0\.conv\.weight", "conv_kernel", lambda t: t.shape[-1]),
    (r"(?P<role>teacher|student)\.layers\.0\.enc_t\.ffn\.0\.weight", "ffn width (dim x ffn_ratio)",
     lambda t: t.shape[0]),
    (r"(?P<role>teacher|student)\.layers\.0\.enc_t\.mixer\.mlp\.fc1\.weight", "{role} max_len",
     lambda t: t.shape[1]),
    (r"(?P<role>teacher|student)\.layers\.0\.enc_t\.mixer\.mlp\.fc1\.weight",
     "{role} NAS MLP width (max_len x mlp_ratio)", lambda t: t.shape[0]),
)


def weights_hparams(state: dict) -> dict:
    """The hyper-parameters a state dict's keys and shapes reveal (layers, mixers, widths)."""
    found = {}
    roles = sorted({k.split(".", 1)[0] for k in state if k.startswith(("teacher.", "student."))})
    found["framework"] = "two models (its / ts)" if "teacher" in roles else "one model (pre)"
    for role in roles:
        layers = {int(m.group(1)) for k in state if (m := re.match(rf"{role}\.layers\.(\d+)\.", k))}
        found[f"{role}_layers"] = max(layers) + 1 if layers else 0
        found[f"{role}_mixer"] = "nas" if f"{role}.layers.0.enc_t.mixer.router.weight" in state else "tf"
    found["recurrent"] = any(".recurrence." in k for k in state)
    for key, t in state.items():
        for pattern, name, value in _REVEALS:
            m = re.fullmatch(pattern, key)
            if m:
                found.setdefault(name.format(**m.groupdict()), int(value(t)))
    return found


def load_weights(net: torch.nn.Module, state: dict, path: str) -> None:
    """``net.load_state_dict(state)`` after :func:`check_weights` (``net`` is the model the
    config stored in ``path`` builds)."""
    check_weights(net.state_dict(), state, path)
    check_finite(state, path)
    net.load_state_dict(state)


def check_finite(state: dict, path: str) -> None:
    """Every floating-point tensor of ``state`` (a checkpoint's weights) finite; else one
    :class:`CheckpointError` naming the tensors (a NaN weight makes every output NaN, whose
    argmax is class 0: a plausible-looking, meaningless evaluation)."""
    bad = [k for k, t in state.items() if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values ({', '.join(bad[:3])}"
                              f"{' ...' if len(bad) > 3 else ''}); the file is damaged or was written after the run "
                              "diverged: use an earlier checkpoint")


def check_weights(expected: dict, state: dict, path: str) -> None:
    """Every key and shape of ``state`` (a checkpoint's weights) as in ``expected`` (the state
    dict of the model its config builds; meta tensors will do); a mismatch is one
    :class:`CheckpointError` listing the hyper-parameters that differ."""
    if set(expected) == set(state) and all(expected[k].shape == state[k].shape for k in expected):
        return
    built, stored = weights_hparams(expected), weights_hparams(state)
    differ = [f"{k}: config {built.get(k, '-')}, weights {stored.get(k, '-')}"
              for k in sorted(set(built) | set(stored)) if built.get(k) != stored.get(k)]
    inputs = [k for k in built if k.startswith("input dim") and k in stored and built[k] != stored[k]]
    if inputs and all(abs(built[k] - stored[k]) == 3 for k in inputs):  # what the presence flags add
        more = built[inputs[0]] > stored[inputs[0]]
        differ.append(f"presence (likely: every input width differs by 3): config {more}, weights {not more}")
    if not differ:  # nothing the table knows: name the tensors
        bad = sorted(set(expected) ^ set(state)) + [k for k in expected if k in state
                                                    and expected[k].shape != state[k].shape]
        differ = [f"tensors {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"]
    raise CheckpointError(f"{path}: the weights do not match the config stored with them ({'; '.join(differ)}); "
                          "the file was edited or written by another version: retrain, or fix its config")


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


# ----------------------------------------------------------------------------- the run folder

@contextlib.contextmanager
def run_lock(folder: str):
    """Hold ``<folder>/.lock`` (``fcntl.flock``) for a run's duration.

    A second run into the folder fails at once with :class:`RunDirBusy` naming the holder
    (pid, host, start time). The OS releases the lock when its process dies, so the lock of
    a killed run is taken over by the next one."""
    path = os.path.join(check_output(folder, "--out-dir", folder=True), ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            try:
                holder = json.loads(f.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            raise RunDirBusy(f"--out-dir {folder}: another run is writing there (pid {holder.get('pid', '?')} on "
                             f"{holder.get('host', '?')}, started {holder.get('started', '?')}); wait for it, "
                             "stop it, or choose another --out-dir") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": datetime.datetime.now().isoformat(timespec="seconds")}))
        f.flush()
        try:
            yield path
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_model(path: str, device: str = "auto", backend: str | None = None):
    """``(net, cfg, ckpt)``: the checkpoint's net in eval mode on ``device``, built from its stored
    config and data description (``ckpt["data"]``: input dims, classes) without reading any data.
    The one loader behind evaluation, prediction and streaming."""
    ckpt = load_checkpoint(path)
    cfg = TrainConfig.from_dict(ckpt["config"], source=path)
    if backend:
        cfg = cfg.replace(backend=backend)
    data = ckpt.get("data")
    if not isinstance(data, dict) or not {"input_dims", "num_classes"} <= set(data):
        raise CheckpointError(f"{path}: the checkpoint does not describe its data (input_dims, num_classes); "
                              "it was not written by `iteach-fast train`")
    net = ITEACHNet.from_config(cfg.model, data["input_dims"], data["num_classes"])
    load_weights(net, ckpt["model"], path)  # the config vs the weights: one message naming what differs
    net.to(resolve_device(device)).eval()
    return net, cfg, ckpt


def load_for_eval(path: str, device: str = "auto", backend: str | None = None):
    """``(net, cfg, splits, ckpt)``: :func:`load_model` and the data its config names."""
    net, cfg, ckpt = load_model(path, device, backend)
    splits = splits_for(cfg)
    if list(splits.input_dims) != list(ckpt["data"]["input_dims"]):
        raise CheckpointError(f"{path}: trained on features of dims {list(ckpt['data']['input_dims'])}, but "
                              f"its data now has {list(splits.input_dims)}")
    return net, cfg, splits, ckpt
