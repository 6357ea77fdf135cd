"""Every figure reads alone: each is rendered here and its labelled elements checked — a
title, labelled axes, a colorbar for every heatmap, legends outside the data, and no text of
one panel (title, tick labels, axis labels) on top of another panel."""
import itertools

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from iteach_fast.evaluation import plots
from iteach_fast.nn import ITEACHNet

PNG = b"\x89PNG\r\n\x1a\n"
RATES = tuple(round(0.1 * i, 1) for i in range(8))


@pytest.fixture
def figures(monkeypatch):
    """The figures a call draws, kept open after it saved them (``plt.close`` disabled)."""
    plt.close("all")
    monkeypatch.setattr(plots.plt, "close", lambda *args, **kwargs: None)

    def drawn():
        figs = [plt.figure(n) for n in plt.get_fignums()]
        for fig in figs:
            fig.canvas.draw()
        return figs

    yield drawn
    monkeypatch.undo()
    plt.close("all")


def _data_axes(fig):
    """The panels that show data: not the colorbars, not the panels switched off."""
    bars = {id(getattr(im.colorbar, "ax", None)) for ax in fig.axes for im in ax.images if im.colorbar}
    return [ax for ax in fig.axes if ax.axison and id(ax) not in bars and (ax.lines or ax.images or ax.collections)]


def _texts(ax):
    """The text an axes puts outside its data area: title, axis labels, tick labels."""
    out = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(), *ax.get_yticklabels()]
    return [t for t in out if t.get_visible() and t.get_text().strip()]


def _check_readable(fig, colorbars: bool = False):
    renderer = fig.canvas.get_renderer()
    axes = _data_axes(fig)
    assert axes, "no panel drew data"
    title = fig.get_suptitle() if hasattr(fig, "get_suptitle") else (fig._suptitle.get_text() if fig._suptitle else "")
    assert title.strip() or all(ax.get_title().strip() for ax in axes), "a figure needs a title"
    sup_x = fig._supxlabel.get_text() if getattr(fig, "_supxlabel", None) else ""
    sup_y = fig._supylabel.get_text() if getattr(fig, "_supylabel", None) else ""
    assert sup_x or any(ax.get_xlabel() for ax in axes), "no x axis label"
    assert sup_y or any(ax.get_ylabel() for ax in axes), "no y axis label"
    if colorbars:
        for ax in axes:
            for image in ax.images:
                assert image.colorbar is not None, f"panel {ax.get_title()!r}: a heatmap without a colorbar"
                assert image.colorbar.ax.get_ylabel() or image.colorbar.ax.get_xlabel(), "an unlabelled colorbar"
    # legends outside the data, and off the figure's own labels
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    figure_texts = [t for t in (fig._suptitle, getattr(fig, "_supxlabel", None), getattr(fig, "_supylabel", None))
                    if t is not None and t.get_text()]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for text in figure_texts:
            assert not box.overlaps(text.get_window_extent(renderer)), f"the legend hides {text.get_text()!r}"
        for ax in axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), \
                f"the legend {[t.get_text() for t in legend.get_texts()][:3]} sits on panel {ax.get_title()!r}"
    # no text of one panel over another panel or its text
    for a, b in itertools.permutations(axes, 2):
        b_box = b.get_window_extent(renderer)
        for text in _texts(a):
            box = text.get_window_extent(renderer)
            assert not box.overlaps(b_box), f"{text.get_text()!r} of {a.get_title()!r} overlaps {b.get_title()!r}"
            for other in _texts(b):
                assert not box.overlaps(other.get_window_extent(renderer)), \
                    f"{text.get_text()!r} of {a.get_title()!r} overlaps {other.get_text()!r} of {b.get_title()!r}"
    return title


def _png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG


def _rows(start, slope):
    return [{"rate": r, "waf": start - slope * r} for r in RATES] + [{"rate": "average", "waf": 0.0}]


