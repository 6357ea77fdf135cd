"""Reproduce the paper's results: the runs behind Tables 1-5 and Figures 6, 7/8 and 9,
aggregated over folds x seeds, with the paper's own numbers beside ours.

    iteach-fast reproduce all --dataset synthetic --quick --jobs 2 --out-dir runs/reproduce

* Each experiment is a list of :class:`Variant` s (the rows of the paper's table), each a set
  of changes to one base :class:`~iteach_fast.training.config.TrainConfig`; a *run* is one variant at
  one fold and one seed. Runs shared by several experiments (the ITS TF/NAS model with random
  missing rates is Table 1's local+global row, Table 2's ITS TF NAS, Table 4, Fig. 6's NAS
  student and Fig. 9) have the same config, so they are trained once.
* A run trains with :func:`iteach_fast.training.loop.train`, then measures its best checkpoint on the
  test split: the student at UME's rates 0.0..0.7 (fixed-seed masks), the teacher on complete
  data (Table 1) and the mean ``|H'_1 - H_1|`` at each rate (Fig. 6). The result is written to
  ``<out_dir>/runs/<key>/result.json``, ``key`` a hash of the run's config (not of where or
  how fast it runs: ``out_dir``, ``progress``, ``threads``, ``device``); a finished run is
  never trained again, an interrupted one resumes from its ``last.pt``.
* ``jobs`` runs at once as processes (each with ``cores // jobs`` torch threads); ``devices``
  spreads them over GPUs; each run's log is ``runs/<key>/train.log``.
* Outputs: ``results.csv`` (every run x rate x metric), ``<experiment>.md`` per table laid out
  as the paper's (rates as columns, Average, Decline; mean ± std over folds x seeds; the
  paper's number and our difference where the dataset is one of the paper's), PNGs, and
  ``report.md`` holding every table.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
from sklearn.manifold import TSNE
from tqdm import tqdm

from ..choices import EXPERIMENTS
from ..data.masking import EVAL_RATES, fixed_masks
from ..data.sources import splits_for
from ..evaluation import plots
from ..evaluation.protocols import DEMO_DEFAULTS, ime_config
from ..evaluation.tables import public_rows
from ..files import atomic_write
from ..nn.config import ModelConfig
from ..nn.model import ITEACHNet, roles
from ..training.checkpoint import load_for_eval
from ..training.config import TrainConfig
from ..training.loop import train
from ..training.runtime import check_precision, resolve_device
from ..training.validation import evaluate_rates, hidden_features

__all__ = ["reproduce", "plan", "run_key", "run_one", "render", "paper_results", "parameter_counts", "Variant",
           "VARIANTS", "QUICK", "QUICK_SEEDS", "DEFAULT_SEEDS", "RESULT_VERSION"]

#: bump when what a run measures changes: every cached result is then recomputed
RESULT_VERSION = 1
#: config fields that say where or how fast a run computes, not what: left out of its key
NOT_HASHED = ("out_dir", "progress", "threads", "device", "compile", "cuda_graphs")
#: the paper runs each model three times (§4.4); ``--quick`` runs one seed unless told otherwise
DEFAULT_SEEDS = (0, 1, 2)
QUICK_SEEDS = (0,)
IEMOCAP_FOLDS = (1, 2, 3, 4, 5)
#: ``--quick``: the demo's small synthetic set and model, 10 epochs, the progressive
#: schedule compressed to one step per epoch (0.0, 0.1, ..., 0.7 within the 10 epochs)
QUICK = {**{k: v for k, v in DEMO_DEFAULTS.items() if k not in ("framework", "strategy", "out_dir")},
         "progressive_every": 1}
#: the fields an experiment sets per run (a base config's values for them are replaced)
VARIED = ("framework", "teacher_mixer", "student_mixer", "ecce", "strategy", "rate", "seed", "fold")
#: every variant starts from the paper's ITEACH-Net: ITS, 3 x TF teacher, 4 x NAS student, full ECCE, random rates
BASE_CHANGES = dict(framework="its", teacher_mixer=None, student_mixer=None, ecce="local+global", strategy="random")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of a paper table: ``cells`` its heading cells, ``changes`` to the base config
    (``ime_rate``: the IME run at that rate, :func:`iteach_fast.evaluation.protocols.ime_config`)."""
    label: str
    cells: tuple
    changes: tuple = ()
    ime_rate: float | None = None

    def build(self, base: TrainConfig) -> TrainConfig:
        cfg = base.replace(**{**BASE_CHANGES, **dict(self.changes)})
        return ime_config(cfg, self.ime_rate) if self.ime_rate is not None else cfg


