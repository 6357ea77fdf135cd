"""Run the benchmark suite; write every measurement as data, then the report made from it.

    python -m bench.run --quick             # a subset: minutes on 2 CPU cores (also: iteach-fast bench --quick)
    python -m bench.run                     # the full set for this device (GPU if there is one)
    python -m bench.run --preset headline   # the rows the issues' targets are read from
    python -m bench.run --smoke --out DIR   # the smallest sizes (the tests' smoke run)
    python -m bench.run --quick --out bench/results   # results meant to be committed (README's section)
    python -m bench.run --ops ecce_attention --providers reference,triton --dtypes bfloat16
    python -m bench.run --ops ddp_train --append   # 1 vs 2 processes under torchrun (run only when named)

Writes ``<out>/<device-slug>-<YYYY-MM-DD>.json`` (rewritten after every case, so an
interrupted run keeps what it measured; ``--append`` adds to it, skipping the cases it
already holds), then ``bench.report`` renders the Markdown table and the PNG plots next
to it. ``<out>`` is ``runs/bench/`` of the checkout by default, a folder git ignores, so a run
leaves the checkout clean; ``--out bench/results`` writes where committed results live.
The providers of one comparison (same op, mode, dtype, size) share their inputs and
are timed in interleaved rounds; the ceilings are re-measured before each op's cases. A case
that cannot run is a row with status ``skipped`` and the reason; a case that raises is a row
with status ``failed`` and the error.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
import warnings

import torch

from . import measure, report, suite
from .cases import Case, Prepared, Skip

SCHEMA = 2  # 1: one ceiling set per run; 2: adds ceiling_samples (rows point at theirs), counters, D/H sizes
# ignored by git (.gitignore's runs/): a run leaves the checkout clean; committed results are
# written with --out bench/results
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs", "bench")
WARM_UP_CALLS = 2


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a subset that finishes in minutes")
    p.add_argument("--smoke", action="store_true", help="the smallest sizes (for tests and dry runs)")
    p.add_argument("--preset", default=None, choices=sorted(suite.PRESETS), help="only the rows of a preset")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--ops", default=None, help=f"comma-separated, some of {','.join(suite.ALL_OPS)} (default: all "
                   f"but {','.join(sorted(set(suite.ALL_OPS) - set(suite.DEFAULT_OPS)))}, which run when named)")
    p.add_argument("--providers", default=None, help="comma-separated, e.g. reference,triton,flex-attention")
    p.add_argument("--dtypes", default=None, help="comma-separated, e.g. float32,bfloat16")
    p.add_argument("--modes", default=None,
                   help="comma-separated: fwd, fwd+bwd, fwd causal, fwd+bwd causal, train_step, inference, ...")
    p.add_argument("--sizes", default=None, help="comma-separated BxL, e.g. 32x110,4x512 (replaces the entries')")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd providers")
    p.add_argument("--compiled-last", action="store_true",
                   help="run the compiled providers after every other case (default on a GPU)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new cases after this many seconds (the rest are rows 'skipped')")
    p.add_argument("--threads", type=int, default=0, help="torch's CPU threads (0: torch's default)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="folder for the JSON and the report (default: runs/bench/ of the checkout, ignored by git; "
                   "bench/results to commit them)")
    p.add_argument("--append", action="store_true", help="add to this device's result file of today in --out")
    p.add_argument("--no-report", action="store_true", help="write the JSON only")
    args = p.parse_args(argv)
    split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip()) if s else None  # noqa: E731
    args.ops, args.providers, args.dtypes, args.modes = map(split, (args.ops, args.providers, args.dtypes, args.modes))
    if args.sizes:
        try:
            args.sizes = tuple(tuple(int(n) for n in s.lower().split("x")) for s in args.sizes.split(","))
        except ValueError:
            p.error(f"--sizes must be comma-separated BxL pairs such as 32x110, got {args.sizes!r}")
        if any(len(s) != 2 or min(s) < 1 for s in args.sizes):
            p.error(f"--sizes must be comma-separated BxL pairs of positive ints, got {args.sizes}")
    for op in args.ops or ():
        if op not in suite.ALL_OPS:
            p.error(f"--ops: unknown op {op!r}; expected some of {', '.join(suite.ALL_OPS)}")
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    args.compiled_last = args.compiled_last or args.device.type == "cuda"
    return args


def _reason(err: BaseException) -> str:
    """The first line of an error, short enough for a table footnote."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def _outcome(err: BaseException) -> dict:
    if isinstance(err, Skip):
        return {"status": "skipped", "reason": str(err)}
    if isinstance(err, torch.OutOfMemoryError):  # e.g. the reference's B*H*L*L bias at long L: a finding
        return {"status": "skipped", "reason": "out of memory: " + _reason(err)}
    # the row keeps the first line; the log (stderr) the whole error, whose cause is often in its
    # last lines (an Inductor compile worker's traceback rides inside the message)
    text = "".join(traceback.format_exception(err)).rstrip().splitlines()
    print("\n".join(["bench: the error in full (last 60 lines):"] + text[-60:]), file=sys.stderr)
    return {"status": "failed", "reason": _reason(err)}


