"""The measuring instrument: time, peak memory, the device's ceilings, the environment.

* GPU: ``triton.testing.do_bench`` (it flushes L2 between calls) after an explicit warm-up,
  median and the 20th/80th percentiles; peak memory is ``torch.cuda.max_memory_allocated``
  during one call, above what was allocated before it (so the inputs are excluded).
* CPU: pytest-benchmark's timer (``pytest_benchmark.timers.default_timer``; the
  ``time.perf_counter`` it wraps where pytest-benchmark is missing) around each call after a
  warm-up; peak memory is the rise of the process's resident-set high-water
  mark (``VmHWM``, reset through ``/proc/self/clear_refs``) over its RSS before the call —
  approximate (the allocator may reuse memory it already holds), and ``None`` where Linux
  does not offer the reset.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MEM_CUDA = "cuda-max-allocated"
MEM_RSS = "rss-hwm-delta"


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    rounds: int
    timer: str


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], None], device: torch.device, quick: bool = False) -> Timing:
    """Median / p20 / p80 of one call of ``fn`` in milliseconds, warm-up excluded."""
    for _ in range(2):  # compiles, autotunes, fills the allocator's cache
        fn()
    synchronize(device)
    if device.type == "cuda":
        import triton.testing

        rep = 60 if quick else 150
        med, p20, p80 = triton.testing.do_bench(fn, warmup=10, rep=rep, quantiles=[0.5, 0.2, 0.8])
        n = max(1, int(rep / max(med, 1e-3)))
        return Timing(med, p20, p80, n, "triton.testing.do_bench")
    default_timer, timer_name = _cpu_timer()
    budget_s, min_rounds, max_rounds = (0.5, 3, 50) if quick else (2.0, 5, 200)
    times, spent = [], 0.0
    while len(times) < max_rounds and (len(times) < min_rounds or spent < budget_s):
        start = default_timer()
        fn()
        elapsed = default_timer() - start
        times.append(elapsed * 1e3)
        spent += elapsed
    return Timing(*_quantiles(times), len(times), timer_name)


def _cpu_timer() -> tuple[Callable[[], float], str]:
    """pytest-benchmark's timer; ``time.perf_counter`` (which it wraps) where it is not installed."""
    try:
        from pytest_benchmark.timers import default_timer
    except ImportError:  # e.g. a GPU machine with torch and triton preinstalled and no network
        return time.perf_counter, "time.perf_counter"
    return default_timer, "pytest_benchmark.timers.default_timer"


def _quantiles(times_ms: list[float]) -> tuple[float, float, float]:
    if len(times_ms) == 1:
        return times_ms[0], times_ms[0], times_ms[0]
    deciles = statistics.quantiles(times_ms, n=10, method="inclusive")
    return statistics.median(times_ms), deciles[1], deciles[7]


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], None], device: torch.device) -> tuple[int | None, str]:
    """``(bytes, method)``: the peak extra memory of one call of ``fn`` (already warm)."""
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, MEM_CUDA
    if not _reset_rss_peak():
        return None, "n/a (no /proc/self/clear_refs)"
    base = _proc_status_kb("VmRSS")
    fn()
    return max(0, _proc_status_kb("VmHWM") - base) * 1024, MEM_RSS


# ----------------------------------------------------------------------------- ceilings

def ceilings(device: torch.device, dtypes) -> dict:
    """The device's copy bandwidth (bytes/s, read + write counted) and large-matmul FLOP rate per
    dtype, measured now with the same timer as the cases: the denominators of the roofline plot."""
    quick_copy = 64 * 2**20 if device.type == "cpu" else 1024 * 2**20  # bytes per buffer
    src = torch.empty(quick_copy // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_call(lambda src=src, dst=dst: dst.copy_(src), device, quick=True)
    copy_bw = 2 * src.numel() * 4 / (t.median_ms * 1e-3)
    max_n = 2048 if device.type == "cpu" else 8192
    matmul, sizes = {}, {}
    for name in dtypes:
        dtype = getattr(torch, name)
        n = sizes[name] = _matmul_size(device, dtype, max_n)
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        t = time_call(lambda a=a, b=b: a @ b, device, quick=True)
        matmul[name] = 2 * n**3 / (t.median_ms * 1e-3)
    return {"copy_bytes_per_s": copy_bw, "copy_method": "dst.copy_(src), float32, read+write bytes",
            "matmul_flops_per_s": matmul,
            "matmul_method": "n x n @ n x n per dtype, n = " + ", ".join(f"{k} {v}" for k, v in sizes.items())
                             + " (TF32 as torch's default)"}


def _matmul_size(device: torch.device, dtype: torch.dtype, max_n: int, budget_s: float = 0.5) -> int:
    """The largest power-of-two n <= max_n whose n x n matmul takes at most about budget_s: a CPU
    without bfloat16 units needs minutes for one 2048^3 bfloat16 matmul."""
    n = 256
    while n < max_n:
        a = torch.randn(n, n, device=device).to(dtype)
        a @ a  # warm-up (library initialisation)
        synchronize(device)
        start = time.perf_counter()
        a @ a
        synchronize(device)
        if 8 * (time.perf_counter() - start) > budget_s:  # the next size costs 8 times as much
            break
        n *= 2
    return n


# ----------------------------------------------------------------------------- environment

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48].strip("-")


def device_slug(device: torch.device) -> str:
    """A file-name-safe device name, e.g. ``nvidia-h100-80gb-hbm3`` or ``cpu-intel-xeon-...``."""
    name = slug(device_name(device).replace("(R)", "").replace("(TM)", "").replace("CPU", ""))
    return name if device.type == "cuda" else f"cpu-{name}"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: torch.device) -> dict:
    """Versions, device and commit: what a reader needs to reproduce a result (no paths, no host names)."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "device": device_name(device),
        "device_type": device.type,
        "device_slug": device_slug(device),
        "cpu_threads": torch.get_num_threads(),
        "platform": f"{platform.system()} {platform.machine()}",
        "git_commit": commit,
        "git_dirty": bool(dirty) if dirty is not None else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_bytes"] = props.total_memory
        env["compute_capability"] = f"{props.major}.{props.minor}"
    return env