def _v(label: str, cells: tuple, **changes) -> Variant:
    return Variant(label, cells, tuple(sorted(changes.items())))


_ITS = _v("ITS TF NAS", ("ITS", "TF", "NAS"))  # the paper's ITEACH-Net: random missing rates
VARIANTS = {
    "table1": (_v("off", ("✗", "✗"), ecce="off"), _v("global", ("✗", "✓"), ecce="global"),
               dataclasses.replace(_ITS, label="local+global", cells=("✓", "✓"))),
    "table2": (_v("PRE TF", ("PRE", "TF", "–"), framework="pre", student_mixer="tf"),
               _v("ITS TF TF", ("ITS", "TF", "TF"), student_mixer="tf"), _ITS,
               _v("TS NAS TF", ("TS", "NAS", "TF"), framework="ts")),
    "table3": (),
    "table4": (dataclasses.replace(_ITS, label="ITEACH-Net", cells=("ITEACH-Net (random)",)),),
    "table5": (_v("ITEACH-Net", ("ITEACH-Net (progressive)",), strategy="progressive"),),
    "fig6": (dataclasses.replace(_ITS, label="NAS student", cells=("NAS (4 layers)",)),
             _v("TF student", ("TF (4 layers)",), student_mixer="tf")),
    "fig78": tuple(Variant(f"fixed {r:.1f}", (f"{r:.1f}",), ime_rate=r) for r in EVAL_RATES),
    "fig9": (dataclasses.replace(_ITS, label="ITEACH-Net", cells=("ITEACH-Net",)),),
}
TITLES = {
    "table1": "Table 1 — ECCE ablation: the teacher's WAF (%) on complete test data",
    "table2": "Table 2 — training frameworks: the student's WAF (%) at each test missing rate "
              "(Decline = WAF(0.0) − WAF(0.7))",
    "table3": "Table 3 — parameter counts",
    "table4": "Table 4 — random training strategy: ITEACH-Net's WAF (%) at each test missing rate (UME)",
    "table5": "Table 5 — progressive training strategy: ITEACH-Net's WAF (%) at each test missing rate (UME)",
    "fig6": "Figure 6 — mean |H'_1 − H_1| between the student (masked data) and the teacher (complete data)",
    "fig78": "Figures 7 / 8 — IME (one model per missing rate, tested at it) and the model trained at 0.7 "
             "tested at every rate: WAF (%)",
    "fig9": "Figure 9 — t-SNE of the teacher's H_1 (complete data) and the student's H'_1 at each missing rate",
}