def run_group(cases: list[Case], device: torch.device, level: str) -> dict[Case, dict]:
    """Every provider of one comparison: inputs prepared once, warm-up, interleaved timing,
    then each one's peak memory and counters. ``{case: row fields}``."""
    try:
        prepared = suite.entry(cases[0].op).prepare(cases, device)
    except Exception as err:  # noqa: BLE001 - a failing entry is a result, and the run goes on
        outcome = _outcome(err)  # once: a failed case's error goes to the log in full
        return {case: dict(outcome) for case in cases}
    results, live = {}, {}
    for case in cases:
        p = prepared[case]
        if not isinstance(p, Prepared):
            results[case] = _outcome(p)
        elif p.measured is not None:
            results[case] = {"status": "ok", "reason": None, "note": p.note or None, **p.measured}
        else:
            try:
                measure.warm_up(p.fn, device, 1 if level == "smoke" else WARM_UP_CALLS)
                live[case] = p
            except Exception as err:  # noqa: BLE001
                results[case] = _outcome(err)
    caps = {c: max(1, p.max_calls - WARM_UP_CALLS - 1) for c, p in live.items() if p.max_calls}
    timings = measure.time_interleaved({c: p.fn for c, p in live.items()}, device, level, caps,
                                       suite.entry(cases[0].op).min_rounds)
    for case, p in live.items():
        timing = timings[case]
        if isinstance(timing, BaseException):
            results[case] = _outcome(timing)
            continue
        row = {"status": "ok", "reason": None, "median_ms": timing.median_ms, "p20_ms": timing.p20_ms,
               "p80_ms": timing.p80_ms, "rounds": timing.rounds, "timer": timing.timer,
               "bytes_moved": p.bytes_moved, "flops": p.flops, "note": p.note or None, **p.extra}
        try:
            row["peak_mem_bytes"], row["mem_method"] = measure.peak_memory(p.fn, device)
            if p.counters is not None:
                row.update(p.counters())
        except Exception as err:  # noqa: BLE001 - the timing stands; say what could not be counted
            row["counters_error"] = _reason(err)
        results[case] = row
    return results


def _cuda_lost(device: torch.device) -> str | None:
    """Why the CUDA context is unusable (an illegal access poisons it for the whole process), or None."""
    if device.type != "cuda":
        return None
    try:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    except Exception as err:  # noqa: BLE001
        return _reason(err)
    return None


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _describe(row: dict) -> str:
    shape = "" if (row.get("D"), row.get("H")) in ((128, 8), (None, None)) else f" Dh={row['Dh']}"
    head = f"{row['op']} {row['provider']} {row['mode']} {row['dtype']} B={row['B']} L={row['L']}{shape}"
    if row["status"] != "ok":
        return f"{head}: {row['status']} ({row['reason']})"
    mem = row.get("peak_mem_bytes")
    extra = f", {mem / 2**20:.1f} MiB" if mem is not None else ""
    if row.get("host_syncs") is not None:
        extra += f", {row['host_syncs']} host syncs"
    if row.get("launches") is not None:
        extra += f", {row['launches']} launches"
    if row.get("state_bytes") is not None:
        extra += f", state {row['state_bytes'] / 2**20:.2f} MiB"
    if row.get("samples_per_s") is not None:
        extra += f", {row['samples_per_s']:.1f} conversations/s"
    spread = f" (p20 {row['p20_ms']:.3f}, p80 {row['p80_ms']:.3f})" if row.get("p20_ms") is not None else ""
    return f"{head}: {row['median_ms']:.3f} ms{spread}{extra}"


def _case_of(row: dict) -> Case:
    return Case(row["op"], row["provider"], row["mode"], row["dtype"], row["B"], row["L"], row.get("D", 128),
                row.get("H", 8))


