"""The benchmark figures read alone: each of the four is rendered from a small fake result set and
its labelled elements are checked: a title naming the quantity and the machine, axis labels on
every panel, one legend for the figure, outside every panel, naming each provider; the memory
plot draws a provider at 0 MiB; the roofline tells the bandwidth fraction from the FLOP-rate
fraction by marker fill, both named in the legend."""
import pytest

pytest.importorskip("matplotlib")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from bench import report  # noqa: E402

PEERS = ["compiled-reference", "sdpa-float-mask", "peer-a", "peer-b", "peer-c", "peer-d", "peer-e"]


def _row(op, mode, provider, L, ms, mem=2**20, B=2, Dh=16, status="ok", counts=True):
    row = {"op": op, "provider": provider, "mode": mode, "dtype": "float32", "B": B, "L": L, "D": 8 * Dh, "H": 8,
           "Dh": Dh, "status": status, "reason": None if status == "ok" else "needs CUDA", "provider_kind": "peer"}
    if status == "ok":
        row.update(median_ms=ms, p20_ms=ms * 0.9, p80_ms=ms * 1.1, rounds=5, timer="fake", peak_mem_bytes=mem,
                   mem_method="cuda-max-allocated", bytes_moved=10**7 if counts else None,
                   flops=10**9 if counts else None, note=None)
    return row


def fake_results():
    """An attention panel with ten providers (the C++ kernel at 0 MiB, Triton not run, two head
    dims at L = 128), a panel where every provider is at 0 MiB, and the model's rows: one L, two
    batches, no byte or FLOP counts (so no roofline panel)."""
    rows = []
    for L in (64, 128):
        att = [("reference", 4.0 * L / 64, 2**23), ("cpp", 1.0 * L / 64, 0)]
        att += [(p, (2.0 + n / 4) * L / 64, 2**22) for n, p in enumerate(PEERS)]
        rows += [_row("ecce_attention", "fwd+bwd", p, L, ms, mem) for p, ms, mem in att]
        rows.append(_row("ecce_attention", "fwd+bwd", "triton", L, None, status="skipped"))
        rows += [_row("ecce_prefix", "fwd", p, L, ms, 0) for p, ms in (("reference", 0.5), ("cpp", 0.1))]
    rows += [_row("ecce_attention", "fwd+bwd", p, 128, ms, mem, Dh=64)
             for p, ms, mem in (("reference", 20.0, 2**24), ("cpp", 3.0, 0))]
    rows += [_row("iteach_net", "train_step", p, 110, ms * B, B=B, counts=False)
             for B in (8, 32) for p, ms in (("reference", 10.0), ("auto", 6.0))]
    return {"schema": 2,
            "environment": {"date": "2026-01-02T03:04:05+00:00", "python": "3.11", "torch": "2.14.1",
                            "triton": "3.8.0", "cuda": "13.0", "device": "Fake H200", "device_type": "cuda",
                            "device_slug": "fake-h200", "cpu_threads": 16, "git_commit": "0123456789abcdef",
                            "git_dirty": False},
            "config": {}, "ceilings": {"copy_bytes_per_s": 1e12, "matmul_flops_per_s": {"float32": 5e13}},
            "ceiling_samples": [], "baselines": {"ecce_attention": "reference", "iteach_net": "reference",
                                                 "ecce_prefix": "reference"},
            "providers": {}, "rows": rows}


def _drawn(metric):
    fig = report.figure(fake_results(), metric)
    FigureCanvasAgg(fig).draw()  # lays out the text, so the extents below are the saved ones
    return fig, [ax for ax in fig.axes if ax.axison]


def _by_title(axes):
    return {ax.get_title().split(" (baseline")[0]: ax for ax in axes}


@pytest.mark.parametrize("metric", report.PLOTS)
def test_every_figure_names_what_where_and_its_axes(metric):
    fig, axes = _drawn(metric)
    ylabel, what = report.METRICS[metric]
    title = fig.get_suptitle()
    assert what in title and "Fake H200 (cuda, 16 CPU threads)" in title and "torch 2.14.1" in title
    assert "solid" not in title and "dotted" not in title  # the legend says what the markers mean
    assert axes, "no panel drawn"
    for ax in axes:
        assert ax.get_title() and ax.get_ylabel() == ylabel
        assert ax.get_xlabel().startswith(("conversation length L", "batch B"))
        assert ax.get_xticklabels() and all(t.get_text() for t in ax.get_xticklabels())
    model = _by_title(axes).get("iteach_net — train_step")
    if model is not None:  # one L, two batches: the axis is the batch, not a vertical line at L = 110
        assert model.get_xlabel() == "batch B (conversations of L = 110 utterances)"
        assert [t.get_text() for t in model.get_xticklabels()] == ["8", "32"]
    assert _by_title(axes)["ecce_attention — fwd+bwd"].get_xlabel() == report.X_LABEL


