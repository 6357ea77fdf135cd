"""Rendering the finished runs: ``results.csv`` (every run x rate x metric), one
``<experiment>.md`` per table laid out as the paper's (rates as columns, Average, Decline;
mean ± std over folds x seeds; the paper's number and our difference where the dataset is one
of the paper's), the PNGs, and ``report.md`` holding every table and the paper's orderings
checked on ours. Nothing here trains.

Each experiment has one :class:`Renderer` in :data:`RENDERERS`: its title, which runs it
reads, and the function that draws it.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import os
from collections.abc import Callable

import numpy as np

from ..choices import EXPERIMENTS
from ..data.masking import EVAL_RATES, fixed_masks
from ..evaluation import plots
from ..evaluation.baselines import BASELINES
from ..evaluation.baselines import LABELS as BASELINE_LABELS
from ..files import atomic_write
from ..nn.config import ModelConfig
from ..nn.model import ITEACHNet, roles
from ..training.checkpoint import load_for_eval
from ..training.runtime import resolve_device
from ..training.validation import hidden_features
from .plan import VARIANTS

__all__ = ["render", "paper_results", "parameter_counts", "fig9_features", "tsne_panels", "orderings", "runs_line",
           "Renderer", "RENDERERS"]


@functools.lru_cache(maxsize=1)
def paper_results() -> dict:
    """The paper's Tables 1-5, typed once into ``paper_results.json`` (with their source)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_results.json")) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- the driver

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
        renderer = RENDERERS[exp]
        if renderer.reads != "none" and not all(g.values()):
            missing = [label for label, res in g.items() if not res]
            tables[exp] = f"not drawn: no finished run for {', '.join(missing)}"
        else:
            tables[exp], stats[exp], paths[exp] = renderer.draw(exp, g, runs, context, out_dir)
        paths[f"{exp}_md"] = atomic_write(os.path.join(out_dir, f"{exp}.md"), _section(exp, tables[exp], context, g))
    stats = {k: v for k, v in stats.items() if v is not None}
    report = _report(experiments, tables, context, grouped, stats)
    paths["report"] = atomic_write(os.path.join(out_dir, "report.md"), report)
    log(report)
    log(f"written under {out_dir}: report.md, results.csv, " + ", ".join(
        os.path.basename(p) for k, p in paths.items() if k not in ("csv", "report") and p))
    return {"paths": paths, "tables": tables, "stats": stats, "report": report}


# ----------------------------------------------------------------------------- statistics and Markdown

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


def _bands(stats_per_rate) -> tuple:
    """``(rates, means, stds)`` of a per-rate list of :func:`_stats`."""
    return EVAL_RATES, [s[0] for s in stats_per_rate], [s[1] for s in stats_per_rate]


def _paper_rows(table: str, dataset: str) -> dict | None:
    return paper_results()[table]["rows"].get(dataset) if table in paper_results() else None


def _diff(ours: float, paper: float) -> str:
    return "–" if not np.isfinite(ours) else f"{ours - paper:+.2f}"


# ----------------------------------------------------------------------------- one renderer per experiment

def _baseline_results(grouped: dict) -> list:
    """The baselines of the runs of a table (every run holds its data's; every row of a table
    reads the same data): the first row's runs that have them."""
    for results in grouped.values():
        with_base = [r for r in results if r.get("baselines")]
        if with_base:
            return with_base
    return []


def _baseline_name(name: str, results: list) -> str:
    ks = sorted({r.get("logreg_context_k") for r in results if r.get("logreg_context_k")})
    return "baseline: " + (f"logistic regression, log-probs summed over ±{'/'.join(map(str, ks))}"
                           if name == "logreg_context" else BASELINE_LABELS[name])


