"""The benchmark report: fake result sets of both schemas render a Markdown table, footnotes
and PNG plots; the headline summary; the README's generated section is replaced, not appended to."""
import json
import os

import pytest

pytest.importorskip("matplotlib")

from bench import report  # noqa: E402


def _row(provider, L, ms, status="ok", reason=None, mem=2**20):
    row = {"op": "ecce_attention", "provider": provider, "mode": "fwd", "dtype": "float32", "B": 2, "L": L,
           "D": 128, "H": 8, "Dh": 16, "status": status, "reason": reason, "provider_kind": "peer"}
    if status == "ok":
        row.update(median_ms=ms, p20_ms=ms * 0.9, p80_ms=ms * 1.1, rounds=10, timer="fake", peak_mem_bytes=mem,
                   mem_method="fake allocator", bytes_moved=10**6, flops=10**8, note=None)
    return row


def fake_results():
    rows = [_row("reference", 64, 4.0), _row("reference", 128, 12.0), _row("triton", 64, 1.0),
            _row("triton", 128, 2.0, mem=2**10),
            _row("flex-attention", 64, None, "skipped", "FlexAttention needs CUDA"),
            _row("flex-attention", 128, None, "failed", "InductorError: boom")]
    return {"schema": 1,
            "environment": {"date": "2026-01-02T03:04:05+00:00", "python": "3.11", "torch": "2.14.1",
                            "triton": "3.8.0", "cuda": None, "device": "Fake CPU", "device_type": "cpu",
                            "device_slug": "fake-cpu", "cpu_threads": 2, "git_commit": "0123456789abcdef",
                            "git_dirty": False},
            "config": {"quick": True},
            "ceilings": {"copy_bytes_per_s": 1e10, "matmul_flops_per_s": {"float32": 1e11}},
            "baselines": {"ecce_attention": "reference"}, "providers": {}, "rows": rows}


@pytest.fixture
def result_file(tmp_path):
    path = tmp_path / "fake-cpu-2026-01-02.json"
    path.write_text(json.dumps(fake_results()))
    return path


def test_speedups_are_over_the_baseline_of_the_same_size():
    ups = report.speedups(fake_results())
    assert ups[2] == pytest.approx(4.0) and ups[3] == pytest.approx(6.0)
    assert ups[0] == pytest.approx(1.0)


def test_the_committed_schema_1_results_still_render():
    """The schema-1 file in bench/results (one ceiling set, no counters) renders as before."""
    md = report.markdown(report.load(os.path.join(report.RESULTS, "cpu-amd-epyc-2026-11-25.json")))
    assert "| dtype | B | L | reference | cpp | compiled-reference |" in md
    assert "copy 16.0 GB/s" in md and "×11.32" in md