@functools.lru_cache(maxsize=1)
def paper_results() -> dict:
    """The paper's Tables 1-5, typed once into ``paper_results.json`` (with their source)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_results.json")) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- planning

@dataclasses.dataclass
class Run:
    key: str
    config: TrainConfig  # out_dir: the run's folder
    fold: int | None
    seed: int

    @property
    def folder(self) -> str:
        return self.config.out_dir

    @property
    def result_path(self) -> str:
        return os.path.join(self.folder, "result.json")


def run_key(cfg: TrainConfig) -> str:
    """A hash of what ``cfg`` computes (every field but :data:`NOT_HASHED`) and :data:`RESULT_VERSION`."""
    what = {k: v for k, v in cfg.to_dict().items() if k not in NOT_HASHED}
    text = json.dumps({"result_version": RESULT_VERSION, "config": what}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def expand(what) -> tuple[str, ...]:
    """``what`` (names from :data:`EXPERIMENTS`, or ``all``) in the canonical order, each once."""
    names = [what] if isinstance(what, str) else list(what)
    unknown = [n for n in names if n != "all" and n not in EXPERIMENTS]
    if unknown or not names:
        raise ValueError(f"reproduce: unknown experiment(s) {unknown}; expected one or more of "
                         f"{', '.join(EXPERIMENTS)} or all")
    return EXPERIMENTS if "all" in names else tuple(e for e in EXPERIMENTS if e in names)


def has_folds(dataset: str) -> bool:
    return dataset.startswith("iemocap")


def resolve_folds(dataset: str, folds) -> tuple:
    """IEMOCAP: the given folds (default all five sessions); elsewhere ``(None,)``: one split."""
    if not has_folds(dataset):
        if folds:
            raise ValueError(f"--folds: {dataset} has one train/test split (folds are IEMOCAP's "
                             "leave-one-session-out); repeat runs with --seeds instead")
        return (None,)
    folds = tuple(folds or IEMOCAP_FOLDS)
    bad = [f for f in folds if f not in IEMOCAP_FOLDS]
    if bad or len(set(folds)) != len(folds):
        raise ValueError(f"--folds must be distinct IEMOCAP sessions among 1..5, got {list(folds)}")
    return folds


def plan(experiments, base: TrainConfig, seeds, folds, out_dir: str) -> tuple[dict, dict]:
    """``(runs, groups)``: ``{key: Run}`` (each distinct config once) and
    ``{experiment: {variant label: [keys]}}``; Fig. 9 reads the first fold and seed only."""
    runs, groups = {}, {}
    for exp in experiments:
        groups[exp] = {}
        for variant in VARIANTS[exp]:
            cells = [(f, s) for f in folds for s in seeds]
            keys = []
            for fold, seed in cells[:1] if exp == "fig9" else cells:
                cfg = variant.build(base).replace(seed=seed, **({"fold": fold} if fold is not None else {}))
                key = run_key(cfg)
                runs.setdefault(key, Run(key, cfg.replace(out_dir=os.path.join(out_dir, "runs", key)), fold, seed))
                keys.append(key)
            groups[exp][variant.label] = keys
    return runs, groups


# ----------------------------------------------------------------------------- one run

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


def _cached(run: Run) -> dict | None:
    if not os.path.isfile(run.result_path):
        return None
    try:
        with open(run.result_path) as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None  # unreadable: run it again
    return result if result.get("key") == run.key and result.get("result_version") == RESULT_VERSION else None


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _execute(pending: list, jobs: int, progress: bool, log) -> tuple[dict, list]:
    """Run ``pending`` ``(run, job)`` pairs, ``jobs`` at a time; ``(results by key, failures)``."""
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


# ----------------------------------------------------------------------------- the driver

def reproduce(what, cfg: TrainConfig, out_dir: str | None = None, seeds=None, folds=None, jobs: int = 1,
              devices=None, command: str | None = None, log=print) -> dict:
    """Run (or find cached) every run that ``what`` needs, then write the tables and figures
    under ``out_dir`` (default ``cfg.out_dir``). Returns ``{"paths", "tables", "failures",
    "ran", "cached"}``. Every argument is checked, and the data loaded once, before any run."""
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
    splits = splits_for(cfg)  # the data's problems surface here, not in every run
    runs, groups = plan(experiments, cfg, seeds, folds, out_dir)
    results = {k: r for k, r in ((k, _cached(run)) for k, run in runs.items()) if r is not None}
    threads = cfg.threads or (max(1, _cores() // jobs) if jobs > 1 else 0)
    pending = []
    for i, (key, run) in enumerate((k, r) for k, r in runs.items() if k not in results):
        device = devices[i % len(devices)] if devices else run.config.device
        config = run.config.replace(threads=threads, device=device, progress=False)
        pending.append((run, {"key": key, "config": config.to_dict(), "fold": run.fold}))
    where = (f"folds {', '.join(map(str, folds))} x seeds {', '.join(map(str, seeds))}" if folds != (None,)
             else f"seeds {', '.join(map(str, seeds))} ({cfg.dataset} has one split: folds are not meaningful)")
    log(f"reproduce {', '.join(experiments)} on {cfg.dataset} ({where}): {len(runs)} runs, "
        f"{len(runs) - len(pending)} cached, {len(pending)} to train, {jobs} at a time"
        + (f" on {', '.join(devices)}" if devices else "") + (f", {threads} threads each" if threads else "")
        + f" -> {out_dir}")
    t0 = time.time()
    new, failures = _execute(pending, jobs, cfg.progress, log)
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


# ----------------------------------------------------------------------------- rendering

def _stats(values) -> tuple[float, float, int]:
    """``(mean, std, n)``; the sample std over runs (0 for a single run), NaNs dropped."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def _cell(stat, digits: int = 2) -> str:
    mean, std, n = stat
    if n == 0:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _md(head: list, rows: list) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _waf_at(result: dict, rate: float) -> float:
    return next(r["waf"] for r in result["student"] if abs(r["rate"] - rate) < 1e-9)


