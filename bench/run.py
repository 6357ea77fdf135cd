"""Run the benchmark suite; write every measurement as data, then the report made from it.

    python bench/run.py --quick             # a subset: a few minutes on 2 CPU cores
    python bench/run.py                     # the full set for this device (GPU if there is one)
    python bench/run.py --smoke --out DIR   # the smallest sizes, no compilation (the tests' smoke run)
    python bench/run.py --ops ecce_attention --providers reference,triton --dtypes bfloat16

Writes ``<out>/<device-slug>-<YYYY-MM-DD>.json`` (rewritten after every case, so an
interrupted run keeps what it measured), then ``bench/report.py`` renders the Markdown
table and the PNG plots next to it. A case that cannot run is a row with status
``skipped`` and the reason; a case that raises is a row with status ``failed`` and the error.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import measure  # noqa: E402
import report  # noqa: E402
import suite  # noqa: E402

SCHEMA = 1
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a subset that finishes in minutes")
    p.add_argument("--smoke", action="store_true", help="the smallest sizes, no compilation (for tests)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--ops", default=None, help=f"comma-separated subset of {','.join(suite.ALL_OPS)}")
    p.add_argument("--providers", default=None, help="comma-separated providers (backends or peers)")
    p.add_argument("--dtypes", default=None, help="comma-separated, e.g. float32,bfloat16")
    p.add_argument("--modes", default=None, help="comma-separated: fwd, fwd+bwd, train_step, inference")
    p.add_argument("--sizes", default=None, help="comma-separated BxL, e.g. 32x110,4x512")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd peers")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new cases after this many seconds (the rest are rows 'skipped')")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the JSON and the report")
    p.add_argument("--no-report", action="store_true", help="write the JSON only")
    args = p.parse_args(argv)
    split = lambda s: tuple(x for x in s.split(",") if x) if s else None  # noqa: E731
    args.ops, args.providers, args.dtypes, args.modes = map(split, (args.ops, args.providers, args.dtypes, args.modes))
    if args.sizes:
        args.sizes = tuple(tuple(int(n) for n in s.lower().split("x")) for s in args.sizes.split(","))
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return args


def _reason(err: BaseException) -> str:
    """The first line of an error, short enough for a table footnote."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def run_case(case: suite.Case, device: torch.device, quick: bool) -> dict:
    """One row's outcome: status / reason and, if it ran, the measurements."""
    try:
        prepared = suite.prepare(case, device)
        timing = measure.time_call(prepared.fn, device, quick)
        peak, mem_method = measure.peak_memory(prepared.fn, device)
    except suite.Skip as why:
        return {"status": "skipped", "reason": str(why)}
    except torch.OutOfMemoryError as err:  # e.g. the reference's B*H*L*L bias at long L: a finding, not a bug
        return {"status": "skipped", "reason": "out of memory: " + _reason(err)}
    except Exception as err:  # noqa: BLE001 - a failing case is a result, and the run goes on
        return {"status": "failed", "reason": _reason(err)}
    return {"status": "ok", "reason": None, "median_ms": timing.median_ms, "p20_ms": timing.p20_ms,
            "p80_ms": timing.p80_ms, "rounds": timing.rounds, "timer": timing.timer, "peak_mem_bytes": peak,
            "mem_method": mem_method, "bytes_moved": prepared.bytes_moved, "flops": prepared.flops,
            "note": prepared.note or None}


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
    head = f"{row['op']} {row['provider']} {row['mode']} {row['dtype']} B={row['B']} L={row['L']}"
    if row["status"] != "ok":
        return f"{head}: {row['status']} ({row['reason']})"
    mem = row["peak_mem_bytes"]
    mem = f", {mem / 2**20:.1f} MiB" if mem is not None else ""
    return f"{head}: {row['median_ms']:.3f} ms (p20 {row['p20_ms']:.3f}, p80 {row['p80_ms']:.3f}){mem}"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = args.device
    warnings.filterwarnings("ignore", message=".*backends unavailable.*")
    cases = suite.build_cases(device, quick=args.quick or args.smoke, smoke=args.smoke, ops_=args.ops,
                              providers_=args.providers, dtypes=args.dtypes, modes=args.modes, sizes=args.sizes)
    env = measure.environment(device)
    dtypes = sorted({c.dtype for c in cases})
    print(f"bench: {len(cases)} cases on {env['device']} (torch {env['torch']}, triton {env['triton']})", flush=True)
    data = {
        "schema": SCHEMA,
        "environment": env,
        "config": {"argv": list(sys.argv[1:] if argv is None else argv), "quick": args.quick, "smoke": args.smoke,
                   "budget_s": args.budget_s, "no_compile": args.no_compile},
        "ceilings": measure.ceilings(device, dtypes),
        "baselines": suite.BASELINES,
        "providers": suite.PEERS,
        "rows": [],
    }
    os.makedirs(args.out, exist_ok=True)
    stem = ("smoke-" if args.smoke else "") + f"{env['device_slug']}-{env['date'][:10]}"
    path = os.path.join(args.out, stem + ".json")
    start, lost = time.monotonic(), None
    for i, case in enumerate(cases, 1):
        row = {**case.as_dict(), "provider_kind": suite.provider_kind(case.op, case.provider)}
        if lost:
            row.update(status="failed", reason=f"not run: the CUDA context was lost ({lost})")
        elif args.budget_s is not None and time.monotonic() - start > args.budget_s:
            row.update(status="skipped", reason=f"time budget of {args.budget_s:g} s exhausted")
        elif args.no_compile and case.provider in suite.COMPILED:
            row.update(status="skipped", reason="compilation disabled (--no-compile)")
        else:
            row.update(run_case(case, device, args.quick or args.smoke))
            gc.collect()
            lost = _cuda_lost(device)
        data["rows"].append(row)
        _write_json(path, data)
        print(f"[{i:3d}/{len(cases)}] {_describe(row)}", flush=True)
    data["config"]["wall_s"] = round(time.monotonic() - start, 1)
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