def test_render_writes_table_and_plots(result_file):
    written = report.render(str(result_file))
    names = sorted(os.path.basename(p) for p in written)
    assert names == sorted(["fake-cpu-2026-01-02.md"] + [f"fake-cpu-2026-01-02-{m}.png" for m in report.PLOTS])
    for path in written:
        assert os.path.getsize(path) > 0
        if path.endswith(".png"):
            with open(path, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    md = open(written[0] if written[0].endswith(".md") else result_file.with_suffix(".md")).read()
    assert "| dtype | B | L | reference | triton | flex-attention |" in md
    assert "×4.00" in md and "×6.00" in md  # the speed-ups
    # the binding ceiling: 1e8 FLOP in 1 ms against 1e11 FLOP/s, 1e6 B in 4 ms against 1e10 B/s
    assert "| 1.000 ms ×4.00 · 1.0 MiB · 100% FLOP |" in md and "4.000 ms ×1.00 · 1.0 MiB · 25% FLOP" in md
    assert "skipped [1]" in md and "1. skipped: FlexAttention needs CUDA" in md
    assert "failed [2]" in md and "2. failed: InductorError: boom" in md
    assert "Fake CPU" in md and "0123456789" in md


def test_update_readme_replaces_the_generated_section(result_file, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# head\n\n{report.BEGIN}\nold text\n{report.END}\n\ntail\n")
    for _ in range(2):  # idempotent: the second run replaces the first
        report.update_readme(str(readme), [str(result_file)])
    text = readme.read_text()
    assert text.startswith("# head") and text.rstrip().endswith("tail")
    assert "old text" not in text and text.count(report.BEGIN) == 1 and text.count("### Fake CPU") == 1


def test_update_readme_without_markers_is_a_clear_error(result_file, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="markers"):
        report.update_readme(str(readme), [str(result_file)])


def fake_results_v2():
    """Schema 2: ceilings re-measured per op (rows point at theirs), two head dims in one table,
    model rows with host syncs and launches, a headline flag."""
    data = fake_results()
    data["schema"] = 2
    data["environment"].update(load_average=3.5, cpu_count=2)
    data["config"]["load_average_end"] = 1.0
    slow, fast = ({"copy_bytes_per_s": 5e9, "matmul_flops_per_s": {"float32": 5e10}, "label": "before a"},
                  {"copy_bytes_per_s": 1e10, "matmul_flops_per_s": {"float32": 1e11}, "label": "before b"})
    data["ceiling_samples"] = [slow, fast]
    for row in data["rows"]:
        row["ceilings_at"] = 0 if row["status"] == "ok" else None
    wide = _row("triton", 64, 1.0)
    wide.update(D=512, Dh=64, ceilings_at=1, headline=True)
    model = _row("auto", 110, 100.0)
    model.update(op="iteach_net", mode="train_step", bytes_moved=None, flops=None, host_syncs=0, launches=1234,
                 note="1.00 M parameters; fullgraph=True failed (boom)", headline=True)
    base = _row("reference", 110, 150.0)
    base.update(op="iteach_net", mode="train_step", bytes_moved=None, flops=None, host_syncs=258, launches=3400,
                headline=True)
    data["rows"] += [wide, base, model]
    data["baselines"]["iteach_net"] = "reference"
    return data


def test_schema_2_renders_head_dims_counters_and_per_op_ceilings():
    md = report.markdown(fake_results_v2())
    # two head dims in one table: a Dh column; the Dh=64 row divides by its own (faster) ceilings
    assert "| dtype | B | L | Dh | reference | triton | flex-attention |" in md
    assert "| float32 | 2 | 64 | 64 |  | 1.000 ms · 1.0 MiB · 100% FLOP |" in md
    # the Dh=16 rows divide by the slow ceilings they were measured next to: 1e8 FLOP / 1 ms / 5e10
    assert "| float32 | 2 | 64 | 16 | 4.000 ms ×1.00 · 1.0 MiB · 50% FLOP |" in md
    assert "100 ms ×1.50 · 1.0 MiB · 0 syncs · 1,234 launches" in md
    assert "150 ms ×1.00 · 1.0 MiB · 258 syncs · 3,400 launches" in md
    assert "- auto: fullgraph=True failed (boom)" in md and "M parameters" not in md  # counts are not notes
    assert "copy 10.0 GB/s (down to 5.0 GB/s)" in md and "measured 2 times" in md
    assert "Machine load (1-minute average) 3.5 → 1 on 2 cores: a shared machine" in md


def test_summary_lists_the_headline_rows_only():
    text = report.summary(fake_results_v2())
    lines = text.splitlines()
    assert len(lines) == 2 + 3, text
    assert "| iteach_net | train_step | float32 | 2 | 110 | 16 | auto | 100 ms | ×1.50 | 0 | ok |" in text
    assert report.summary(fake_results()) == "(no headline rows in this result file)"


def test_schema_2_plots(tmp_path):
    path = tmp_path / "fake-cpu-2026-01-03.json"
    path.write_text(json.dumps(fake_results_v2()))
    written = report.render(str(path))
    assert len(written) == 1 + len(report.PLOTS) and all(os.path.getsize(p) > 0 for p in written)


def test_readme_points_at_the_newest_kernel_resource_report(result_file, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for date, missed in (("2026-01-01", 3), ("2026-01-02", 0)):
        verdict = f"Variants missing the spill target: {missed} of 9."
        (results / f"kernel-resources-{date}.md").write_text(f"| a |\n\n{verdict}\n")
        (results / f"kernel-resources-{date}.json").write_text("{}")  # not a benchmark result
    assert report.latest_results(str(results)) == []
    lines = report.kernel_resources_section(str(tmp_path), str(results))
    text = "\n".join(lines)
    assert "[`results/kernel-resources-2026-01-02.md`]" in text and "0 of 9" in text and "3 of 9" not in text


def test_appended_rows_name_their_command_and_commit():
    """Rows added later by --append carry their own commit in the header, not the first run's."""
    data = {"config": {"appended": [{"argv": ["--ops", "iteach_net", "--append"], "date": "2026-01-01T00:00:00",
                                     "git_commit": "0123456789abcdef", "git_dirty": True}, ["--append"]]}}
    lines = report.appended_lines(data)
    assert "`python -m bench.run --ops iteach_net --append` on 2026-01-01T00:00:00, commit `0123456789 " \
           "(with local changes)`" in lines[1]
    assert lines[2] == "Rows added by `python -m bench.run --append`."
