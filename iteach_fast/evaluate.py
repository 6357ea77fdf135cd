"""Evaluation (paper §4.2-4.3, DESIGN §2 "Evaluation").

* :func:`compute_metrics` — GCNet's metrics, from sklearn: weighted F1 (WAF) and accuracy
  over valid utterances; for regression (CMU-MOSI / MOSEI) predictions and labels are made
  binary (``> 0`` / ``< 0``) with label-0 utterances excluded, plus the MAE of the raw
  scores over all utterances. Reported in percent (MAE in label units).
* :func:`evaluate_rates` — the student on a split at several missing rates, each with a
  fixed-seed mask (:func:`iteach_fast.masking.fixed_masks`): every model sees the same masks.
* :func:`ume` — Unified Model Evaluation: one checkpoint, rates 0.0..0.7, a table with
  their average, written as JSON and CSV (+ plots).
* :func:`ime` — Independent Model Evaluation: one model trained per rate (fixed strategy),
  each tested at its own rate.
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, mean_absolute_error
from torch.utils.data import DataLoader

from .data import collate
from .masking import EVAL_RATES, apply_mask, fixed_masks, missing_rate, present_for_batch

__all__ = ["compute_metrics", "predict", "evaluate_rates", "format_table", "ume", "ime", "write_rows", "data_gaps"]


def compute_metrics(y_true, y_pred, task: str = "classification") -> dict:
    """``{"waf", "acc"}`` in percent (``+ "mae"`` for regression) over the given utterances.

    Classification: ``y_pred`` are class ids. Regression: ``y_pred`` are raw scores.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if task == "regression":
        out = {"mae": float(mean_absolute_error(y_true, y_pred)) if len(y_true) else float("nan")}
        keep = y_true != 0  # GCNet: label-0 utterances have no polarity
        t, p = y_true[keep] > 0, y_pred[keep] > 0
    else:
        out, t, p = {}, y_true, y_pred
    if len(t) == 0:
        return {"waf": float("nan"), "acc": float("nan"), **out}
    return {"waf": 100.0 * float(f1_score(t, p, average="weighted")),
            "acc": 100.0 * float(accuracy_score(t, p)), **out}


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32" or device.type != "cuda":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


@torch.no_grad()
def predict(net, dataset, masks: dict | None, batch_size: int = 32, device="cpu", dtype: str = "fp32"):
    """The student's predictions on ``dataset`` with ``masks`` (None = complete data).

    Returns ``(y_true, y_pred, realised_rate)`` over valid utterances: ``y_pred`` class ids,
    or raw scores for a regressor.
    """
    device = torch.device(device)
    was_training = net.training
    net.eval()
    ys, ps, cells, lost = [], [], 0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        B, L = batch["labels"].shape
        present = present_for_batch(batch, masks) if masks is not None else (
            torch.arange(L)[None, :, None] < batch["lengths"][:, None, None]).expand(B, L, 3).clone()
        inc = apply_mask(batch, present)
        valid = torch.arange(L)[None] < batch["lengths"][:, None]
        with _autocast(device, dtype):
            out = net.predict(tuple(inc[m].to(device) for m in ("text", "audio", "visual")),
                              batch["lengths"].to(device), present.to(device))
        out = out.float().cpu()
        pred = out if net.regression else out.argmax(-1)
        ys.append(batch["labels"][valid].numpy())
        ps.append(pred[valid].numpy())
        n = int(valid.sum())
        cells += 3 * n
        lost += round(missing_rate(present, batch["lengths"]) * 3 * n)
    net.train(was_training)
    if not ys:
        return np.zeros(0), np.zeros(0), 0.0
    return np.concatenate(ys), np.concatenate(ps), lost / max(cells, 1)


def evaluate_rates(net, dataset, rates=EVAL_RATES, seed: int = 0, batch_size: int = 32, device="cpu",
                   dtype: str = "fp32", keep_predictions: bool = False) -> list[dict]:
    """One row per rate: ``{"rate", "realised_rate", "waf", "acc", ["mae"], "n"}``."""
    task = "regression" if net.regression else "classification"
    rows = []
    for rate in rates:
        masks = fixed_masks(dataset, rate, seed)
        y, p, realised = predict(net, dataset, masks, batch_size, device, dtype)
        row = {"rate": float(rate), "realised_rate": round(realised, 4), **compute_metrics(y, p, task), "n": len(y)}
        if keep_predictions:
            row["_y"], row["_p"] = y, p
        rows.append(row)
    return rows


def average_row(rows: list[dict]) -> dict:
    keys = [k for k in ("waf", "acc", "mae") if k in rows[0]]
    return {"rate": "average", **{k: float(np.mean([r[k] for r in rows])) for k in keys}}


