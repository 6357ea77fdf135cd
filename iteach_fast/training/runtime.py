"""Where and how a run computes: the device, the precision (autocast), CPU threads and seeds.

One owner for these so that training, evaluation, the demo, reproduce and predict resolve
them the same way and fail the same way (a ``ValueError`` naming the flag) before any work
starts.

CPU threads (:func:`resolve_threads`, applied by :func:`set_threads`): ``--threads N`` is N;
``--threads all`` (:data:`THREADS_ALL`) every core this process may use; ``--threads 0``
(the default) the cores this process may use — its CPU affinity and its cgroup's CPU quota
(cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) — shared by the processes that run beside
it on this machine (``reproduce --jobs``, torchrun's ``LOCAL_WORLD_SIZE``). When the
machine's 1-minute load leaves fewer cores free than that, a one-line note says so.

What made training collapse on a shared machine (ten times slower and more) was not the
thread count but OpenMP's waiting: a thread that finishes its share of a parallel region
spins until the others finish, taking the core that the thread it waits for needs. The
command line therefore asks OpenMP to put waiting threads to sleep (:func:`passive_openmp`),
which must happen before torch loads OpenMP: this module imports torch only inside the
functions that use it. With sleeping threads, bench/threads.py measured every core (the
default) within 1.1x of one thread on a busy machine and the fastest with more load added,
where fewer threads lose their share of the CPUs: so the default does not shrink with the
load.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import sys
from typing import TYPE_CHECKING

from ..choices import PRECISIONS, check_choice

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device", "check_precision", "autocast", "op_dtype", "seed_everything", "set_threads",
           "resolve_threads", "parse_threads", "usable_cores", "cpu_quota", "local_processes", "load_average",
           "passive_openmp", "THREADS_AUTO", "THREADS_ALL"]

#: ``--threads 0``: fit the machine (see the module's docstring)
THREADS_AUTO = 0
#: ``--threads all`` (or -1): every core this process may use, whatever else runs
THREADS_ALL = -1


def parse_device(device: str | torch.device, name: str = "--device") -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a device, whether or not this machine has it;
    anything else is a ``ValueError`` naming ``name``."""
    import torch  # here, not at the top: the command line's help reads this module without torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{name} {device!r} is not a device (use auto, cpu, cuda or cuda:N)") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} {device!r}: runs use cpu or cuda (use auto, cpu, cuda or cuda:N)")
    return dev


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (CUDA if available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = parse_device(device)
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
    import torch

    return torch.autocast("cuda", dtype=op_dtype(precision), cache_enabled=cache)


def op_dtype(precision: str) -> torch.dtype:
    """The dtype the fused operators see under ``precision`` (autocast's compute dtype)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators from one seed."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- CPU threads

def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_quota(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """The CPUs this process's cgroup may use (its quota over its period, the tightest of its
    own and its ancestors'), or None without a quota. cgroup v2 (``cpu.max``: ``"max 100000"``
    or ``"200000 100000"``) and v1 (``cpu.cfs_quota_us``, -1 without a quota, over
    ``cpu.cfs_period_us``); a container whose cgroup path is not visible reads its mount's root."""
    text = _read(proc_cgroup)
    if text is None:
        return None
    limits = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        path = path.strip("/")
        if controllers == "":  # v2: one unified hierarchy
            mounts, read = [cgroup_root], _v2_limit
        elif "cpu" in controllers.split(","):
            mounts = [os.path.join(cgroup_root, name) for name in (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu")]
            read = _v1_limit
        else:
            continue
        for mount in dict.fromkeys(mounts):
            if not os.path.isdir(mount):
                continue
            folders = [path] if path else []
            while folders and folders[-1]:
                folders.append(os.path.dirname(folders[-1]))
            for folder in folders + [""]:  # the process's cgroup, its ancestors, the mount's root
                limit = read(os.path.join(mount, folder))
                if limit is not None:
                    limits.append(limit)
            break
    return min(limits) if limits else None


def _v2_limit(folder: str) -> float | None:
    text = _read(os.path.join(folder, "cpu.max"))
    if not text:
        return None
    quota, _, period = text.partition(" ")
    try:
        return None if quota == "max" else int(quota) / int(period or 100000)
    except (ValueError, ZeroDivisionError):
        return None


def _v1_limit(folder: str) -> float | None:
    quota, period = _read(os.path.join(folder, "cpu.cfs_quota_us")), _read(os.path.join(folder, "cpu.cfs_period_us"))
    try:
        quota, period = int(quota), int(period)
    except (TypeError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's CPU quota
    (rounded down, at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota + 1e-9)))
    return max(1, cores)


def local_processes() -> int:
    """The processes of this job on this machine: torchrun's ``LOCAL_WORLD_SIZE`` (1 outside it)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable threads), or None where unknown."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def parse_threads(text) -> int:
    """``--threads``' value: an int >= 0, or ``all`` (or -1): :data:`THREADS_ALL`."""
    if isinstance(text, str) and text.strip().lower() == "all":
        return THREADS_ALL
    value = None
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif isinstance(text, float) and text.is_integer():
        value = int(text)
    elif isinstance(text, str) and text.strip().lstrip("-").isdigit():
        value = int(text)
    if value is None or value < THREADS_ALL:
        raise ValueError(f"threads must be an int >= 0 (0: fit the machine) or 'all' (every core, also -1), "
                         f"got {text!r}")
    return value


def resolve_threads(threads: int = THREADS_AUTO, processes: int | None = None, load: float | None = None,
                    cores: int | None = None, machine: int | None = None) -> tuple[int, str | None]:
    """``(the CPU threads a process should use, a one-line note or None)``.

    ``threads``: N, :data:`THREADS_ALL` or :data:`THREADS_AUTO` (see the module's docstring).
    ``processes``: the processes sharing this machine's cores with this one (default:
    :func:`local_processes`). ``load`` (the 1-minute load average), ``cores``
    (:func:`usable_cores`) and ``machine`` (the machine's CPUs) default to this machine's.
    The note says when the cores are shared or busy: an explicit N above what the machine can
    give is kept (it was asked for), and named."""
    threads = parse_threads(threads)
    processes = local_processes() if processes is None else max(1, int(processes))
    cores = usable_cores() if cores is None else max(1, int(cores))
    machine = (os.cpu_count() or cores) if machine is None else max(1, int(machine))
    load = load_average() if load is None else load
    if threads == THREADS_ALL:
        return cores, None
    share = max(1, cores // processes)
    # the load counts every runnable thread on the machine (containers see the host's load,
    # against the host's CPUs); what it leaves free is what a new thread can expect to get
    free = None if load is None else max(0, math.floor(machine - load + 0.5))
    if threads == THREADS_AUTO:
        note = None
        if free is not None and free < share * processes:
            note = (f"{share} CPU thread{'s' if share != 1 else ''}"
                    + (f" in each of {processes} processes" if processes > 1 else "")
                    + f": the machine's 1-minute load ({load:.1f} on {machine} CPUs) leaves {free} free; "
                    "other work shares the cores, so steps will be slower than on an idle machine")
        return share, note
    asked = threads * processes
    if asked > cores:
        what = f"{threads} thread{'s' if threads != 1 else ''}" + (f" x {processes} processes" if processes > 1 else "")
        return threads, (f"--threads {threads}: {what} on {cores} usable core{'s' if cores != 1 else ''}: "
                         "threads wait for one another (--threads 0 fits the machine)")
    if free is not None and free < asked:
        return threads, (f"--threads {threads}: the machine's 1-minute load ({load:.1f} on {machine} CPUs) leaves "
                         f"{free} core{'s' if free != 1 else ''} free: expect slow steps (--threads 0 fits the load)")
    return threads, None


def set_threads(threads: int = THREADS_AUTO, processes: int | None = None, log=None) -> int:
    """Resolve ``threads`` (:func:`resolve_threads`) and give torch that many intra-op threads;
    returns the count. Its note, if any, goes to ``log`` (default: one line on stderr)."""
    import torch

    count, note = resolve_threads(threads, processes)
    if note:
        (log or (lambda text: print(text, file=sys.stderr, flush=True)))(f"note: {note}")
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def passive_openmp() -> bool:
    """Ask OpenMP to put a waiting thread to sleep at once rather than spin (``OMP_WAIT_POLICY=
    PASSIVE``), unless the environment already says how; True when it takes effect. Spinning
    threads take the cores that the thread they wait for needs, which on a busy machine turned a
    step of milliseconds into seconds (bench/threads.py). OpenMP reads the setting once, when
    torch loads it: called before torch is imported, else it changes nothing."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
