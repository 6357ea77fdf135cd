"""Running the planned runs: one run trained and measured (:func:`run_one`, its log in its
folder), a finished run's cached result, and the pool that runs them ``jobs`` at a time.

A run trains with :func:`iteach_fast.training.loop.train`, then measures its best checkpoint
on the test split: the student at UME's rates 0.0..0.7 (fixed-seed masks), the teacher on
complete data (Table 1) and the mean ``|H'_1 - H_1|`` at each rate (Fig. 6), written to its
``result.json``; an interrupted run resumes from its ``last.pt``. A ``result.json`` that lacks
what the tables read is not a result: the run is measured again (and says so).

The processes end with the command: while runs execute, SIGTERM to this process is an
interruption like Ctrl-C; either stops every worker before it propagates. Workers ignore
SIGINT (the parent decides) and watch their parent: one whose parent is gone (SIGKILL) stops.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

from ..data.masking import EVAL_RATES, fixed_masks
from ..evaluation.baselines import baselines_for_run
from ..evaluation.tables import public_rows
from ..files import atomic_write
from ..training.checkpoint import load_for_eval
from ..training.config import TrainConfig
from ..training.loop import train
from ..training.runtime import check_precision, resolve_device
from ..training.validation import evaluate_rates, hidden_features
from .plan import RESULT_VERSION, Run

__all__ = ["run_one", "cached_result", "execute", "RESULT_KEYS"]

#: what a finished run's ``result.json`` holds (the tables read these)
RESULT_KEYS = {"key": str, "result_version": int, "config": dict, "seed": int, "dataset": str, "task": str,
               "student": list, "teacher": dict, "distance": list}


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
    if summary["best"] is None:
        raise ValueError(f"{cfg.out_dir}: no checkpoint of the best epoch {summary['best_epoch']} to measure (see "
                         "train.log); remove the folder to train the run again")
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
    # the baselines of the run's data and strategy, on the same masks (shared by every model on that data)
    base = baselines_for_run(cfg, splits, EVAL_RATES, "test", cfg.eval_seed, folder=job.get("baselines_dir"))
    result = {"key": job["key"], "result_version": RESULT_VERSION, "config": cfg.to_dict(),
              "fold": job.get("fold"), "seed": cfg.seed, "dataset": test.name, "task": test.task,
              "class_names": list(splits.class_names), "notes": list(splits.notes),
              "student": public_rows(student), "teacher": teacher, "distance": distance,
              "baselines": base["rows"], "logreg_context_k": base["logreg_context_k"],
              "best_epoch": summary["best_epoch"], "best_valid_waf": summary["best_score"],
              "seconds": round(time.time() - t0, 1), "cpu_seconds": round(time.process_time() - cpu0, 1)}
    atomic_write(os.path.join(cfg.out_dir, "result.json"), json.dumps(result, indent=1))
    log(f"== done in {result['seconds']:.0f} s ({result['cpu_seconds']:.0f} s of CPU): student WAF at 0.0 "
        f"{student[0]['waf']:.2f}, at 0.7 {student[-1]['waf']:.2f}; teacher on complete data {teacher['waf']:.2f}")
    return result


def cached_result(run: Run, log=None) -> dict | None:
    """The finished result of ``run`` (same key and :data:`RESULT_VERSION`, every one of
    :data:`RESULT_KEYS` of its type), else None: the run is measured (or trained) again; ``log``
    says why when a file was there."""
    if not os.path.isfile(run.result_path):
        return None
    try:
        with open(run.result_path) as f:
            result = json.load(f)
    except (OSError, ValueError) as err:
        why = f"unreadable ({err})"
    else:
        if not isinstance(result, dict):
            why = f"a {type(result).__name__}, not a result"
        elif result.get("key") != run.key or result.get("result_version") != RESULT_VERSION:
            return None  # another run's, or an older version's: measured again, as planned
        else:
            bad = [k for k, kind in RESULT_KEYS.items() if not isinstance(result.get(k), kind)]
            if not bad:
                return result
            why = f"incomplete (no valid {', '.join(bad)})"
    if log is not None:
        log(f"note: {run.result_path} is {why}: the run is measured again")
    return None


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt for the block (the main thread only), so that the
    workers are stopped on the way out, as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _worker_start(parent: int) -> None:
    """In each pool process: leave SIGINT to the parent (it stops the workers), and stop when
    the parent is gone (killed without the chance to stop them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's processes now (shutdown would wait for their runs to finish)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # the stdlib keeps them here
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(5)


def execute(pending: list, jobs: int, progress: bool, log) -> tuple[dict, list]:
    """Run ``pending`` ``(run, job)`` pairs, ``jobs`` at a time; ``(results by key, failures)``.
    Ctrl-C or SIGTERM stops every worker and propagates as KeyboardInterrupt."""
    from tqdm import tqdm  # the progress bar: only when runs are executed

    results, failures = {}, []
    bar = tqdm(total=len(pending), desc="reproduce", unit="run", disable=None if progress and pending else True,
               file=sys.stderr, dynamic_ncols=True)

    def done(run, result=None, err=None):
        if err is None:
            results[run.key] = result
        else:
            failures.append((run, err))
            log(f"run {run.key} failed: {type(err).__name__}: {err} (log: {os.path.join(run.folder, 'train.log')})")
        bar.update(1)

    try:
        with _sigterm_interrupts():
            if jobs == 1:
                for run, job in pending:
                    try:
                        done(run, run_one(job))
                    except Exception as err:  # noqa: BLE001 - one failed run must not stop the others
                        done(run, err=err)
            elif pending:
                pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_worker_start, initargs=(os.getpid(),))
                try:
                    futures = {pool.submit(run_one, job): run for run, job in pending}
                    for fut in as_completed(futures):
                        try:
                            done(futures[fut], fut.result())
                        except Exception as err:  # noqa: BLE001
                            done(futures[fut], err=err)
                except BaseException:
                    _stop_workers(pool)
                    raise
                finally:
                    pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return results, failures