def _baseline_rows(results: list, n_cells: int, summary: str | None) -> tuple[list, dict]:
    """Rows of the baselines in a rates-as-columns table (mean ± std over the same runs) and their stats."""
    rows, stats = [], {}
    for name in BASELINES:
        res = [{"student": r["baselines"][name]} for r in results if name in r["baselines"]]
        if not res:
            continue
        per_rate = _per_rate_stats(res)
        avg = _stats([np.mean(_curve(r)) for r in res])
        dec = _stats([_curve(r)[0] - _curve(r)[-1] for r in res])
        stats[name] = {"rates": per_rate, "average": avg, "decline": dec}
        rows.append([_baseline_name(name, results)] + [""] * (n_cells - 1) + [_cell(s) for s in per_rate]
                    + [_cell(avg)] + ([_cell(dec)] if summary == "decline" else []) + [avg[2]])
    return rows, stats


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
    base_rows, base_stats = _baseline_rows(_baseline_results(grouped), n_cells, summary)
    if base_stats:
        stats["baselines"] = base_stats
    return _md(head, rows + base_rows), stats


def _draw_rates(summary: str, exp, g, runs, context, out_dir) -> tuple:
    """Tables 2, 4, 5: the student's WAF at each rate, one row per variant (``summary``: the
    last column, ``decline`` or ``average``), and the curves with their bands."""
    data, dataset = context["data"], context["dataset"]
    table, stats = _rate_table(VARIANTS[exp], g, dataset, summary, exp)
    series = {LEGEND_NAMES.get(v.label, v.label): _bands(stats[v.label]["rates"]) for v in VARIANTS[exp]}
    paper = _paper_rows(exp, dataset)
    if summary == "average" and paper:  # Tables 4 / 5: the paper's ITEACH-Net curve beside ours
        series["paper: ITEACH-Net"] = (EVAL_RATES, paper["ITEACH-Net"]["rates"], [0.0] * len(EVAL_RATES))
    title = f"{RENDERERS[exp].title.split(' — ')[0]}: WAF vs test missing rate ({data})"
    base = {BASELINE_LABELS[n]: (EVAL_RATES, [x[0] for x in s["rates"]])
            for n, s in stats.get("baselines", {}).items() if n in ("majority", "gru")}
    return table, stats, plots.curves_with_bands(series, os.path.join(out_dir, f"{exp}_waf.png"), title,
                                                 baselines=base, legend_title="framework" if exp == "table2" else None)


#: Table 2's row names spelled out for a figure's legend (the table's columns say it there)
LEGEND_NAMES = {"PRE TF": "PRE: one Transformer model", "ITS TF TF": "ITS: Transformer teacher → Transformer student",
                "ITS TF NAS": "ITS: Transformer teacher → NAS student (ITEACH-Net)",
                "TS NAS TF": "TS: NAS teacher → Transformer student",
                "ITS TF NAS + cross-ECCE": "ITS: Transformer teacher → NAS student, cross-ECCE (option)",
                "ITS TF NAS + early fusion": "ITS: Transformer teacher → NAS student, early fusion (option)",
                "ITS TF NAS + recurrent": "ITS: Transformer teacher → NAS student, recurrent (option)"}


def _draw_table1(exp, g, runs, context, out_dir) -> tuple:
    paper = _paper_rows("table1", context["dataset"])
    head = ["Local", "Global", "teacher WAF (complete data)", "runs"] + (["paper", "Δ"] if paper else [])
    rows, stats = [], {}
    for v in VARIANTS["table1"]:
        s = _stats([r["teacher"]["waf"] for r in g[v.label]])
        stats[v.label] = s
        rows.append(list(v.cells) + [_cell(s), s[2]]
                    + ([f"{paper[v.label]:.2f}", _diff(s[0], paper[v.label])] if paper else []))
    base = _baseline_results(g)
    for name in BASELINES:  # the baselines on the same complete test data
        s = _stats([r["baselines"][name][0]["waf"] for r in base if name in r["baselines"]])
        if s[2]:
            stats[f"baseline: {name}"] = s
            rows.append([_baseline_name(name, base), ""] + [_cell(s), s[2]] + (["", ""] if paper else []))
    return _md(head, rows), stats, None


