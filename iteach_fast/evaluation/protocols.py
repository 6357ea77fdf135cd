"""The paper's evaluation protocols (§4.3), each a driver that trains and / or evaluates and
writes its results:

* :func:`ume` — Unified Model Evaluation: one checkpoint, rates 0.0..0.7, a table with their
  average, written as JSON and CSV (+ plots); ``model="teacher"``: the teacher on complete
  data (the paper's Table 1), written as ``teacher.json`` / ``teacher.csv``.
* :func:`ime` — Independent Model Evaluation: one model trained per rate (fixed strategy),
  each tested at its own rate.
* :func:`demo` — the short synthetic run behind ``make demo``: train, then UME, and one plot
  of every demo run found so far; :func:`stream_demo` (``demo --stream``): the same for a
  causal model, then one test conversation replayed live.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from ..choices import EVAL_MODELS, MODALITIES, check_choice
from ..data.masking import EVAL_RATES
from ..evaluation import plots as plotting
from ..presets import DEMO_DEFAULTS
from ..training.checkpoint import load_for_eval
from ..training.config import TrainConfig
from ..training.loop import train
from ..training.runtime import check_precision, resolve_device
from ..training.validation import evaluate_rates
from .baselines import LABELS, baselines_for_run
from .predict import replay
from .tables import average_row, format_comparison, format_table, public_rows, write_rate_table

__all__ = ["ume", "ime", "ime_config", "demo", "stream_demo", "DEMO_DEFAULTS"]

def ume(checkpoint: str, out_dir: str | None = None, rates=None, split: str = "test", seed: int = 0,
        batch_size: int | None = None, device: str = "auto", backend: str | None = None, dtype: str | None = None,
        plots: bool = True, log=print, model: str = "student", baselines: bool = True) -> dict:
    """Unified Model Evaluation of one checkpoint; writes ``ume.json`` / ``ume.csv`` (and
    ``plots/``) under ``out_dir`` (default: the checkpoint's folder); ``rates`` default to
    UME's 0.0..0.7. Returns the result dict.

    ``baselines`` (the student): the baselines of :mod:`.baselines`, trained on the
    checkpoint's data with its missing-rate strategy and tested with the same masks, printed
    beside the model and written into ``ume.json`` (kept in ``baselines-<key>.json``).

    ``model="teacher"``: the teacher on complete data (``rates`` default to, and must be,
    ``(0.0,)``), written as ``teacher.json`` / ``teacher.csv``; the plots are the student's,
    so none are drawn."""
    check_choice("model", model, EVAL_MODELS)
    if rates is None:
        rates = (0.0,) if model == "teacher" else EVAL_RATES
    plots = plots and model == "student"
    net, cfg, splits, _ = load_for_eval(checkpoint, device=device, backend=backend)
    dev = resolve_device(device)
    dtype = check_precision(dtype or cfg.dtype, dev)
    dataset = getattr(splits, split)
    out_dir = out_dir or os.path.dirname(os.path.abspath(checkpoint))
    rows = evaluate_rates(net, dataset, rates, seed, batch_size or cfg.batch_size, dev, dtype,
                          keep_predictions=plots, model=model)
    if model == "teacher":
        label = f"{cfg.model.framework.upper()} (teacher {net.teacher.mixer.upper()}, ecce {cfg.model.ecce})"
        title = f"teacher on complete data, {dataset.name} [{split}], {label}"
    else:
        # PRE is one model, trained on complete and masked data alike: it has no student
        role = "one model" if net.teacher is net.student else "student"
        label = (f"{cfg.model.framework.upper()} ({role} {net.student.mixer.upper()}, {cfg.strategy}"
                 + "".join(f", {o}" for o in cfg.model.options()) + ")")
        title = f"UME on {dataset.name} [{split}], {label}, masks seed {seed}"
    table = format_table(rows, title)
    log(table)
    for note in splits.notes:
        log(f"note: {note}")
    base = None
    if baselines and model == "student":
        base = baselines_for_run(cfg, splits, rates, split, seed, folder=out_dir, log=log)
        columns = {"model": rows, **{_short(name, base): r for name, r in base["rows"].items()}}
        comparison = format_comparison(columns, f"beside the baselines (WAF %, the same test masks; "
                                                f"{cfg.strategy} missing rates in training, as the model):")
        log(comparison)
        table += "\n\n" + comparison
    meta = {"checkpoint": os.path.basename(checkpoint), "dataset": dataset.name, "split": split, "mask_seed": seed,
            "task": dataset.task, "framework": cfg.model.framework, "student_mixer": net.student.mixer,
            "strategy": cfg.strategy, "label": label, "notes": list(splits.notes), "model": model,
            "metrics": "percent; WAF = f1_score(average='weighted'); regression: binary, label 0 excluded; MAE raw"}
    stem = "teacher" if model == "teacher" else "ume"
    paths = {"json": os.path.join(out_dir, f"{stem}.json"), "csv": os.path.join(out_dir, f"{stem}.csv")}
    if base is not None:
        meta["baselines"] = {"rows": {name: public_rows(r) for name, r in base["rows"].items()},
                             "logreg_context_k": base["logreg_context_k"], "labels": LABELS}
    write_rate_table(rows, paths["json"], paths["csv"], meta)
    if plots:
        from sklearn.metrics import confusion_matrix  # scikit-learn: only for the plots

        pdir = os.path.join(out_dir, "plots")
        reference = {LABELS[name]: r for name, r in (base["rows"].items() if base else ())}
        what = f"{label} on {dataset.name} [{split}]"
        paths["waf_plot"] = plotting.waf_vs_rate({label: public_rows(rows)}, os.path.join(pdir, "waf_vs_rate.png"),
                                                 baselines=reference, title=what)
        if not net.regression:
            classes = range(net.student.num_classes)
            paths["confusion"] = plotting.confusion_grid(
                {r["rate"]: confusion_matrix(r["_y"], r["_p"], labels=classes) for r in rows},
                dataset.class_names or [str(i) for i in classes], os.path.join(pdir, "confusion.png"), title=what)
        paths["ecce"] = plotting.ecce_heatmap(net, dataset, os.path.join(pdir, "ecce_heatmap.png"), device=dev,
                                              title=what)
    rows = public_rows(rows)
    return {"rows": rows, "average": average_row(rows), "table": table, "paths": paths, "meta": meta}


def _short(name: str, base: dict) -> str:
    """A baseline's column heading."""
    k = base.get("logreg_context_k")
    return {"majority": "majority", "logreg": "logreg", "logreg_context": f"logreg±{k}", "gru": "BiGRU",
            "gru_causal": "GRU"}.get(name, name)


def ime_config(cfg: TrainConfig, rate: float) -> TrainConfig:
    """IME's run at ``rate``: ``cfg`` trained with the fixed strategy at that rate and selected there."""
    return cfg.replace(strategy="fixed", rate=float(rate), select_rates=(float(rate),))


def ime(cfg: TrainConfig, rates=EVAL_RATES, out_dir: str | None = None, log=print) -> dict:
    """Independent Model Evaluation: train one model per rate with the fixed strategy (model
    selection at that rate), test each at its own rate; writes ``ime.json`` / ``ime.csv``."""
    out_dir = out_dir or os.path.join(cfg.out_dir, "ime")
    dev = resolve_device(cfg.device)
    precision = check_precision(cfg.dtype, dev)
    rows = []
    for rate in rates:
        sub = ime_config(cfg, rate).replace(out_dir=os.path.join(out_dir, f"rate_{rate:.1f}"))
        log(f"== IME: training at missing rate {rate:.1f} -> {sub.out_dir}")
        summary = train(sub, log=log)
        net, _, splits, _ = load_for_eval(summary["best"], device=cfg.device, backend=cfg.model.backend)
        rows.append(evaluate_rates(net, splits.test, (rate,), cfg.eval_seed, cfg.batch_size, dev, precision)[0])
    table = format_table(rows, f"IME ({cfg.model.framework.upper()}, one model per rate, fixed strategy)")
    log(table)
    meta = {"dataset": cfg.dataset, "framework": cfg.model.framework, "strategy": "fixed",
            "mask_seed": cfg.eval_seed,
            "metrics": "percent; each row is a separate model trained and tested at that rate"}
    write_rate_table(rows, os.path.join(out_dir, "ime.json"), os.path.join(out_dir, "ime.csv"), meta)
    return {"rows": rows, "average": average_row(rows), "table": table}


def demo(cfg: TrainConfig, log=print, baselines: bool = True) -> dict:
    """Train ``cfg`` (the demo's defaults, see :data:`DEMO_DEFAULTS`) under
    ``<out_dir>/<framework>``, evaluate it (UME, beside the baselines unless ``baselines`` is
    False), and plot every demo run found so far."""
    root = cfg.out_dir
    framework = cfg.model.framework
    cfg = cfg.replace(out_dir=os.path.join(root, framework))
    log(f"demo: ITEACH-Net ({framework}) on synthetic conversations, {cfg.epochs} epochs, "
        f"then UME at missing rates 0.0..0.7 -> {cfg.out_dir}")
    t0 = time.time()
    summary = train(cfg, log=log)
    t_train = time.time() - t0
    res = ume(summary["best"], out_dir=cfg.out_dir, device=cfg.device, dtype=cfg.dtype, log=log, baselines=baselines)
    total = time.time() - t0
    log(f"\ntrained in {t_train:.0f} s, evaluated in {total - t_train:.0f} s (total {total:.0f} s)")
    found, chance = {}, {}
    for fw in ("its", "ts", "pre"):
        path = os.path.join(root, fw, "ume.json")
        if os.path.isfile(path):
            with open(path) as f:
                run = json.load(f)
            found[run["label"]] = run["rows"]
            chance = chance or {LABELS["majority"]: run.get("baselines", {}).get("rows", {}).get("majority", [])}
    compare = plotting.waf_vs_rate(found, os.path.join(root, "waf_vs_rate.png"),
                                   baselines={k: v for k, v in chance.items() if v},
                                   title=f"the demo runs so far on {res['meta']['dataset']} [test]")
    if len(found) > 1:
        log("UME average WAF of the demo runs so far: " + "; ".join(
            f"{label} {sum(r['waf'] for r in rows) / len(rows):.2f}" for label, rows in found.items()))
    log(f"results: {res['paths']['json']}, {res['paths']['csv']}")
    log(f"plots:   {os.path.dirname(res['paths']['waf_plot'])}/ (waf_vs_rate, confusion, ecce_heatmap); "
        f"all demo runs: {compare}")
    if framework == "its":
        log("compare with the single-model framework: iteach-fast demo --framework pre")
    return {**res, "summary": summary, "comparison_plot": compare}


def stream_demo(cfg: TrainConfig, log=print) -> dict:
    """``iteach-fast demo --stream``: the demo's training (:func:`demo`) of a causal ``cfg``,
    then its test conversation with the most emotion shifts replayed live."""
    if not cfg.model.causal:
        raise ValueError("demo --stream trains a causal model: drop --no-causal")
    res = demo(cfg, log=log)
    net, _, splits, _ = load_for_eval(res["summary"]["best"], device=cfg.device)
    fits = [c for c in splits.test if len(c["labels"]) <= net.student.max_len]
    conv = max(fits, key=lambda c: (int((np.diff(c["labels"]) != 0).sum()), -len(c["labels"])))
    log("")
    rows = replay(net, {k: conv[k] for k in ("id", *MODALITIES, "labels")}, splits.class_names, log=log)
    return {**res, "replay": rows}