def test_waf_vs_rate_names_the_run_and_draws_the_baselines(tmp_path, figures):
    path = plots.waf_vs_rate({"ITS (student NAS, random)": _rows(60, 20)}, str(tmp_path / "waf.png"),
                             baselines={"majority": _rows(20, 0), "logistic regression": _rows(45, 10)},
                             title="UME on synthetic [test], ITS (student NAS, random)")
    _png(path)
    (fig,) = figures()
    _check_readable(fig)
    (ax,) = _data_axes(fig)
    assert "synthetic [test]" in ax.get_title() and "0.0-0.7" in ax.get_title()
    assert ax.get_xlabel().startswith("test missing rate") and "WAF" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("baseline: majority") for label in labels)
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 2  # the baselines


def test_confusion_grid_has_a_colorbar_a_title_and_no_overlapping_names(tmp_path, figures):
    names = ["happy", "sad", "neutral", "angry", "excited", "frustrated"]
    rng = np.random.default_rng(0)
    matrices = {r: rng.integers(0, 20, (6, 6)) for r in RATES}
    _png(plots.confusion_grid(matrices, names, str(tmp_path / "cm.png"), title="ITS student on iemocap6 [test]"))
    (fig,) = figures()
    title = _check_readable(fig, colorbars=False)
    assert "iemocap6 [test]" in title
    bars = [ax for ax in fig.axes if ax.get_ylabel().startswith("fraction")]
    assert len(bars) == 1  # one colorbar, labelled, for every panel
    assert sorted(ax.get_title() for ax in _data_axes(fig)) == [f"missing rate {r:.1f}" for r in RATES]


def test_ecce_heatmap_has_colorbars_axis_labels_and_says_what_red_and_blue_mean(tmp_path, figures):
    torch.manual_seed(0)
    net = ITEACHNet((6, 4, 5), 4, dim=8, heads=2, max_len=12, dist=4, teacher_layers=1, student_layers=1)
    rng = np.random.default_rng(0)
    convs = [{"id": f"c{i}", **{m: rng.normal(size=(n, d)).astype(np.float32)
                                for m, d in zip(("text", "audio", "visual"), (6, 4, 5))},
              "labels": rng.integers(0, 4, n)} for i, n in enumerate((5, 11, 8))]
    _png(plots.ecce_heatmap(net, convs, str(tmp_path / "ecce.png"), title="ITS student, synthetic [test]"))
    (fig,) = figures()
    title = _check_readable(fig, colorbars=True)
    assert "red" in title and "blue" in title and "c1" in title  # the longest conversation that fits
    assert len(_data_axes(fig)) == 3  # two heads and their mean


def test_curves_with_bands_legend_outside_and_baselines(tmp_path, figures):
    x = RATES
    series = {"Inverted Teacher-Student: Transformer teacher, NAS student": (x, np.linspace(60, 45, 8), [2] * 8),
              "one Transformer on complete and masked data": (x, np.linspace(58, 47, 8), [0] * 8)}
    _png(plots.curves_with_bands(series, str(tmp_path / "t2.png"), "Table 2 (synthetic)",
                                 baselines={"majority class": 20.0, "paper": (x, np.linspace(77, 71, 8))},
                                 legend_title="framework"))
    (fig,) = figures()
    _check_readable(fig)
    (ax,) = _data_axes(fig)
    assert ax.get_legend().get_title().get_text() == "framework"
    assert sum(line.get_linestyle() == "--" for line in ax.lines) == 2


def test_embedding_grid_legend_below_the_panels(tmp_path, figures):
    rng = np.random.default_rng(0)
    panels = {f"Student-{r:.1f}": (rng.normal(size=(40, 2)), rng.integers(0, 4, 40)) for r in RATES[:4]}
    _png(plots.embedding_grid(panels, ("happy", "sad", "neutral", "angry"), str(tmp_path / "tsne.png"),
                              "t-SNE of H_1 (synthetic, seed 0)", xlabel="t-SNE 1", ylabel="t-SNE 2"))
    (fig,) = figures()
    _check_readable(fig)
    assert fig.legends and [t.get_text() for t in fig.legends[0].get_texts()] == ["happy", "sad", "neutral", "angry"]