def _draw_baselines(exp, g, runs, context, out_dir) -> tuple:
    """The baselines' own table (Table 2/4-shaped: every rate, Average, Decline), ITEACH-Net's
    rows beside them, each said to be at or below the best baseline per rate; and the curves."""
    table, stats = _rate_table(VARIANTS[exp], g, context["dataset"], "decline", exp)
    base = stats.get("baselines", {})
    notes = []
    if {"logreg_context", "gru"} <= set(base):
        best = [max(a[0], b[0]) for a, b in zip(base["logreg_context"]["rates"], base["gru"]["rates"])]
        for v in VARIANTS[exp]:
            below = [f"{r:.1f}" for r, s, b in zip(EVAL_RATES, stats[v.label]["rates"], best) if s[0] < b]
            notes.append(f"- {v.label}: " + (f"below the best baseline at rates {', '.join(below)}" if below else
                                              "at or above the best baseline at every rate") + " (means)")
    series = {v.label: _bands(stats[v.label]["rates"]) for v in VARIANTS[exp]}
    series.update({BASELINE_LABELS[n]: _bands(s["rates"]) for n, s in base.items()})
    path = plots.curves_with_bands(series, os.path.join(out_dir, "baselines_waf.png"),
                                   f"ITEACH-Net beside the baselines: WAF vs test missing rate ({context['data']})")
    return table + ("\n\n" + "\n".join(notes) if notes else ""), stats, path


def parameter_counts(net: ITEACHNet) -> dict:
    """``{"teacher", "student"}``: each model's parameters split into input projections + ECCE,
    encoder layers and classifier, and their total."""
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    return {role: {"projections+ecce": count(m.proj) + count(m.ecce), "layers": count(m.layers),
                   "classifier": count(m.classifier), "total": count(m)}
            for role, m in (("teacher", net.teacher), ("student", net.student))}


def _draw_table3(exp, g, runs, context, out_dir) -> tuple:
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
    return "\n\n".join(parts) + "\n\n" + why, counts, None


def _draw_fig6(exp, g, runs, context, out_dir) -> tuple:
    head = ["Student"] + [f"{r:.1f}" for r in EVAL_RATES] + ["runs"]
    rows, stats = [], {}
    for v in VARIANTS["fig6"]:
        per_rate = _per_rate_stats(g[v.label], "distance", "distance")
        stats[v.label] = per_rate
        rows.append(list(v.cells) + [_cell(s, 4) for s in per_rate] + [per_rate[0][2]])
    series = {v.label: _bands(stats[v.label]) for v in VARIANTS["fig6"]}
    path = plots.curves_with_bands(series, os.path.join(out_dir, "fig6_distance.png"),
                                   f"Fig. 6: student vs teacher ({context['data']})", ylabel="mean |H'_1 − H_1|")
    return _md(head, rows), stats, path


