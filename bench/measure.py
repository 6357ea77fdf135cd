"""The measuring instrument: time, peak memory, the device's ceilings, the environment.

* Timing compares providers in interleaved rounds (:func:`time_interleaved`): every provider
  of one case is warmed up, then called in turn, round after round, and each gets the
  median and the 20th/80th percentiles of its calls — the machine may be shared and noisy,
  and interleaving spreads its noise over every provider alike.
* GPU: ``triton.testing.do_bench`` (it flushes L2 between calls), a short one per provider
  per round; peak memory is ``torch.cuda.max_memory_allocated`` during one call, above what
  was allocated before it (so the inputs are excluded).
* CPU: pytest-benchmark's timer (``pytest_benchmark.timers.default_timer``; the
  ``time.perf_counter`` it wraps where pytest-benchmark is missing) around each call; peak
  memory is the rise of the process's resident-set high-water mark (``VmHWM``, reset
  through ``/proc/self/clear_refs``) over its RSS before the call — approximate (the
  allocator may reuse memory it already holds), and ``None`` where Linux does not offer the reset.
* Ceilings (:func:`ceilings`): copy bandwidth and matmul rate per dtype, each the best of
  several tries, measured next to the cases they divide.
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


def warm_up(fn: Callable[[], None], device: torch.device, calls: int = 2) -> None:
    """Compiles, autotunes and fills the allocator's cache: kept out of every timing."""
    for _ in range(calls):
        fn()
    synchronize(device)


#: per level: (seconds of calls per provider, min rounds, max rounds) on the CPU; do_bench's rep (ms) on a GPU
LEVELS = {"smoke": ((0.0, 1, 1), 15), "quick": ((0.5, 3, 50), 60), "full": ((2.0, 5, 200), 150)}