def _curve(result: dict, key: str = "student", field: str = "waf") -> list[float]:
    return [r[field] for r in sorted(result[key], key=lambda r: r["rate"])]


def _per_rate_stats(results: list, key="student", field="waf") -> list:
    curves = [_curve(r, key, field) for r in results]
    return [_stats([c[i] for c in curves]) for i in range(len(EVAL_RATES))]


def _paper_rows(table: str, dataset: str) -> dict | None:
    return paper_results()[table]["rows"].get(dataset) if table in paper_results() else None


def _diff(ours: float, paper: float) -> str:
    return "–" if not np.isfinite(ours) else f"{ours - paper:+.2f}"


def _rate_table(variants, grouped: dict, dataset: str, summary: str, paper_key: str) -> tuple:
    """The Markdown of a rates-as-columns table (Tables 2, 4, 5) and its per-row stats."""
    n_cells = len(variants[0].cells)
    head = (["Framework", "Teacher", "Student"] if n_cells == 3 else ["Model"]) + \
        [f"{r:.1f}" for r in EVAL_RATES] + ["Average"] + (["Decline"] if summary == "decline" else []) + ["runs"]
    paper = _paper_rows(paper_key, dataset)
    rows, stats = [], {}
    for v in variants:
        res = grouped[v.label]
        per_rate = _per_rate_stats(res)
        avg = _stats([np.mean(_curve(r)) for r in res])
        dec = _stats([_curve(r)[0] - _curve(r)[-1] for r in res])
        stats[v.label] = {"rates": per_rate, "average": avg, "decline": dec}
        rows.append(list(v.cells) + [_cell(s) for s in per_rate] + [_cell(avg)]
                    + ([_cell(dec)] if summary == "decline" else []) + [avg[2]])
        if paper and v.label in paper:
            p = paper[v.label]
            p_avg, p_dec = float(np.mean(p["rates"])), p["rates"][0] - p["rates"][-1]
            pad = [""] * (n_cells - 1)
            rows.append(["paper"] + pad + [f"{x:.2f}" for x in p["rates"]] + [f"{p.get('average', p_avg):.2f}"]
                        + ([f"{p['decline']:.2f}"] if summary == "decline" else []) + [""])
            rows.append(["Δ (ours − paper)"] + pad + [_diff(s[0], x) for s, x in zip(per_rate, p["rates"])]
                        + [_diff(avg[0], p.get("average", p_avg))]
                        + ([_diff(dec[0], p.get("decline", p_dec))] if summary == "decline" else []) + [""])
    return _md(head, rows), stats


def _render_table1(grouped, dataset):
    paper = _paper_rows("table1", dataset)
    head = ["Local", "Global", "teacher WAF (complete data)", "runs"] + (["paper", "Δ"] if paper else [])
    rows, stats = [], {}
    for v in VARIANTS["table1"]:
        s = _stats([r["teacher"]["waf"] for r in grouped[v.label]])
        stats[v.label] = s
        rows.append(list(v.cells) + [_cell(s), s[2]]
                    + ([f"{paper[v.label]:.2f}", _diff(s[0], paper[v.label])] if paper else []))
    return _md(head, rows), stats


def _render_fig6(grouped):
    head = ["Student"] + [f"{r:.1f}" for r in EVAL_RATES] + ["runs"]
    rows, stats = [], {}
    for v in VARIANTS["fig6"]:
        per_rate = _per_rate_stats(grouped[v.label], "distance", "distance")
        stats[v.label] = per_rate
        rows.append(list(v.cells) + [_cell(s, 4) for s in per_rate] + [per_rate[0][2]])
    return _md(head, rows), stats