def _draw_fig78(exp, g, runs, context, out_dir) -> tuple:
    variants = VARIANTS["fig78"]
    ime = [_stats([_waf_at(r, v.ime_rate) for r in g[v.label]]) for v in variants]
    # IME's average per fold x seed: the models trained at each rate for that fold and seed
    by_run = {}
    for v in variants:
        for r in g[v.label]:
            by_run.setdefault((r.get("fold"), r["seed"]), []).append(_waf_at(r, v.ime_rate))
    ime_avg = _stats([np.mean(w) for w in by_run.values() if len(w) == len(variants)])
    trained_70 = g[variants[-1].label]
    at70 = _per_rate_stats(trained_70)
    head = ["Model"] + [f"{r:.1f}" for r in EVAL_RATES] + ["Average"]
    rows = [["IME: trained with the fixed rate, tested at it"] + [_cell(s) for s in ime] + [_cell(ime_avg)],
            ["trained at 0.7, tested at every rate"] + [_cell(s) for s in at70]
            + [_cell(_stats([np.mean(_curve(r)) for r in trained_70]))]]
    stats = {"ime": ime, "trained_at_0.7": at70}
    series = {"IME (trained and tested at the rate)": _bands(stats["ime"]),
              "trained at 0.7, tested at every rate": _bands(stats["trained_at_0.7"])}
    path = plots.curves_with_bands(series, os.path.join(out_dir, "fig78_ime.png"),
                                   f"Fig. 7/8: IME and the model trained at 0.7 ({context['data']})")
    return _md(head, rows), stats, path


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
    from sklearn.manifold import TSNE  # scikit-learn: only for Fig. 9

    out = {}
    for name, (x, y) in panels.items():
        n = len(x)
        xy = (TSNE(n_components=2, perplexity=max(1.0, min(30.0, (n - 1) / 3)), init="pca", random_state=seed,
                   max_iter=max_iter).fit_transform(np.asarray(x, dtype=np.float64)) if n > 2 else np.zeros((n, 2)))
        out[name] = (xy, y)
    return out


def _draw_fig9(exp, g, runs, context, out_dir) -> tuple:
    """Fig. 9, from the first run's checkpoint."""
    result = g["ITEACH-Net"][0]
    checkpoint = os.path.join(runs[result["key"]].folder, "best.pt") if result["key"] in runs else ""
    if not os.path.isfile(checkpoint):
        return (f"not drawn: the checkpoint of run {result['key']} is missing (delete its result.json to "
                "train it again)", None, None)
    features, names = fig9_features(checkpoint, device=context.get("device", "auto"))
    path = plots.embedding_grid(tsne_panels(features), names, os.path.join(out_dir, "fig9_tsne.png"),
                                f"t-SNE of H_1 on the test split ({context['data']}, seed {result['seed']})",
                                xlabel="t-SNE dimension 1", ylabel="t-SNE dimension 2")
    return f"![Fig. 9]({os.path.basename(path)}) (run {result['key']}, seed {result['seed']})", None, path


@dataclasses.dataclass(frozen=True)
class Renderer:
    """How one experiment is rendered: its ``title``; ``draw(exp, rows, runs, context, out_dir)``
    -> ``(Markdown, stats or None, PNG path or None)`` from ``rows`` (``{variant label:
    [results]}``); ``reads`` which runs: ``"every"`` (mean ± std over folds x seeds), ``"first"``
    (the first fold and seed's run) or ``"none"`` (nothing trained)."""
    title: str
    draw: Callable[..., tuple]
    reads: str = "every"


RENDERERS = {
    "table1": Renderer("Table 1 — ECCE ablation: the teacher's WAF (%) on complete test data", _draw_table1),
    "table2": Renderer("Table 2 — training frameworks: the student's WAF (%) at each test missing rate "
                       "(Decline = WAF(0.0) − WAF(0.7))", functools.partial(_draw_rates, "decline")),
    "table3": Renderer("Table 3 — parameter counts", _draw_table3, reads="none"),
    "table4": Renderer("Table 4 — random training strategy: ITEACH-Net's WAF (%) at each test missing rate (UME)",
                       functools.partial(_draw_rates, "average")),
    "table5": Renderer("Table 5 — progressive training strategy: ITEACH-Net's WAF (%) at each test missing rate "
                       "(UME)", functools.partial(_draw_rates, "average")),
    "fig6": Renderer("Figure 6 — mean |H'_1 − H_1| between the student (masked data) and the teacher (complete "
                     "data)", _draw_fig6),
    "fig78": Renderer("Figures 7 / 8 — IME (one model per missing rate, tested at it) and the model trained at 0.7 "
                      "tested at every rate: WAF (%)", _draw_fig78),
    "fig9": Renderer("Figure 9 — t-SNE of the teacher's H_1 (complete data) and the student's H'_1 at each missing "
                     "rate", _draw_fig9, reads="first"),
    "baselines": Renderer("Baselines — majority, logistic regression with and without context, BiGRU: trained with "
                          "the same missing-rate strategy, tested with the same masks, beside ITEACH-Net (WAF %)",
                          _draw_baselines),
}
assert set(RENDERERS) == set(EXPERIMENTS) == set(VARIANTS), "every experiment has its variants and its renderer"


