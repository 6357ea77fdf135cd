"""Reproduce the paper's results: the runs behind Tables 1-5 and Figures 6, 7/8 and 9,
aggregated over folds x seeds, with the paper's own numbers beside ours.

    iteach-fast reproduce all --dataset synthetic --quick --jobs 2 --out-dir runs/reproduce

Three jobs, one module each:

* :mod:`.plan` — each experiment is a list of :class:`~.plan.Variant` s (the rows of the
  paper's table), each a set of changes to one base
  :class:`~iteach_fast.training.config.TrainConfig`; a *run* is one variant at one fold and one
  seed, keyed by a hash of its config, so runs shared by several experiments (the ITS TF/NAS
  model with random missing rates is Table 1's local+global row, Table 2's ITS TF NAS, Table 4,
  Fig. 6's NAS student and Fig. 9) are trained once.
* :mod:`.run` — each run trained and measured in its folder ``<out_dir>/runs/<key>/``
  (``result.json``, ``train.log``); a finished run is never trained again, an interrupted one
  resumes from its ``last.pt``; ``jobs`` runs at once as processes (each with
  the machine's usable cores / ``jobs`` torch threads), ``devices`` spreads them over GPUs. The processes end with
  the command: Ctrl-C or SIGTERM stops them (and says how to continue), and a worker whose
  parent is gone (killed) stops itself.
* :mod:`.report` — ``results.csv``, one ``<experiment>.md`` per table, the PNGs and
  ``report.md``, one renderer per experiment.
"""
from __future__ import annotations

import os
import time

from ..data.sources import splits_for
from ..files import check_output
from ..training.config import TrainConfig
from ..training.loop import Interrupted, check_compute
from ..training.runtime import resolve_device, resolve_threads
from .plan import (
    DEFAULT_SEEDS,
    OPTIONS,
    QUICK,
    QUICK_SEEDS,
    RESULT_VERSION,
    VARIANTS,
    VARIED,
    Variant,
    expand,
    plan,
    resolve_folds,
    run_key,
)
from .report import orderings, paper_results, parameter_counts, render, runs_line, tsne_panels
from .run import cached_result, execute, run_one

__all__ = ["reproduce", "plan", "run_key", "run_one", "render", "paper_results", "parameter_counts", "Variant",
           "VARIANTS", "VARIED", "OPTIONS", "QUICK", "QUICK_SEEDS", "DEFAULT_SEEDS", "RESULT_VERSION", "expand",
           "resolve_folds", "orderings", "runs_line", "tsne_panels"]


def reproduce(what, cfg: TrainConfig, out_dir: str | None = None, seeds=None, folds=None, jobs: int = 1,
              devices=None, command: str | None = None, log=print) -> dict:
    """Run (or find cached) every run that ``what`` needs, then write the tables and figures
    under ``out_dir`` (default ``cfg.out_dir``). Returns ``{"paths", "tables", "failures",
    "ran", "cached"}``. Every argument is checked (the output folder writable, every run's
    precision and backends on its device) before any data is read; the data is loaded once,
    before any run."""
    experiments = expand(what)
    cfg = cfg.validate()
    out_dir = out_dir or cfg.out_dir
    seeds = tuple(DEFAULT_SEEDS if seeds is None else seeds)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds must be one or more distinct integers >= 0, got {list(seeds)}")
    folds = resolve_folds(cfg.dataset, folds)
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    devices = [str(resolve_device(f"cuda:{d}" if str(d).isdigit() else d)) for d in (devices or ())]
    check_output(out_dir, "--out-dir", folder=True)
    runs, groups = plan(experiments, cfg, seeds, folds, out_dir)
    checked = set()
    for run in runs.values():  # where each run will compute: its precision and backends, before any data is read
        for device in devices or (run.config.device,):
            what = (repr(run.config.model), run.config.dtype, str(device))
            if what not in checked:
                checked.add(what)
                check_compute(run.config, resolve_device(device))
    splits = splits_for(cfg)  # the data's problems surface here, not in every run
    results = {k: r for k, r in ((k, cached_result(run, log)) for k, run in runs.items()) if r is not None}
    # each run's threads: what fits the machine (affinity, CPU quota) shared by the jobs, or as asked
    threads = resolve_threads(cfg.threads, processes=jobs)[0]
    pending = []
    for i, (key, run) in enumerate((k, r) for k, r in runs.items() if k not in results):
        device = devices[i % len(devices)] if devices else run.config.device
        config = run.config.replace(threads=threads, device=device, progress=False)
        pending.append((run, {"key": key, "config": config.to_dict(), "fold": run.fold,
                              "baselines_dir": os.path.join(out_dir, "baselines")}))
    where = (f"folds {', '.join(map(str, folds))} x seeds {', '.join(map(str, seeds))}" if folds != (None,)
             else f"seeds {', '.join(map(str, seeds))} ({cfg.dataset} has one split: folds are not meaningful)")
    log(f"reproduce {', '.join(experiments)} on {cfg.dataset} ({where}): {len(runs)} runs, "
        f"{len(runs) - len(pending)} cached, {len(pending)} to train, {jobs} at a time"
        + (f" on {', '.join(devices)}" if devices else "") + f", {threads} thread{'s' if threads != 1 else ''} each"
        + f" -> {out_dir}")
    t0 = time.time()
    try:
        new, failures = execute(pending, jobs, cfg.progress, log)
    except KeyboardInterrupt as err:
        why = f" ({err})" if str(err) else ""
        raise Interrupted(f"reproduce stopped{why}; its runs were stopped too. Finished runs are kept: re-run the same "
                          "command to continue (an interrupted run resumes from its last.pt)") from None
    results.update(new)
    context = {"dataset": cfg.dataset, "data": splits.train.name, "folds": folds, "seeds": seeds,
               "command": command, "input_dims": splits.input_dims, "num_classes": splits.num_classes,
               "model": VARIANTS["table4"][0].build(cfg).model, "device": devices[0] if devices else cfg.device,
               "train_seconds": round(time.time() - t0, 1), "trained": len(new),
               "cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in new.values()), 1)}
    rendered = render(experiments, groups, results, runs, context, out_dir, log=log)
    if failures:
        log(f"{len(failures)} of {len(runs)} runs failed; the tables above leave them out. Re-run the same "
            "command to retry them (finished runs are kept).")
    return {**rendered, "failures": failures, "ran": len(new), "cached": len(runs) - len(pending)}