def _render_fig78(grouped):
    variants = VARIANTS["fig78"]
    ime = [_stats([_waf_at(r, v.ime_rate) for r in grouped[v.label]]) for v in variants]
    # IME's average per fold x seed: the models trained at each rate for that fold and seed
    by_run = {}
    for v in variants:
        for r in grouped[v.label]:
            by_run.setdefault((r.get("fold"), r["seed"]), []).append(_waf_at(r, v.ime_rate))
    ime_avg = _stats([np.mean(w) for w in by_run.values() if len(w) == len(variants)])
    trained_70 = grouped[variants[-1].label]
    at70 = _per_rate_stats(trained_70)
    head = ["Model"] + [f"{r:.1f}" for r in EVAL_RATES] + ["Average"]
    rows = [["IME: trained with the fixed rate, tested at it"] + [_cell(s) for s in ime] + [_cell(ime_avg)],
            ["trained at 0.7, tested at every rate"] + [_cell(s) for s in at70]
            + [_cell(_stats([np.mean(_curve(r)) for r in trained_70]))]]
    return _md(head, rows), {"ime": ime, "trained_at_0.7": at70}


def parameter_counts(net: ITEACHNet) -> dict:
    """``{"teacher", "student"}``: each model's parameters split into input projections + ECCE,
    encoder layers and classifier, and their total."""
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    return {role: {"projections+ecce": count(m.proj) + count(m.ecce), "layers": count(m.layers),
                   "classifier": count(m.classifier), "total": count(m)}
            for role, m in (("teacher", net.teacher), ("student", net.student))}


def _render_table3(context) -> tuple[str, dict]:
    paper = paper_results()["table3"]["rows"]
    counts = {"paper settings": parameter_counts(ITEACHNet.from_config(ModelConfig(), (1024, 512, 1024), 4)),
              "as configured here": parameter_counts(ITEACHNet.from_config(
                  context["model"], context["input_dims"], context["num_classes"]))}
    m = lambda n: f"{n / 1e6:.3f}M"  # noqa: E731
    parts = []
    for name, c in counts.items():
        model = ModelConfig() if name == "paper settings" else context["model"]
        (tl, tm), (sl, sm) = roles(model)
        desc = {"teacher": f"teacher ({tl} × {tm.upper()})", "student": f"student ({sl} × {sm.upper()})"}
        rows = [[desc[r], m(c[r]["projections+ecce"]), m(c[r]["layers"]), m(c[r]["classifier"]), m(c[r]["total"])]
                + ([f"{paper[r] / 1e6:.2f}M"] if name == "paper settings" else []) for r in ("teacher", "student")]
        head = ["model", "input projections + ECCE", "encoder layers", "classifier", "total"] + \
            (["paper (Table 3)"] if name == "paper settings" else [])
        where = ("at the paper's settings (D = 128, 8 heads, FFN 4.0, text / audio / visual dims 1024 / 512 / "
                 "1024, four classes, max_len 110)" if name == "paper settings" else
                 f"as configured for this reproduction (dim {model.dim}, input dims {tuple(context['input_dims'])}, "
                 f"{context['num_classes']} classes)")
        parts.append(f"{where}:\n\n" + _md(head, rows))
    t = counts["paper settings"]
    why = (f"The paper's teacher count ({paper['teacher'] / 1e6:.2f}M) is close to our teacher's encoder layers "
           f"and classifier alone ({(t['teacher']['layers'] + t['teacher']['classifier']) / 1e6:.3f}M): it was "
           f"counted without the input projections and ECCE ({t['teacher']['projections+ecce'] / 1e6:.3f}M), "
           f"whereas its student count ({paper['student'] / 1e6:.2f}M) matches our whole student "
           f"({t['student']['total'] / 1e6:.3f}M).")
    return "\n\n".join(parts) + "\n\n" + why, counts


# ---- Fig. 9

