"""CPU threads on a shared machine: the demo's training with the default thread count
(``--threads 0``) against ``--threads 1`` and ``--threads all``, on the machine as it is and
with background load (busy processes started beside it).

    python -m bench.threads                       # 3 rounds x 2 conditions x 3 settings, 3 epochs each
    python -m bench.threads --rounds 5 --epochs 2 --load 2 --out runs/bench-threads
    python -m bench.threads --before              # also the old default: every core, OpenMP spinning

Each measurement is one ``iteach-fast train`` process with the demo's settings (its synthetic
conversations, model and schedule; fewer epochs), timed by what the run itself records: the
seconds of its epochs (training and validation; not the start-up). The settings run in
interleaved rounds (their order rotates every round) and each cell is the median over the
rounds, so a machine whose other work comes and goes weighs on every setting alike. The
target (issue 23): the default within 1.3x of the best setting in both conditions.

``--before`` adds the default as it was before the thread resolver: torch's default (every
core) with OpenMP's own wait policy (threads spin before they sleep, ``GOMP_SPINCOUNT``
300000 as libgomp's default). Writes ``threads.json`` and ``threads.md`` under ``--out``
(default: a folder under ``runs/``, never the tracked ``bench/results/``).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 1.3

#: the settings compared: (name, --threads value or None for the default, extra environment)
SETTINGS = {
    "default": (None, {}),
    "--threads 1": ("1", {}),
    "--threads all": ("all", {}),
    "before (every core, spinning)": ("all", {"GOMP_SPINCOUNT": "300000"}),
}


def demo_flags() -> list[str]:
    """The demo's training settings as ``train`` flags (its epochs and out-dir left out)."""
    from iteach_fast.presets import DEMO_DEFAULTS

    flags = ["--dataset", "synthetic", "--no-progress"]
    for key, value in DEMO_DEFAULTS.items():
        if key in ("epochs", "out_dir"):
            continue
        flags += ["--" + key.replace("_", "-"), ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return flags


def _spin() -> None:
    while True:
        pass


class Load:
    """``n`` busy processes while the block runs (none for n = 0)."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        ctx = multiprocessing.get_context("spawn")
        self.procs = [ctx.Process(target=_spin, daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        time.sleep(1.0 if self.n else 0.0)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(10)


def run_once(threads: str | None, env: dict, epochs: int, flags: list[str], scratch: str) -> dict:
    """One training process; ``{"seconds", "wall", "load_before", "note"}`` (seconds: the sum of
    its epochs' own durations, read from its last.pt)."""
    import torch

    out = tempfile.mkdtemp(prefix="run-", dir=scratch)
    cmd = [sys.executable, "-m", "iteach_fast", "train", *flags, "--epochs", str(epochs), "--out-dir", out]
    if threads is not None:
        cmd += ["--threads", threads]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    history = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=False)["history"]
    notes = [line for line in proc.stderr.splitlines() if "CPU thread" in line]
    return {"seconds": sum(h["seconds"] for h in history), "wall": wall, "load_before": load,
            "note": notes[0] if notes else None}


def measure(settings: list[str], loads: list[int], rounds: int, epochs: int, log=print) -> list[dict]:
    flags = demo_flags()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as scratch:
        for r in range(rounds):
            for n in loads:
                with Load(n):
                    order = settings[r % len(settings):] + settings[:r % len(settings)]
                    for name in order:
                        threads, env = SETTINGS[name]
                        res = run_once(threads, env, epochs, flags, scratch)
                        rows.append({"round": r, "background": n, "setting": name, **res})
                        log(f"round {r + 1}/{rounds}, {n} busy process{'es' if n != 1 else ''}: {name:32s} "
                            f"{res['seconds']:7.1f} s (load {res['load_before']:.1f})"
                            + (f"  [{res['note'].removeprefix('note: ')}]" if res["note"] else ""))
    return rows


def table(rows: list[dict], settings: list[str], loads: list[int], epochs: int) -> tuple[str, bool]:
    """The Markdown table of medians (and each cell's ratio to its condition's best) and whether
    the default meets the target in every condition."""
    def cond(n):
        return "as it is" if n == 0 else f"+{n} busy process{'es' if n != 1 else ''}"

    head = ["setting"] + [f"{cond(n)}: median s ({epochs} epochs)" for n in loads] + \
        [f"{cond(n)}: x best" for n in loads]
    med = {(s, n): statistics.median(x["seconds"] for x in rows if x["setting"] == s and x["background"] == n)
           for s in settings for n in loads}
    compared = [s for s in settings if not s.startswith("before")]
    best = {n: min(med[s, n] for s in compared) for n in loads}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in settings:
        lines.append("| " + " | ".join([s] + [f"{med[s, n]:.1f}" for n in loads]
                                       + [f"{med[s, n] / best[n]:.2f}x" for n in loads]) + " |")
    ok = all(med["default", n] <= TARGET * best[n] for n in loads) if "default" in settings else None
    loads_seen = {n: statistics.median(x["load_before"] for x in rows if x["background"] == n) for n in loads}
    lines.append("")
    lines.append("Median 1-minute load before a run: " + ", ".join(f"{cond(n)} {v:.1f}" for n, v in loads_seen.items())
                 + f" on {os.cpu_count()} CPUs. Target: the default within {TARGET}x of the best of "
                 f"--threads 1 / all in each condition: {_verdict(ok)}.")
    return "\n".join(lines), ok


def _verdict(ok) -> str:
    return "not measured (no default)" if ok is None else "met" if ok else "NOT met"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each cell: the median over them)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the demo's training per measurement")
    p.add_argument("--load", type=int, default=None,
                   help="busy processes of the loaded condition (default: the usable cores)")
    p.add_argument("--before", action="store_true",
                   help="also the old default (every core, OpenMP spinning): slow on a busy machine")
    p.add_argument("--settings", default=None,
                   help=f"comma-separated, some of: {', '.join(SETTINGS)} (default: all but the old one)")
    p.add_argument("--out", default=os.path.join("runs", "bench-threads"), help="folder for threads.json / .md")
    args = p.parse_args(argv)
    from iteach_fast.training.runtime import usable_cores

    loads = sorted({0, args.load if args.load is not None else usable_cores()})
    settings = [s for s in SETTINGS if args.before or not s.startswith("before")]
    if args.settings:
        settings = [s.strip() for s in args.settings.split(",")]
        unknown = [s for s in settings if s not in SETTINGS]
        if unknown:
            p.error(f"--settings: unknown {unknown}; known: {', '.join(SETTINGS)}")
    rows = measure(settings, loads, args.rounds, args.epochs)
    text, ok = table(rows, settings, loads, args.epochs)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "threads.json"), "w") as f:
        json.dump({"rows": rows, "settings": settings, "loads": loads, "epochs": args.epochs,
                   "cpu_count": os.cpu_count(), "usable_cores": usable_cores(), "target_met": ok}, f, indent=1)
    with open(os.path.join(args.out, "threads.md"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
