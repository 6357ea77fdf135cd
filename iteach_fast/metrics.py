"""Metrics and the tables they fill (GCNet's definitions, via scikit-learn).

* :func:`compute_metrics` — weighted F1 (WAF) and accuracy over valid utterances; for
  regression (CMU-MOSI / MOSEI) predictions and labels made binary (``> 0`` / ``< 0``),
  label-0 utterances excluded, plus the MAE of the raw scores. Percent (MAE in label units).
* :func:`average_row`, :func:`format_table` — one row per missing rate and their average.
* :func:`write_rows` — the same rows as JSON (with metadata) and CSV, written atomically.
"""
from __future__ import annotations

import csv
import io
import json

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error

from .checkpoint import atomic_write

__all__ = ["compute_metrics", "average_row", "format_table", "public_rows", "write_rows"]


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


def average_row(rows: list[dict]) -> dict:
    """The mean of each metric over ``rows`` (``rate: "average"``)."""
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


def public_rows(rows: list[dict]) -> list[dict]:
    """``rows`` without their private keys (``_y`` / ``_p``: kept predictions)."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def write_rows(rows: list[dict], path_json: str, path_csv: str, meta: dict) -> None:
    """``rows`` (+ their average) as JSON (with ``meta``) and CSV, each written atomically."""
    rows = public_rows(rows)
    avg = average_row(rows)
    atomic_write(path_json, json.dumps({**meta, "rows": rows, "average": avg}, indent=2))
    cols = ["rate", "realised_rate", "waf", "acc"] + (["mae"] if "mae" in rows[0] else []) + ["n"]
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows + [avg]:
        w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write(path_csv, text.getvalue())