def fig9_features(checkpoint: str, device: str = "auto", max_points: int = 1000) -> tuple[dict, tuple]:
    """``({panel: (features (N, D), labels)}, class names)`` for Fig. 9: the teacher's ``H_1``
    on complete test data, then the student's ``H'_1`` at each rate 0.0..0.7 (fixed-seed masks),
    the same utterances in every panel (at most ``max_points``, drawn with a fixed seed).
    Regression labels become ``negative`` / ``positive`` (label 0 left out), as the paper's MOSI plot."""
    net, cfg, splits, _ = load_for_eval(checkpoint, device=device)
    dev = resolve_device(device)
    test = splits.test
    panels = {}
    for rate in EVAL_RATES:
        h = hidden_features(net, test, fixed_masks(test, rate, cfg.eval_seed), cfg.batch_size, dev)
        if not panels:
            panels["Teacher (complete)"] = (h["teacher"], h["labels"])
        panels[f"Student-{rate:.1f}"] = (h["student"], h["labels"])
    labels = next(iter(panels.values()))[1]
    if net.regression:
        keep = labels != 0
        names = ("negative", "positive")
        panels = {k: (x[keep], (y[keep] > 0).astype(np.int64)) for k, (x, y) in panels.items()}
        labels = labels[keep]
    else:
        names = tuple(splits.class_names) or tuple(str(i) for i in range(net.student.num_classes))
    if len(labels) > max_points:
        pick = np.sort(np.random.default_rng(0).choice(len(labels), max_points, replace=False))
        panels = {k: (x[pick], y[pick]) for k, (x, y) in panels.items()}
    return panels, names


def tsne_panels(panels: dict, seed: int = 0, max_iter: int = 500) -> dict:
    """Each panel's features reduced to 2-D with scikit-learn's ``TSNE`` (500 iterations: the
    layout has settled by then, and a 2-core CPU draws the nine panels in about a minute)."""
    out = {}
    for name, (x, y) in panels.items():
        n = len(x)
        xy = (TSNE(n_components=2, perplexity=max(1.0, min(30.0, (n - 1) / 3)), init="pca", random_state=seed,
                   max_iter=max_iter).fit_transform(np.asarray(x, dtype=np.float64)) if n > 2 else np.zeros((n, 2)))
        out[name] = (xy, y)
    return out


# ---- the orderings the paper reports

def _orderings(stats: dict) -> list[str]:
    """The paper's qualitative claims, each checked on our means: it holds or not, and a
    difference smaller than the larger of the two rows' std over runs is said to be unresolved;
    with one run in a row there is no std, and the claim says so instead of showing ``± 0.00``."""
    claims = []

    def check(desc, a, b, higher=True):
        (ma, sa, na), (mb, sb, nb) = a, b
        if not (np.isfinite(ma) and np.isfinite(mb)):
            return
        ok = ma > mb if higher else ma < mb
        if min(na, nb) < 2:  # one run: a std of 0 would claim a precision that one run does not have
            values = f"{ma:.2f} vs {mb:.2f}; one run per row, so no spread to judge the difference by"
        else:
            spread = max(sa, sb)
            within = f"; the difference {abs(ma - mb):.2f} is within one std ({spread:.2f}): not resolved by " \
                "these runs" if abs(ma - mb) < spread else ""
            values = f"{ma:.2f} ± {sa:.2f} vs {mb:.2f} ± {sb:.2f}{within}"
        claims.append(f"- {desc}: **{'holds' if ok else 'does not hold'}** here ({values})")

    if "table1" in stats:
        s = stats["table1"]
        check("Table 1, teacher: ECCE local+global > global", s["local+global"], s["global"])
        check("Table 1, teacher: ECCE local+global > off", s["local+global"], s["off"])
        check("Table 1, teacher: off > global (the paper's numbers: global alone is the worst, on all four "
              "datasets)", s["off"], s["global"])
    if "table2" in stats:
        avg = {k: v["average"] for k, v in stats["table2"].items()}
        dec = {k: v["decline"] for k, v in stats["table2"].items()}
        check("Table 2: ITS TF NAS > PRE TF (average WAF over the rates)", avg["ITS TF NAS"], avg["PRE TF"])
        check("Table 2: ITS TF TF > PRE TF (average)", avg["ITS TF TF"], avg["PRE TF"])
        check("Table 2: ITS TF NAS > TS NAS TF (average)", avg["ITS TF NAS"], avg["TS NAS TF"])
        least = min((v for k, v in dec.items() if k != "ITS TF NAS"), key=lambda v: v[0])
        check("Table 2: the NAS student declines least (its Decline vs the smallest other)",
              dec["ITS TF NAS"], least, higher=False)
    if "fig6" in stats:
        # the mean over rates of each run's distance curve is not kept: the rates' mean and mean std
        curve = {k: (float(np.mean([x[0] for x in v])), float(np.mean([x[1] for x in v])), v[0][2])
                 for k, v in stats["fig6"].items()}
        check("Fig. 6: the TF student is closer to the teacher than the NAS student (mean distance over rates)",
              curve["TF student"], curve["NAS student"], higher=False)
    return claims


