"""The per-rate tables that evaluations print and write (the metrics themselves:
:func:`iteach_fast.training.validation.compute_metrics`).

* :func:`average_row`, :func:`format_table` — one row per missing rate and their average.
* :func:`write_rate_table` — the same rows as JSON (with metadata) and CSV, written atomically.
"""
from __future__ import annotations

import csv
import io
import json

import numpy as np

from ..files import atomic_write

__all__ = ["average_row", "format_table", "format_comparison", "public_rows", "write_rate_table"]


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


def format_comparison(columns: dict, title: str = "", metric: str = "waf") -> str:
    """``columns``: ``{name: rows}`` over the same rates -> one table, a column of ``metric``
    per name, one row per rate plus the average (the first column's realised rate shown)."""
    names = list(columns)
    first = columns[names[0]]
    width = max(9, *(len(n) + 1 for n in names))
    head = f"{'rate':>8} {'realised':>9}" + "".join(f"{n:>{width}}" for n in names)
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for i, r in enumerate(first + [None]):
        if r is None:
            cells = [average_row(columns[n])[metric] for n in names]
            lines.append(f"{'average':>8} {'':>9}" + "".join(f"{c:{width}.2f}" for c in cells))
        else:
            cells = [columns[n][i][metric] for n in names]
            lines.append(f"{r['rate']:8.1f} {r.get('realised_rate', float('nan')):9.3f}"
                         + "".join(f"{c:{width}.2f}" for c in cells))
    return "\n".join(lines)


def public_rows(rows: list[dict]) -> list[dict]:
    """``rows`` without their private keys (``_y`` / ``_p``: kept predictions)."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def write_rate_table(rows: list[dict], path_json: str, path_csv: str, meta: dict) -> None:
    """Per-rate ``rows`` (+ their average) as JSON (with ``meta``) and CSV, each written atomically."""
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