def _new_data(args, argv, env) -> dict:
    return {"schema": SCHEMA, "environment": env,
            "config": {"argv": list(argv), "quick": args.quick, "smoke": args.smoke, "preset": args.preset,
                       "budget_s": args.budget_s, "no_compile": args.no_compile},
            "ceilings": {}, "ceiling_samples": [], "baselines": suite.baselines(), "providers": suite.describe(),
            "rows": []}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*backends unavailable.*")
    cases = suite.build_cases(device, quick=args.quick, smoke=args.smoke, ops_=args.ops, providers_=args.providers,
                              dtypes=args.dtypes, modes=args.modes, sizes=args.sizes, preset=args.preset)
    headline = {c.id for c in suite.build_cases(device, quick=args.quick, smoke=args.smoke, preset="headline",
                                                sizes=args.sizes if args.preset else None)}
    env = measure.environment(device)
    if device.type == "cpu" and torch.get_num_threads() > 1 and (env["load_average"] or 0) > (env["cpu_count"] or 1):
        print(f"bench: note: the machine's load ({env['load_average']}) exceeds its {env['cpu_count']} cores; with "
              f"{torch.get_num_threads()} threads each op's threads wait for one another (timings many times slower "
              "and noisy): --threads 1 measures what a core does", flush=True)
    os.makedirs(args.out, exist_ok=True)
    stem = ("smoke-" if args.smoke else "") + f"{env['device_slug']}-{env['date'][:10]}"
    path = os.path.join(args.out, stem + ".json")
    if args.append and os.path.exists(path):
        data = report.load(path)
        data.setdefault("ceiling_samples", [data["ceilings"]] if data.get("ceilings") else [])
        data["config"].setdefault("appended", []).append({"argv": list(argv), "date": env["date"], **{
            key: env.get(key) for key in ("git_commit", "git_dirty")}})
        # keep what was measured (or found impossible); what the budget cut off is tried again
        data["rows"] = [r for r in data["rows"] if not (r["status"] == "skipped" and "budget" in (r["reason"] or ""))]
        done = {_case_of(r).id for r in data["rows"]}
        cases = [c for c in cases if c.id not in done]
    else:
        data = _new_data(args, argv, env)
    print(f"bench: {len(cases)} cases on {env['device']} (torch {env['torch']}, triton {env['triton']})", flush=True)
    start, lost, current_op, n = time.monotonic(), None, None, 0
    for group in suite.groups(cases, compiled_last=args.compiled_last):
        op = group[0].op
        rows = {c: {**c.as_dict(), "provider_kind": "backend" if suite.entry(op).is_ours(c.provider) else "peer",
                    "headline": c.id in headline} for c in group}
        over_budget = args.budget_s is not None and time.monotonic() - start > args.budget_s
        todo = []
        for case, row in rows.items():
            if lost:
                row.update(status="failed", reason=f"not run: the CUDA context was lost ({lost})")
            elif over_budget:
                row.update(status="skipped", reason=f"time budget of {args.budget_s:g} s exhausted")
            elif args.no_compile and suite.entry(op).is_compiled(case.provider):
                row.update(status="skipped", reason="compilation disabled (--no-compile)")
            else:
                todo.append(case)
        if todo and op != current_op and suite.entry(op).roofline:
            # the ceilings next to the cases they divide: re-measured for each op
            dtypes = sorted({c.dtype for c in cases if c.op == op})
            data["ceiling_samples"].append(measure.ceilings(device, dtypes, tries=2 if args.smoke else 5,
                                                            label=f"before {op}", small=args.smoke))
            data["ceilings"] = measure.best_ceilings(data["ceiling_samples"])
            current_op = op
        if todo:
            level = "smoke" if args.smoke else "quick" if args.quick else "full"
            for case, fields in run_group(todo, device, level).items():
                rows[case].update(fields)
                if fields.get("status") == "ok" and data["ceiling_samples"]:
                    rows[case]["ceilings_at"] = len(data["ceiling_samples"]) - 1
            gc.collect()
            lost = lost or _cuda_lost(device)
        for row in rows.values():
            n += 1
            data["rows"].append(row)
            print(f"[{n:3d}/{len(cases)}] {_describe(row)}", flush=True)
        _write_json(path, data)
    data["config"]["wall_s"] = round(time.monotonic() - start, 1)
    data["config"]["load_average_end"] = measure.load_average()
    _write_json(path, data)
    print(f"bench: results in {os.path.relpath(path)} ({data['config']['wall_s']} s)", flush=True)
    if not args.no_report:
        for written in report.render(path):
            print(f"bench: wrote {os.path.relpath(written)}", flush=True)
    counts = {s: sum(r["status"] == s for r in data["rows"]) for s in ("ok", "skipped", "failed")}
    print("bench: " + ", ".join(f"{n} {s}" for s, n in counts.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