def render(experiments, groups: dict, results: dict, runs: dict, context: dict, out_dir: str, log=print) -> dict:
    """Write ``results.csv``, one ``<experiment>.md`` each, the PNGs and ``report.md`` from
    ``results`` (``{key: result}``; keys without one are runs that failed). Nothing is trained."""
    os.makedirs(out_dir, exist_ok=True)
    grouped = {exp: {label: [results[k] for k in keys if k in results] for label, keys in g.items()}
               for exp, g in groups.items()}
    paths = {"csv": _write_csv(grouped, context["dataset"], os.path.join(out_dir, "results.csv"))}
    tables, stats = {}, {}
    for exp in experiments:
        g = grouped.get(exp, {})
        if exp != "table3" and not all(g.values()):
            missing = [label for label, res in g.items() if not res]
            tables[exp] = f"not drawn: no finished run for {', '.join(missing)}"
        else:
            tables[exp], stats[exp], paths[exp] = _render_one(exp, g, runs, context, out_dir)
        paths[f"{exp}_md"] = atomic_write(os.path.join(out_dir, f"{exp}.md"), _section(exp, tables[exp], context, g))
    stats = {k: v for k, v in stats.items() if v is not None}
    report = _report(experiments, tables, context, grouped, stats)
    paths["report"] = atomic_write(os.path.join(out_dir, "report.md"), report)
    log(report)
    log(f"written under {out_dir}: report.md, results.csv, " + ", ".join(
        os.path.basename(p) for k, p in paths.items() if k not in ("csv", "report") and p))
    return {"paths": paths, "tables": tables, "stats": stats, "report": report}


def _bands(stats_per_rate) -> tuple:
    """``(rates, means, stds)`` of a per-rate list of :func:`_stats`."""
    return EVAL_RATES, [s[0] for s in stats_per_rate], [s[1] for s in stats_per_rate]


def _render_one(exp, g, runs, context, out_dir) -> tuple:
    """``(Markdown, stats or None, PNG path or None)`` of one experiment."""
    data, dataset = context["data"], context["dataset"]
    if exp == "table1":
        return (*_render_table1(g, dataset), None)
    if exp == "table3":
        return (*_render_table3(context), None)
    if exp in ("table2", "table4", "table5"):
        table, stats = _rate_table(VARIANTS[exp], g, dataset, "decline" if exp == "table2" else "average", exp)
        series = {v.label: _bands(stats[v.label]["rates"]) for v in VARIANTS[exp]}
        paper = _paper_rows(exp, dataset)
        if exp != "table2" and paper:
            series["paper: ITEACH-Net"] = (EVAL_RATES, paper["ITEACH-Net"]["rates"], [0.0] * len(EVAL_RATES))
        title = f"{TITLES[exp].split(' — ')[0]}: WAF vs test missing rate ({data})"
        return table, stats, plots.curves_with_bands(series, os.path.join(out_dir, f"{exp}_waf.png"), title)
    if exp == "fig6":
        table, stats = _render_fig6(g)
        series = {v.label: _bands(stats[v.label]) for v in VARIANTS[exp]}
        return table, stats, plots.curves_with_bands(series, os.path.join(out_dir, "fig6_distance.png"),
                                                     f"Fig. 6: student vs teacher ({data})", ylabel="mean |H'_1 − H_1|")
    if exp == "fig78":
        table, stats = _render_fig78(g)
        series = {"IME (trained and tested at the rate)": _bands(stats["ime"]),
                  "trained at 0.7, tested at every rate": _bands(stats["trained_at_0.7"])}
        return table, stats, plots.curves_with_bands(series, os.path.join(out_dir, "fig78_ime.png"),
                                                     f"Fig. 7/8: IME and the model trained at 0.7 ({data})")
    # fig9: from the first run's checkpoint
    result = g["ITEACH-Net"][0]
    checkpoint = os.path.join(runs[result["key"]].folder, "best.pt") if result["key"] in runs else ""
    if not os.path.isfile(checkpoint):
        return (f"not drawn: the checkpoint of run {result['key']} is missing (delete its result.json to "
                "train it again)", None, None)
    features, names = fig9_features(checkpoint, device=context.get("device", "auto"))
    path = plots.embedding_grid(tsne_panels(features), names, os.path.join(out_dir, "fig9_tsne.png"),
                                f"t-SNE of H_1 on the test split ({data}, seed {result['seed']})")
    return f"![Fig. 9]({os.path.basename(path)}) (run {result['key']}, seed {result['seed']})", None, path


