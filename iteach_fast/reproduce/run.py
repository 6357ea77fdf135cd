"""Running the planned runs: one run trained and measured (:func:`run_one`, its log in its
folder), a finished run's cached result, and the pool that runs them ``jobs`` at a time.

A run trains with :func:`iteach_fast.training.loop.train`, then measures its best checkpoint
on the test split: the student at UME's rates 0.0..0.7 (fixed-seed masks), the teacher on
complete data (Table 1) and the mean ``|H'_1 - H_1|`` at each rate (Fig. 6), written to its
``result.json``; an interrupted run resumes from its ``last.pt``.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

from ..data.masking import EVAL_RATES, fixed_masks
from ..evaluation.tables import public_rows
from ..files import atomic_write
from ..training.checkpoint import load_for_eval
from ..training.config import TrainConfig
from ..training.loop import train
from ..training.runtime import check_precision, resolve_device
from ..training.validation import evaluate_rates, hidden_features
from .plan import RESULT_VERSION, Run

__all__ = ["run_one", "cached_result", "cores", "execute"]


def run_one(job: dict) -> dict:
    """Train one run (``job``: its ``key`` and ``config``) and measure it; its log goes to
    ``train.log`` in its folder. Top-level, so that a spawned pool process can import it."""
    cfg = TrainConfig.from_dict(job["config"])
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "train.log"), "a") as f:
        def log(*parts):
            print(*parts, file=f, flush=True)
        try:
            return _train_and_measure(cfg, job, log)
        except BaseException:
            log(traceback.format_exc())
            raise


def _train_and_measure(cfg: TrainConfig, job: dict, log) -> dict:
    t0, cpu0 = time.time(), time.process_time()
    last = os.path.join(cfg.out_dir, "last.pt")
    log(f"== run {job['key']} ({time.strftime('%Y-%m-%d %H:%M:%S')})")
    summary = train(cfg, resume=last if os.path.isfile(last) else None, log=log)
    net, _, splits, _ = load_for_eval(summary["best"], device=cfg.device)
    dev = resolve_device(cfg.device)
    dtype = check_precision(cfg.dtype, dev)
    test = splits.test
    student = evaluate_rates(net, test, EVAL_RATES, cfg.eval_seed, cfg.batch_size, dev, dtype)
    teacher = evaluate_rates(net, test, (0.0,), cfg.eval_seed, cfg.batch_size, dev, dtype, model="teacher")[0]
    distance = []
    for rate in EVAL_RATES:
        h = hidden_features(net, test, fixed_masks(test, rate, cfg.eval_seed), cfg.batch_size, dev, dtype)
        distance.append({"rate": float(rate), "distance": float(np.abs(h["student"] - h["teacher"]).mean())})
    result = {"key": job["key"], "result_version": RESULT_VERSION, "config": cfg.to_dict(),
              "fold": job.get("fold"), "seed": cfg.seed, "dataset": test.name, "task": test.task,
              "class_names": list(splits.class_names), "notes": list(splits.notes),
              "student": public_rows(student), "teacher": teacher, "distance": distance,
              "best_epoch": summary["best_epoch"], "best_valid_waf": summary["best_score"],
              "seconds": round(time.time() - t0, 1), "cpu_seconds": round(time.process_time() - cpu0, 1)}
    atomic_write(os.path.join(cfg.out_dir, "result.json"), json.dumps(result, indent=1))
    log(f"== done in {result['seconds']:.0f} s ({result['cpu_seconds']:.0f} s of CPU): student WAF at 0.0 "
        f"{student[0]['waf']:.2f}, at 0.7 {student[-1]['waf']:.2f}; teacher on complete data {teacher['waf']:.2f}")
    return result


def cached_result(run: Run) -> dict | None:
    """The finished result of ``run`` (same key and :data:`RESULT_VERSION`), else None."""
    if not os.path.isfile(run.result_path):
        return None
    try:
        with open(run.result_path) as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None  # unreadable: run it again
    return result if result.get("key") == run.key and result.get("result_version") == RESULT_VERSION else None


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def execute(pending: list, jobs: int, progress: bool, log) -> tuple[dict, list]:
    """Run ``pending`` ``(run, job)`` pairs, ``jobs`` at a time; ``(results by key, failures)``."""
    from tqdm import tqdm  # the progress bar: only when runs are executed

    results, failures = {}, []
    bar = tqdm(total=len(pending), desc="reproduce", unit="run", disable=not progress or not pending,
               file=sys.stderr, dynamic_ncols=True)

    def done(run, result=None, err=None):
        if err is None:
            results[run.key] = result
        else:
            failures.append((run, err))
            log(f"run {run.key} failed: {type(err).__name__}: {err} (log: {os.path.join(run.folder, 'train.log')})")
        bar.update(1)

    if jobs == 1:
        for run, job in pending:
            try:
                done(run, run_one(job))
            except Exception as err:  # noqa: BLE001 - one failed run must not stop the others
                done(run, err=err)
    else:
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = {pool.submit(run_one, job): run for run, job in pending}
            for fut in as_completed(futures):
                try:
                    done(futures[fut], fut.result())
                except Exception as err:  # noqa: BLE001
                    done(futures[fut], err=err)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    return results, failures
