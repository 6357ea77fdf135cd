"""Figures (matplotlib, Agg backend: no display needed), each saved as a PNG.

* :func:`waf_vs_rate` — WAF against the test missing rate, one line per model / strategy
  (the UME view of paper Tables 2, 4, 5).
* :func:`confusion_grid` — one row-normalised confusion matrix per missing rate.
* :func:`ecce_heatmap` — the global context-changing bias ``E`` of the student's text ECCE
  on one conversation (paper Fig. 5): one panel per head plus their mean.
* :func:`curves_with_bands` — mean ± std curves against the missing rate (the reproduction's
  WAF plots of Tables 2, 4, 5 and Fig. 7/8, and Fig. 6's distance ``|H'_1 - H_1|``).
* :func:`embedding_grid` — 2-D embeddings, one panel each, one colour per class (Fig. 9's t-SNE).
"""
from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["waf_vs_rate", "confusion_grid", "ecce_heatmap", "curves_with_bands", "embedding_grid"]


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def waf_vs_rate(results: dict, path: str, metric: str = "waf", baselines: dict | None = None) -> str:
    """``results``: ``{label: rows}`` with rows as written by :func:`iteach_fast.training.validation.evaluate_rates`;
    ``baselines`` the same for the baselines, drawn dashed in grey tones."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in results.items():
        rows = [r for r in rows if isinstance(r["rate"], float)]
        avg = np.mean([r[metric] for r in rows])
        ax.plot([r["rate"] for r in rows], [r[metric] for r in rows], marker="o", label=f"{label} (avg {avg:.2f})")
    for i, (label, rows) in enumerate((baselines or {}).items()):
        rows = [r for r in rows if isinstance(r["rate"], float)]
        avg = np.mean([r[metric] for r in rows])
        ax.plot([r["rate"] for r in rows], [r[metric] for r in rows], linestyle="--", marker=".",
                color=str(0.15 + 0.17 * i), label=f"{label} (avg {avg:.2f})")
    ax.set_xlabel("test missing rate")
    ax.set_ylabel(f"{metric.upper()} (%)")
    ax.set_title("Unified Model Evaluation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def confusion_grid(matrices: dict, class_names, path: str) -> str:
    """``matrices``: ``{rate: (C, C) counts}`` (rows: true class) -> a grid of heatmaps."""
    n = len(matrices)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (rate, cm) in zip(axes.flat, matrices.items()):
        cm = np.asarray(cm, dtype=float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_title(f"missing rate {rate:.1f}", fontsize=9)
        ax.set_xticks(range(len(class_names)), class_names, rotation=45, fontsize=7)
        ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.supxlabel("predicted")
    fig.supylabel("true")
    return _save(fig, path)


@torch.no_grad()
def ecce_bias_of(net, conversation: dict, device="cpu") -> torch.Tensor:
    """``E (H, L, L)`` of the student's text ECCE on one complete conversation."""
    student = net.student
    text = torch.as_tensor(conversation["text"], dtype=torch.float32, device=device)[None]
    lengths = torch.tensor([text.shape[1]], device=device)
    x = student.proj[0](text)  # X_t, the ECCE's input (every position valid here)
    return student.ecce[0].bias(x, lengths)[0].float().cpu()


def ecce_heatmap(net, dataset, path: str, index: int | None = None, device="cpu") -> str | None:
    """Heatmaps of ``E`` for one conversation (default: the longest that fits ``max_len``),
    one panel per head and their mean, with the labels' runs marked. None if ECCE is off."""
    if net.student.ecce[0].mode == "off":
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
    H = E.shape[0]
    panels = [(f"head {h}", E[h]) for h in range(H)] + [("mean over heads", E.mean(0))]
    cols = min(5, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    labels = np.asarray(conv["labels"])
    shifts = np.nonzero(labels[1:] != labels[:-1])[0] + 0.5  # emotion changes between utterances
    for ax, (title, e) in zip(axes.flat, panels):
        lim = float(e.abs().max()) or 1.0
        ax.imshow(e.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        for s in shifts:
            ax.axhline(s, color="k", lw=0.4, alpha=0.5)
            ax.axvline(s, color="k", lw=0.4, alpha=0.5)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"ECCE global bias E (student, text) on {conv['id']}; lines: emotion changes", fontsize=10)
    return _save(fig, path)


def curves_with_bands(series: dict, path: str, title: str, ylabel: str = "WAF (%)",
                      xlabel: str = "test missing rate") -> str:
    """``series``: ``{label: (x, mean, std)}`` -> one line per label with a shaded ``mean ± std``
    band (no band where std is 0, e.g. a single run)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, (x, mean, std) in series.items():
        x, mean, std = (np.asarray(v, dtype=float) for v in (x, mean, std))
        line, = ax.plot(x, mean, marker="o", ms=3, label=label)
        if np.any(std > 0):
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.18, lw=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def embedding_grid(panels: dict, class_names, path: str, title: str = "") -> str:
    """``panels``: ``{title: (xy (N, 2), labels (N,) ints)}`` -> a grid of scatter plots, class
    ``k`` in the same colour everywhere, named by ``class_names[k]``."""
    n = len(panels)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
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
    legend = {}  # every class that appears in some panel, in class order
    for ax in axes.flat:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    names = [c for c in class_names if c in legend]
    if names:
        fig.legend([legend[c] for c in names], names, loc="lower center", ncol=len(names), fontsize=8, markerscale=3)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