def _runs_line(context, grouped_exp, exp) -> str:
    if exp == "fig9":
        return "the first fold and seed's run"
    n = max((len(v) for v in grouped_exp.values()), default=0)
    per_row = f"{n} run{'' if n == 1 else 's'} per row"
    if context["folds"] != (None,):
        return (f"{per_row}: IEMOCAP folds {', '.join(map(str, context['folds']))} (leave one session out) "
                f"x seeds {', '.join(map(str, context['seeds']))}; mean ± std over folds x seeds")
    return (f"{per_row}: seeds {', '.join(map(str, context['seeds']))}; mean ± std over seeds "
            f"({context['dataset']} has one train/test split, so folds are not meaningful)")


def _section(exp, table, context, grouped_exp) -> str:
    lines = [f"### {TITLES.get(exp, exp)}", ""]
    if exp != "table3":
        lines += [f"{context['data']}; {_runs_line(context, grouped_exp, exp)}.", ""]
    return "\n".join(lines + [table, ""])


def _report(experiments, tables, context, grouped, stats) -> str:
    head = ["# Reproducing ITEACH-Net", ""]
    if context.get("command"):
        head += [f"Command: `{context['command']}`", ""]
    head += [f"Data: {context['data']}; student tested on the test split with fixed-seed masks at each rate "
             f"(the teacher: complete data). This call trained {context.get('trained', 0)} runs in "
             f"{context['train_seconds']:.0f} s ({context.get('cpu_seconds', 0):.0f} s of CPU).", ""]
    if context["dataset"] in paper_results()["datasets"]:
        head += [f"The paper's numbers are from {paper_results()['paper']} ({paper_results()['note']}).", ""]
    else:
        head += [f"{context['dataset']} is not one of the paper's datasets, so no paper numbers are shown beside ours.",
                 ""]
    body = [_section(exp, tables[exp], context, grouped.get(exp, {})) for exp in experiments]
    claims = _orderings(stats)
    tail = ["### The paper's orderings, checked here", ""] + claims + [""] if claims else []
    return "\n".join(head + body + tail)


def _write_csv(grouped: dict, dataset: str, path: str) -> str:
    """One row per experiment x row x run x model x rate x metric."""
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["experiment", "row", "dataset", "fold", "seed", "run", "model", "rate", "metric", "value"])
    for exp, g in grouped.items():
        for label, results in g.items():
            for res in results:
                ids = [exp, label, dataset, "" if res.get("fold") is None else res["fold"], res["seed"], res["key"]]
                for row in res["student"]:
                    for metric in ("waf", "acc", "mae", "realised_rate"):
                        if metric in row:
                            w.writerow(ids + ["student", row["rate"], metric, round(row[metric], 4)])
                for metric in ("waf", "acc", "mae"):
                    if metric in res["teacher"]:
                        w.writerow(ids + ["teacher (complete data)", 0.0, metric, round(res["teacher"][metric], 4)])
                for row in res["distance"]:
                    w.writerow(ids + ["student vs teacher", row["rate"], "mean_abs_h1_distance",
                                      round(row["distance"], 6)])
    return atomic_write(path, text.getvalue())
