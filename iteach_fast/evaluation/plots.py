"""Figures (matplotlib, Agg backend: no display needed), each saved as a PNG.

* :func:`waf_vs_rate` — WAF against the test missing rate, one line per model / strategy
  (the UME view of paper Tables 2, 4, 5).
* :func:`confusion_grid` — one row-normalised confusion matrix per missing rate.
* :func:`ecce_heatmap` — the global context-changing bias ``E`` of the student's text ECCE
  on one conversation (paper Fig. 5): one panel per head plus their mean.
* :func:`curves_with_bands` — mean ± std curves against the missing rate (the reproduction's
  WAF plots of Tables 2, 4, 5 and Fig. 7/8, and Fig. 6's distance ``|H'_1 - H_1|``).
* :func:`embedding_grid` — 2-D embeddings, one panel each, one colour per class (Fig. 9's t-SNE).

Each figure reads alone: a title naming what is shown (model, split and rates where the
caller passes them as ``title``), labelled axes, a colorbar saying what a colour means,
legends outside the data, and dashed grey baselines wherever a comparison is implied.
"""
from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..choices import MODALITIES  # noqa: E402

__all__ = ["waf_vs_rate", "confusion_grid", "ecce_heatmap", "curves_with_bands", "embedding_grid"]


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _legend_outside(ax, **kw):
    """The legend right of the axes, outside the data (``bbox_inches="tight"`` keeps it in the PNG)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    return ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8,
                     **kw)


#: how each metric of :func:`waf_vs_rate` is named on its axis
METRIC_LABELS = {"waf": "WAF (%): F1 weighted by class frequency", "acc": "accuracy (%)",
                 "mae": "MAE (lower is better)"}
RATE_LABEL = "test missing rate (fraction of (utterance, modality) features removed)"


def _rate_rows(rows):
    return [r for r in rows if isinstance(r["rate"], float)]


def waf_vs_rate(results: dict, path: str, metric: str = "waf", baselines: dict | None = None,
                title: str | None = None) -> str:
    """``results``: ``{label: rows}`` with rows as written by :func:`iteach_fast.training.validation.evaluate_rates`
    (a non-float ``rate``, such as the average row, is left out); ``baselines`` the same for the
    baselines, drawn dashed in grey tones; ``title``: what was evaluated (model, data, split),
    the first line of the figure's title."""
    fig, ax = plt.subplots(figsize=(6, 4))
    rates = set()
    for label, rows in results.items():
        rows = _rate_rows(rows)
        rates.update(r["rate"] for r in rows)
        avg = np.mean([r[metric] for r in rows])
        ax.plot([r["rate"] for r in rows], [r[metric] for r in rows], marker="o", label=f"{label} (avg {avg:.2f})")
    for i, (label, rows) in enumerate((baselines or {}).items()):
        rows = _rate_rows(rows)
        avg = np.mean([r[metric] for r in rows])
        ax.plot([r["rate"] for r in rows], [r[metric] for r in rows], linestyle="--", marker=".",
                color=str(0.15 + 0.17 * (i % 4)), label=f"baseline: {label} (avg {avg:.2f})")
    ax.set_xlabel(RATE_LABEL)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric.upper()))
    if rates:
        ax.set_xticks(sorted(rates))
    span = f"rates {min(rates):.1f}-{max(rates):.1f}" if rates else "no rates"
    what = f"{metric.upper()} at each test missing rate ({span}; avg: over these rates)"
    ax.set_title(f"{title}\n{what}" if title else f"Unified Model Evaluation: {what}", fontsize=9)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def confusion_grid(matrices: dict, class_names, path: str, title: str | None = None) -> str:
    """``matrices``: ``{rate: (C, C) counts}`` (rows: true class) -> a grid of row-normalised
    heatmaps with one shared colorbar; ``title``: what was evaluated (model, data, split)."""
    n = len(matrices)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    names = list(class_names)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols + 1.2, 2.6 * rows + 1.2), squeeze=False,
                             layout="constrained")
    image = None
    for k, (ax, (rate, cm)) in enumerate(zip(axes.flat, matrices.items())):
        cm = np.asarray(cm, dtype=float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        image = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_title(f"missing rate {rate:.1f}" if isinstance(rate, float) else str(rate), fontsize=9)
        row, col = divmod(k, cols)
        bottom = k + cols >= n  # no panel below this one: it carries the class names
        ax.set_xticks(range(len(names)), names if bottom else [], rotation=35, ha="right",
                      rotation_mode="anchor", fontsize=7)
        ax.set_yticks(range(len(names)), names if col == 0 else [], fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class predicted as each class")
    fig.supxlabel("predicted class", fontsize=9)
    fig.supylabel("true class", fontsize=9)
    what = "confusion matrices at each test missing rate (each row sums to 1)"
    fig.suptitle(f"{title}\n{what}" if title else what[0].upper() + what[1:], fontsize=10)
    return _save(fig, path)


@torch.no_grad()
def ecce_bias_of(net, conversation: dict, device="cpu") -> torch.Tensor:
    """``E (H, L, L)`` of the student's text ECCE on one complete conversation."""
    student = net.student
    inputs = tuple(torch.as_tensor(conversation[m], dtype=torch.float32, device=device)[None] for m in MODALITIES)
    lengths = torch.tensor([inputs[0].shape[1]], device=device)
    x = student.stream_inputs(inputs, lengths)[0]  # X_t, the text ECCE's input (with the model's options)
    return student.ecce[0].bias(x, lengths)[0].float().cpu()


def ecce_heatmap(net, dataset, path: str, index: int | None = None, device="cpu",
                 title: str | None = None) -> str | None:
    """Heatmaps of ``E`` for one conversation (default: the longest that fits ``max_len``),
    one panel per head and their mean, each with its colorbar, the labels' runs marked. None if
    ECCE is off. ``title``: what was evaluated (model, data, split), the title's first line."""
    ecce = net.student.ecce[0]
    if ecce.mode == "off":
        return None
    convs = list(dataset)
    if index is None:
        fitting = [i for i, c in enumerate(convs) if len(c["labels"]) <= net.student.max_len] or [0]
        index = max(fitting, key=lambda i: len(convs[i]["labels"]))
    conv = convs[index]
    was_training = net.training
    net.eval()
    E = ecce_bias_of(net, conv, device)
    net.train(was_training)
    H, n = E.shape[0], E.shape[-1]
    panels = [(f"head {h}", E[h]) for h in range(H)] + [("mean over heads", E.mean(0))]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.0 * rows + 1.0), squeeze=False, layout="constrained")
    labels = np.asarray(conv["labels"])
    shifts = np.nonzero(labels[1:] != labels[:-1])[0] + 0.5  # emotion changes between utterances
    for k, (ax, (name, e)) in enumerate(zip(axes.flat, panels)):
        lim = float(e.abs().max()) or 1.0
        image = ax.imshow(e.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        for s in shifts:
            ax.axhline(s, color="0.3", lw=0.4, alpha=0.6)
            ax.axvline(s, color="0.3", lw=0.4, alpha=0.6)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        row, col = divmod(k, cols)
        if k + cols >= len(panels):
            ax.set_xlabel("key utterance j", fontsize=8)
        if col == 0:
            ax.set_ylabel("query utterance i", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03).set_label("E[i, j]", fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    role = "the model" if net.teacher is net.student else "the student"
    data = getattr(dataset, "name", "") or "data"
    what = (f"ECCE's context bias E of {role}'s text stream on conversation {conv['id']} ({data}, {n} utterances)\n"
            f"added to the attention score of utterance i for utterance j: red (E > 0) raises it, blue (E < 0) "
            f"lowers it, white: 0 (outside the band |i - j| < {ecce.dist}); grey lines: emotion changes")
    fig.suptitle(f"{title}\n{what}" if title else what, fontsize=9)
    return _save(fig, path)


def curves_with_bands(series: dict, path: str, title: str, ylabel: str = "WAF (%)",
                      xlabel: str = RATE_LABEL, baselines: dict | None = None,
                      legend_title: str | None = None) -> str:
    """``series``: ``{label: (x, mean, std)}`` -> one line per label with a shaded ``mean ± std``
    band (no band where std is 0, e.g. a single run). ``baselines``: ``{label: y}`` (a level)
    or ``{label: (x, y)}`` (a curve), drawn dashed in grey: what the curves are compared with.
    The legend (titled ``legend_title``) sits right of the axes."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, (x, mean, std) in series.items():
        x, mean, std = (np.asarray(v, dtype=float) for v in (x, mean, std))
        line, = ax.plot(x, mean, marker="o", ms=3, label=label)
        if np.any(std > 0):
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.18, lw=0)
    for i, (label, value) in enumerate((baselines or {}).items()):
        style = dict(linestyle="--", color=str(0.2 + 0.15 * (i % 4)), lw=1.2, label=f"baseline: {label}")
        if isinstance(value, (int, float)):
            ax.axhline(float(value), **style)
        else:
            ax.plot(*(np.asarray(v, dtype=float) for v in value), **style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend_outside(ax, title=legend_title, title_fontsize=8)
    return _save(fig, path)


def embedding_grid(panels: dict, class_names, path: str, title: str = "", xlabel: str = "embedding dimension 1",
                   ylabel: str = "embedding dimension 2") -> str:
    """``panels``: ``{title: (xy (N, 2), labels (N,) ints)}`` -> a grid of scatter plots, class
    ``k`` in the same colour everywhere, named by ``class_names[k]`` in one legend right of the
    panels. The axes of a 2-D embedding (t-SNE) have no units: ``xlabel`` / ``ylabel`` name them."""
    n = len(panels)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows + 0.6), squeeze=False,
                             layout="constrained")
    colours = plt.get_cmap("tab10")
    for ax, (name, (xy, labels)) in zip(axes.flat, panels.items()):
        xy, labels = np.asarray(xy), np.asarray(labels)
        for k, cname in enumerate(class_names):
            pick = labels == k
            if pick.any():
                ax.scatter(xy[pick, 0], xy[pick, 1], s=4, color=colours(k % 10), label=cname, alpha=0.7)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.supxlabel(xlabel, fontsize=9)
    fig.supylabel(ylabel, fontsize=9)
    legend = {}  # every class that appears in some panel, in class order
    for ax in axes.flat:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    names = [c for c in class_names if c in legend]
    if names:
        fig.legend([legend[c] for c in names], names, loc="outside right upper", fontsize=8, markerscale=3,
                   title="class", title_fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