def format_table(rows: list[dict], title: str = "") -> str:
    """A fixed-width table, one row per rate plus the average."""
    reg = "mae" in rows[0]
    head = f"{'rate':>8} {'realised':>9} {'WAF':>7} {'Acc':>7}" + (f" {'MAE':>7}" if reg else "")
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for r in rows + [average_row(rows)]:
        rate = f"{r['rate']:.1f}" if isinstance(r["rate"], float) else r["rate"]
        realised = f"{r['realised_rate']:.3f}" if "realised_rate" in r else ""
        line = f"{rate:>8} {realised:>9} {r['waf']:7.2f} {r['acc']:7.2f}"
        lines.append(line + (f" {r['mae']:7.3f}" if reg else ""))
    return "\n".join(lines)


def _clean(rows):
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def write_rows(rows: list[dict], path_json: str, path_csv: str, meta: dict) -> None:
    """``rows`` (+ their average) as JSON (with ``meta``) and CSV, written atomically."""
    rows = _clean(rows)
    avg = average_row(rows)
    os.makedirs(os.path.dirname(path_json) or ".", exist_ok=True)
    _atomic_text(path_json, json.dumps({**meta, "rows": rows, "average": avg}, indent=2))
    cols = ["rate", "realised_rate", "waf", "acc"] + (["mae"] if "mae" in rows[0] else []) + ["n"]
    tmp = path_csv + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows + [avg]:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    os.replace(tmp, path_csv)


def _atomic_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def ume(checkpoint: str, out_dir: str | None = None, rates=EVAL_RATES, split: str = "test", seed: int = 0,
        batch_size: int | None = None, device: str = "auto", backend: str | None = None, dtype: str | None = None,
        plots: bool = True, log=print) -> dict:
    """Unified Model Evaluation of one checkpoint; writes ``ume.json`` / ``ume.csv`` (and
    ``plots/``) under ``out_dir`` (default: the checkpoint's folder). Returns the result dict."""
    from . import train as training

    net, cfg, splits, _ = training.load_for_eval(checkpoint, device=device, backend=backend)
    dev = training.resolve_device(device)
    dtype = training.check_dtype(dtype or cfg.dtype, dev)
    dataset = getattr(splits, split)
    out_dir = out_dir or os.path.dirname(os.path.abspath(checkpoint))
    rows = evaluate_rates(net, dataset, rates, seed, batch_size or cfg.batch_size, dev, dtype,
                          keep_predictions=plots)
    label = f"{cfg.framework.upper()} (student {net.student.mixer.upper()}, {cfg.strategy})"
    title = f"UME on {dataset.name} [{split}], {label}, masks seed {seed}"
    table = format_table(rows, title)
    log(table)
    for note in splits.notes:
        log(f"note: {note}")
    meta = {"checkpoint": os.path.basename(checkpoint), "dataset": dataset.name, "split": split, "mask_seed": seed,
            "task": dataset.task, "framework": cfg.framework, "student_mixer": net.student.mixer,
            "strategy": cfg.strategy, "label": label, "notes": list(splits.notes),
            "metrics": "percent; WAF = f1_score(average='weighted'); regression: binary, label 0 excluded; MAE raw"}
    paths = {"json": os.path.join(out_dir, "ume.json"), "csv": os.path.join(out_dir, "ume.csv")}
    write_rows(rows, paths["json"], paths["csv"], meta)
    if plots:
        from . import plots as plotting

        pdir = os.path.join(out_dir, "plots")
        paths["waf_plot"] = plotting.waf_vs_rate({label: _clean(rows)}, os.path.join(pdir, "waf_vs_rate.png"))
        if not net.regression:
            paths["confusion"] = plotting.confusion_grid(
                {r["rate"]: confusion_matrix(r["_y"], r["_p"], labels=range(net.student.num_classes)) for r in rows},
                dataset.class_names or [str(i) for i in range(net.student.num_classes)],
                os.path.join(pdir, "confusion.png"))
        paths["ecce"] = plotting.ecce_heatmap(net, dataset, os.path.join(pdir, "ecce_heatmap.png"), device=dev)
    return {"rows": _clean(rows), "average": average_row(_clean(rows)), "table": table, "paths": paths,
            "meta": meta}


def ime(cfg, rates=EVAL_RATES, out_dir: str | None = None, log=print) -> dict:
    """Independent Model Evaluation: train one model per rate with the fixed strategy (model
    selection at that rate), test each at its own rate; writes ``ime.json`` / ``ime.csv``."""
    from . import train as training

    out_dir = out_dir or os.path.join(cfg.out_dir, "ime")
    rows = []
    for rate in rates:
        sub = cfg.replace(strategy="fixed", rate=float(rate), select_rates=(float(rate),),
                          out_dir=os.path.join(out_dir, f"rate_{rate:.1f}"))
        log(f"== IME: training at missing rate {rate:.1f} -> {sub.out_dir}")
        summary = training.train(sub, log=log)
        net, _, splits, _ = training.load_for_eval(summary["best"], device=cfg.device, backend=cfg.backend)
        dev = training.resolve_device(cfg.device)
        row = evaluate_rates(net, splits.test, (rate,), cfg.eval_seed, cfg.batch_size, dev,
                             training.check_dtype(cfg.dtype, dev))[0]
        rows.append(row)
    table = format_table(rows, f"IME ({cfg.framework.upper()}, one model per rate, fixed strategy)")
    log(table)
    meta = {"dataset": cfg.dataset, "framework": cfg.framework, "strategy": "fixed", "mask_seed": cfg.eval_seed,
            "metrics": "percent; each row is a separate model trained and tested at that rate"}
    write_rows(rows, os.path.join(out_dir, "ime.json"), os.path.join(out_dir, "ime.csv"), meta)
    return {"rows": rows, "average": average_row(rows), "table": table}