def time_interleaved(fns: dict, device: torch.device, level: str = "full", max_calls: dict | None = None,
                     min_rounds: int = 0) -> dict:
    """``{key: Timing or the exception it raised}`` for each (already warm) no-argument callable
    of ``fns``, measured in interleaved rounds — one call (CPU) or one short ``do_bench`` (GPU)
    of each in turn — so a change of load on a shared machine hits every provider alike.
    ``level``: how long (:data:`LEVELS`: ``smoke`` checks that it runs, ``quick``, ``full``).
    ``max_calls[key]`` caps the calls of a callable that can be called only so often; on the
    CPU, ``min_rounds`` raises the level's least number of rounds (not at ``smoke``)."""
    max_calls = max_calls or {}
    results: dict = {}
    if device.type == "cuda":
        import triton.testing

        rounds, rep = 3, LEVELS[level][1]
        samples = {key: [] for key in fns}
        for _ in range(rounds):
            for key, fn in fns.items():
                if key in results:
                    continue
                try:
                    samples[key] += triton.testing.do_bench(fn, warmup=5, rep=max(5, rep // rounds),
                                                            return_mode="all")
                except Exception as err:  # noqa: BLE001 - one provider failing is its result
                    results[key] = err
        for key, times in samples.items():
            if key not in results:
                results[key] = Timing(*_quantiles(times), len(times), f"triton.testing.do_bench, {rounds} rounds")
        return results
    default_timer, timer_name = _cpu_timer()
    budget_s, level_rounds, max_rounds = LEVELS[level][0]
    min_rounds = level_rounds if level == "smoke" else max(level_rounds, min_rounds)
    times = {key: [] for key in fns}
    spent = dict.fromkeys(fns, 0.0)

    def wants_more(key) -> bool:
        n = len(times[key])
        if key in results or n >= min(max_rounds, max_calls.get(key, max_rounds)):
            return False
        return n < min_rounds or spent[key] < budget_s

    while any(wants_more(key) for key in fns):
        for key, fn in fns.items():
            if not wants_more(key):
                continue
            start = default_timer()
            try:
                fn()
            except Exception as err:  # noqa: BLE001
                results[key] = err
                continue
            elapsed = default_timer() - start
            times[key].append(elapsed * 1e3)
            spent[key] += elapsed
    for key, ts in times.items():
        if key not in results:
            results[key] = Timing(*_quantiles(ts), len(ts), timer_name + ", interleaved") if ts else \
                RuntimeError("no call could be timed")
    return results


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

def ceilings(device: torch.device, dtypes, tries: int = 5, label: str = "", small: bool = False) -> dict:
    """The device's copy bandwidth (bytes/s, read + write counted) and large-matmul FLOP rate
    per dtype: the denominators of the roofline. Each is the best of ``tries`` timed calls,
    the copy and the matmuls taken in turn, so a moment of load on a shared machine lowers
    one try, not the ceiling. Measured next to the cases they divide (``bench.run`` does it
    per op); ``label`` says where. ``small``: tiny buffers, for a smoke run (not a ceiling)."""
    copy_bytes = (16 if small else 64 if device.type == "cpu" else 1024) * 2**20  # per buffer: beyond the caches
    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    max_n = 256 if small else 2048 if device.type == "cpu" else 8192
    calls = {"copy": lambda: dst.copy_(src)}
    sizes = {}
    for name in dtypes:
        dtype = getattr(torch, name)
        n = sizes[name] = _matmul_size(device, dtype, max_n)
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        calls[name] = lambda a=a, b=b: a @ b
    for fn in calls.values():
        warm_up(fn, device, calls=1)
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(tries):
        for key, fn in calls.items():
            best[key] = min(best[key], _fastest_ms(fn, device))
    return {"copy_bytes_per_s": 2 * copy_bytes / (best["copy"] * 1e-3),
            "copy_method": f"dst.copy_(src), float32, {copy_bytes >> 20} MiB, read+write bytes, best of {tries}",
            "matmul_flops_per_s": {name: 2 * n**3 / (best[name] * 1e-3) for name, n in sizes.items()},
            "matmul_method": f"n x n @ n x n per dtype, best of {tries}, n = "
                             + ", ".join(f"{k} {v}" for k, v in sizes.items()) + " (TF32 as torch's default)",
            "label": label}


def _fastest_ms(fn: Callable[[], object], device: torch.device) -> float:
    """One try, in ms: one call on the CPU, the fastest of a short ``do_bench`` on a GPU."""
    if device.type == "cuda":
        import triton.testing

        return min(triton.testing.do_bench(fn, warmup=1, rep=10, return_mode="all"))
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def best_ceilings(samples: list[dict]) -> dict:
    """One ceiling set from several: the highest copy bandwidth and matmul rate seen."""
    if not samples:
        return {}
    out = {**samples[0], "label": "best of every measurement in the run"}
    out["copy_bytes_per_s"] = max(s["copy_bytes_per_s"] for s in samples)
    out["matmul_flops_per_s"] = {d: max(s["matmul_flops_per_s"].get(d, 0.0) for s in samples)
                                 for d in samples[0]["matmul_flops_per_s"]}
    return out


def _matmul_size(device: torch.device, dtype: torch.dtype, max_n: int, budget_s: float = 0.5) -> int:
    """The largest power-of-two n <= max_n whose n x n matmul takes at most about budget_s: a CPU
    without bfloat16 units needs minutes for one 2048^3 bfloat16 matmul."""
    n = min(256, max_n)
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


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable processes): above the core count, the
    measured process waits for cores and its timings (not only its own) suffer."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def environment(device: torch.device) -> dict:
    """Versions, device and commit: what a reader needs to reproduce a result (no paths, no host names)."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    commit = _git("rev-parse", "HEAD")
    # the code's changes, not the results an appending run is adding to
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results")
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
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "platform": f"{platform.system()} {platform.machine()}",
        "git_commit": commit,
        "git_dirty": bool(dirty) if dirty is not None else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_bytes"] = props.total_memory
        env["compute_capability"] = f"{props.major}.{props.minor}"
    return env