# ----------------------------------------------------------------------------- the paper's orderings

def orderings(stats: dict) -> list[str]:
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
        paper_rows = ("PRE TF", "ITS TF TF", "ITS TF NAS", "TS NAS TF")  # the paper's claims are about these
        avg = {k: v["average"] for k, v in stats["table2"].items() if k in paper_rows}
        dec = {k: v["decline"] for k, v in stats["table2"].items() if k in paper_rows}
        check("Table 2: ITS TF NAS > PRE TF (average WAF over the rates)", avg["ITS TF NAS"], avg["PRE TF"])
        check("Table 2: ITS TF TF > PRE TF (average)", avg["ITS TF TF"], avg["PRE TF"])
        check("Table 2: ITS TF NAS > TS NAS TF (average)", avg["ITS TF NAS"], avg["TS NAS TF"])
        least = min((v for k, v in dec.items() if k != "ITS TF NAS"), key=lambda v: v[0])
        check("Table 2: the NAS student declines least (its Decline vs the smallest other)",
              dec["ITS TF NAS"], least, higher=False)
    for exp in ("table4", "baselines"):  # not the paper's claim: what a researcher asks first
        base = stats.get(exp, {}).get("baselines", {})
        if {"logreg_context", "gru"} <= set(base):
            best = max(("logreg_context", "gru"), key=lambda n: base[n]["average"][0])
            table = "Table 4" if exp == "table4" else "Baselines"
            for label, row in stats[exp].items():
                if label != "baselines":
                    check(f"{table}: {label} > the best baseline ({BASELINE_LABELS[best]}; average WAF over the rates)",
                          row["average"], base[best]["average"])
        if base:
            break
    if "fig6" in stats:
        # the mean over rates of each run's distance curve is not kept: the rates' mean and mean std
        curve = {k: (float(np.mean([x[0] for x in v])), float(np.mean([x[1] for x in v])), v[0][2])
                 for k, v in stats["fig6"].items()}
        check("Fig. 6: the TF student is closer to the teacher than the NAS student (mean distance over rates)",
              curve["TF student"], curve["NAS student"], higher=False)
    return claims


# ----------------------------------------------------------------------------- the files

def runs_line(context, grouped_exp, exp) -> str:
    """Which runs an experiment's table reads, in words."""
    if RENDERERS[exp].reads == "first":
        return "the first fold and seed's run"
    n = max((len(v) for v in grouped_exp.values()), default=0)
    per_row = f"{n} run{'' if n == 1 else 's'} per row"
    if context["folds"] != (None,):
        return (f"{per_row}: IEMOCAP folds {', '.join(map(str, context['folds']))} (leave one session out) "
                f"x seeds {', '.join(map(str, context['seeds']))}; mean ± std over folds x seeds")
    return (f"{per_row}: seeds {', '.join(map(str, context['seeds']))}; mean ± std over seeds "
            f"({context['dataset']} has one train/test split, so folds are not meaningful)")


def _section(exp, table, context, grouped_exp) -> str:
    lines = [f"### {RENDERERS[exp].title}", ""]
    if RENDERERS[exp].reads != "none":
        lines += [f"{context['data']}; {runs_line(context, grouped_exp, exp)}.", ""]
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
        head += [f"{context['dataset']} is not one of the paper's datasets, so no paper numbers are shown beside ours"
                 + (" (but for Table 3's parameter counts, which are the paper's settings, not its data)"
                    if "table3" in experiments else "") + ".", ""]
    body = [_section(exp, tables[exp], context, grouped.get(exp, {})) for exp in experiments]
    claims = orderings(stats)
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