# ------------------------------------------------------------------ the data's gaps

MODALITY_SUBSETS = (("text", "audio", "visual"), ("text", "audio"), ("text", "visual"), ("audio", "visual"),
                    ("text",), ("audio",), ("visual",))


def _labels(dataset) -> np.ndarray:
    return np.concatenate([np.asarray(c["labels"]) for c in dataset])


def _utterance_features(dataset, modalities):
    """``(X, y, conversation sizes)`` over all utterances, the chosen modalities' features concatenated."""
    xs = [np.concatenate([np.asarray(c[m], dtype=np.float64) for m in modalities], axis=1) for c in dataset]
    return np.concatenate(xs), _labels(dataset), [len(c["labels"]) for c in dataset]


def _window_sum(v: np.ndarray, k: int) -> np.ndarray:
    """``out[i] = sum of v[i-k .. i+k]`` within one conversation."""
    n = len(v)
    csum = np.concatenate([np.zeros((1,) + v.shape[1:]), np.cumsum(v, 0)])
    idx = np.arange(n)
    return csum[np.clip(idx + k + 1, 0, n)] - csum[np.clip(idx - k, 0, n)]


def _only(dataset, modalities) -> dict:
    """A fixed mask table keeping only ``modalities`` in every utterance."""
    keep = torch.tensor([m in modalities for m in ("text", "audio", "visual")])
    return {c["id"]: keep.expand(len(c["labels"]), 3).clone() for c in dataset}


def data_gaps(splits, net=None, split: str = "test", context_windows=(1, 2, 3), device="cpu",
              batch_size: int = 32, log=print) -> dict:
    """How much context and each modality are worth on a dataset (classification).

    * ``context``: a per-utterance logistic regression (no context) against the same
      classifier whose log-probabilities are summed over a ``±k`` window of the conversation
      (the simplest use of local emotional stability), and, with ``net``, the trained
      student on complete data (a learned context model).
    * ``modalities``: the per-utterance classifier trained and tested on each subset of
      modalities; with ``net``, the student tested with only that subset present.

    Rows ``{"model", "modalities", "waf", "acc"}`` (percent), printed as a table.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if splits.train.task != "classification":
        raise ValueError("data_gaps: classification datasets only")
    test = getattr(splits, split)
    rows, ctx_rows = [], []

    def fit(mods):
        xtr, ytr, _ = _utterance_features(splits.train, mods)
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(xtr, ytr)

    for mods in MODALITY_SUBSETS:
        clf = fit(mods)
        xte, yte, sizes = _utterance_features(test, mods)
        rows.append({"model": "per-utterance logreg (no context)", "modalities": "+".join(m[0] for m in mods),
                     **compute_metrics(yte, clf.predict(xte))})
        if len(mods) == 3:
            logp = np.split(clf.predict_log_proba(xte), np.cumsum(sizes)[:-1])
            for k in context_windows:
                pred = np.concatenate([clf.classes_[_window_sum(lp, k).argmax(1)] for lp in logp])
                ctx_rows.append({"model": f"logreg, log-probs summed over ±{k} utterances",
                                 "modalities": "t+a+v", **compute_metrics(yte, pred)})
    rows += ctx_rows
    if net is not None:
        for mods in MODALITY_SUBSETS:
            y, p, _ = predict(net, test, _only(test, mods), batch_size, device)
            rows.append({"model": "ITEACH student (context)", "modalities": "+".join(m[0] for m in mods),
                         **compute_metrics(y, p)})
    prior = np.bincount(_labels(splits.train).astype(np.int64), minlength=splits.num_classes)
    y_test = _labels(test)
    rows.append({"model": "majority class (chance)", "modalities": "-",
                 **compute_metrics(y_test, np.full_like(y_test, int(prior.argmax())))})
    head = f"{'model':46s} {'mods':>6s} {'WAF':>7s} {'Acc':>7s}"
    lines = [f"data gaps on {test.name} [{split}]", head, "-" * len(head)]
    lines += [f"{r['model']:46s} {r['modalities']:>6s} {r['waf']:7.2f} {r['acc']:7.2f}" for r in rows]
    table = "\n".join(lines)
    log(table)
    return {"rows": rows, "table": table}