@pytest.mark.parametrize("metric", report.PLOTS)
def test_one_legend_outside_the_panels_naming_every_provider(metric):
    fig, axes = _drawn(metric)
    assert all(ax.get_legend() is None for ax in axes), "no legend on the data"
    [legend] = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert len(labels) >= 12  # the long legend this rule is for
    for provider in ["reference", "cpp", *PEERS]:
        assert provider in labels
    assert "triton (not run: see the table)" in labels
    assert {"colour: provider", "line: dtype", "marker shape: head dim"} <= set(labels)
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    for ax in axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), f"legend on the panel {ax.get_title()}"
        assert box.x0 >= ax.get_window_extent(renderer).x1
    assert box.y1 <= fig.bbox.y1 and box.y0 >= fig.bbox.y0


def test_memory_plot_draws_the_provider_at_zero_mib():
    fig, axes = _drawn("memory")
    panels = _by_title(axes)
    assert "ecce_prefix — fwd" in panels, "a panel where every provider is at 0 MiB is drawn, not dropped"
    for title in ("ecce_attention — fwd+bwd", "ecce_prefix — fwd"):
        ax = panels[title]
        assert ax.get_yscale() == "symlog"
        [cpp] = [line for line in ax.lines if line.get_gid() == "cpp|float32|16||None"]
        assert list(cpp.get_ydata()) == [0.0, 0.0] and cpp.get_color() != "none" and cpp.get_visible()
        low, high = ax.get_ylim()
        assert low < 0 < high  # the zero marker whole inside the axes, not on its edge
        assert 0 in ax.get_yticks() and "0" in [t.get_text() for t in ax.get_yticklabels()]
    # the attention's real values still read on the same axis: 8 MiB and 16 MiB above the zeros
    ys = [y for line in panels["ecce_attention — fwd+bwd"].lines for y in line.get_ydata()]
    assert max(ys) == 16 and 8 in ys


def test_roofline_tells_bandwidth_from_flop_rate_by_marker_named_in_the_legend():
    fig, axes = _drawn("roofline")
    [legend] = fig.legends
    entries = dict(zip([t.get_text() for t in legend.get_texts()], legend.legend_handles))
    bw, flop = entries[report.BW_LABEL], entries[report.FLOP_LABEL]
    assert bw.get_marker() == flop.get_marker() == "o"
    assert flop.get_markerfacecolor() == "white" and bw.get_markerfacecolor() != "white"
    ax = _by_title(axes)["ecce_attention — fwd+bwd"]
    lines = {line.get_gid(): line for line in ax.lines if line.get_gid()}
    ref_bw, ref_flop = lines["reference|float32|16|bw|None"], lines["reference|float32|16|flop|None"]
    assert ref_bw.get_markerfacecolor() == ref_bw.get_color()  # filled: bandwidth
    assert ref_flop.get_markerfacecolor() == "white"  # hollow: FLOP rate
    # 1e7 B in 4 ms against 1e12 B/s; 1e9 FLOP in 4 ms against 5e13 FLOP/s
    assert ref_bw.get_ydata()[0] == pytest.approx(1e7 / 4e-3 / 1e12)
    assert ref_flop.get_ydata()[0] == pytest.approx(1e9 / 4e-3 / 5e13)
    # the model has no byte or FLOP counts: its panel is left out, and the figure says so
    assert "iteach_net — train_step" not in _by_title(axes)
    assert any("Not shown" in t.get_text() and "iteach_net — train_step" in t.get_text() for t in fig.texts)


def test_speedup_and_time_name_their_reference_lines():
    for metric, label in (("speedup", "black line: ×1 = the baseline"), ("time", "bar: p20-p80 of the calls")):
        fig, axes = _drawn(metric)
        assert label in [t.get_text() for t in fig.legends[0].get_texts()]
    assert all("(baseline: reference)" in ax.get_title() for ax in _drawn("speedup")[1])


def test_plots_writes_the_four_pngs(tmp_path):
    paths = report.plots(fake_results(), str(tmp_path / "fake"))
    assert [p.rsplit("-", 1)[1] for p in paths] == [f"{m}.png" for m in report.PLOTS]
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
