"""Tests of the paper's reproduction (iteach_fast.reproduce): the paper's numbers as typed,
the plan (shared runs, keys, folds x seeds), the tables / CSV / PNGs rendered from a fake
result set, and a tiny end-to-end run through the process pool that is then cached and resumed."""
import csv
import json
import os

import numpy as np
import pytest

from iteach_fast import cli
from iteach_fast import reproduce as rp
from iteach_fast.data.masking import EVAL_RATES
from iteach_fast.evaluation import plots
from iteach_fast.training.config import TrainConfig

PNG = b"\x89PNG\r\n\x1a\n"


def quiet(*_args, **_kw):
    pass


def test_paper_numbers_are_typed_consistently():
    """Each typed row agrees with its own Average / Decline column (a typo shows up here)."""
    paper = rp.paper_results()
    assert paper["rates"] == list(EVAL_RATES)
    assert set(paper["datasets"]) == {"iemocap4", "iemocap6", "cmumosi", "cmumosei"}
    for table, summary in (("table2", "decline"), ("table4", "average"), ("table5", "average")):
        assert paper[table]["source"].startswith(f"Table {table[-1]}")
        for dataset, rows in paper[table]["rows"].items():
            assert dataset in paper["datasets"]
            for name, row in rows.items():
                r = row["rates"]
                assert len(r) == 8, (table, dataset, name)
                want = r[0] - r[-1] if summary == "decline" else np.mean(r)
                assert row[summary] == pytest.approx(want, abs=0.011), (table, dataset, name)
    # every row of the paper's Table 2 is one of ours; ours adds the options' rows
    paper_rows = {v.label for v in rp.VARIANTS["table2"] if not any(dict(v.changes).get(o) for o in rp.OPTIONS)}
    assert set(paper["table2"]["rows"]["iemocap4"]) == paper_rows
    assert all("ITEACH-Net" in rows for rows in paper["table4"]["rows"].values())
    for rows in paper["table1"]["rows"].values():
        assert set(rows) == {v.label for v in rp.VARIANTS["table1"]}
    assert paper["table3"]["rows"] == {"teacher": 2190000, "student": 3880000}


def test_plan_shares_runs_and_keys_ignore_where_they_run(tmp_path, tiny_keys):
    base = TrainConfig.from_dict(tiny_keys)
    runs, groups = rp.plan(rp.expand("all"), base, seeds=(0, 1), folds=(None,), out_dir=str(tmp_path))
    its = set(groups["table2"]["ITS TF NAS"])
    assert its == set(groups["table1"]["local+global"]) == set(groups["table4"]["ITEACH-Net"]) \
        == set(groups["fig6"]["NAS student"])
    assert set(groups["table2"]["ITS TF TF"]) == set(groups["fig6"]["TF student"])
    assert groups["fig9"]["ITEACH-Net"] == groups["table4"]["ITEACH-Net"][:1]  # first seed only
    # table1: 2 new rows, table2: 6 new (3 of the paper's and the three options, which table4 and
    # baselines share), table5: 1, fig78: 8 (one per rate) -> 18 configs x 2 seeds
    assert len(runs) == 36
    assert set(groups["table2"]["ITS TF NAS + cross-ECCE"]) == set(groups["table4"]["ITEACH-Net + cross-ECCE"])
    assert set(groups["table2"]["ITS TF NAS + early fusion"]) == set(groups["table4"]["ITEACH-Net + early fusion"])
    assert runs[groups["table4"]["ITEACH-Net + early fusion"][0]].config.model.early_fusion == "text"
    assert set(groups["table2"]["ITS TF NAS + recurrent"]) == set(groups["table4"]["ITEACH-Net + recurrent"])
    assert runs[groups["table4"]["ITEACH-Net + recurrent"][0]].config.model.recurrent is True
    cfg = {k: runs[k].config for k in groups["fig78"]["fixed 0.3"]}
    assert all(c.strategy == "fixed" and c.rate == 0.3 and c.select_rates == (0.3,) for c in cfg.values())
    pre = runs[groups["table2"]["PRE TF"][0]].config.model
    assert pre.framework == "pre" and pre.student_mixer == "tf"
    assert runs[groups["table1"]["global"][0]].config.model.ecce == "global"
    assert runs[groups["table5"]["ITEACH-Net"][0]].config.strategy == "progressive"
    # the key: what is computed, not where or how fast
    c = base.replace(seed=3)
    assert rp.run_key(c) == rp.run_key(c.replace(out_dir="elsewhere", threads=7, device="cpu", progress=True))
    assert rp.run_key(c) != rp.run_key(c.replace(epochs=2)) != rp.run_key(c.replace(seed=4))
    # IEMOCAP: folds x seeds
    iem = base.replace(dataset="iemocap4", data_root=str(tmp_path))
    runs, groups = rp.plan(("table4",), iem, seeds=(0, 1), folds=(1, 2, 3), out_dir=str(tmp_path))
    paper_runs = [runs[k] for k in groups["table4"]["ITEACH-Net"]]
    assert sorted((r.fold, r.seed) for r in paper_runs) == [(f, s) for f in (1, 2, 3) for s in (0, 1)]
    assert {r.config.fold for r in runs.values()} == {1, 2, 3}


def test_arguments_are_checked_before_any_run(tmp_path, tiny_keys):
    cfg = TrainConfig.from_dict({**tiny_keys, "out_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="unknown experiment.*table9"):
        rp.reproduce(["table9"], cfg, log=quiet)
    with pytest.raises(ValueError, match="--folds: synthetic has one train/test split"):
        rp.reproduce("table1", cfg, folds=(1, 2), log=quiet)
    with pytest.raises(ValueError, match="--folds must be distinct IEMOCAP sessions"):
        rp.resolve_folds("iemocap4", (0, 6))
    assert rp.resolve_folds("iemocap6", None) == (1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="--seeds"):
        rp.reproduce("table1", cfg, seeds=(1, 1), log=quiet)
    with pytest.raises(ValueError, match="--jobs"):
        rp.reproduce("table1", cfg, jobs=0, log=quiet)
    assert not os.path.exists(tmp_path / "runs")


# ----------------------------------------------------------------------------- rendering a fake result set

def fake_result(key, fold, seed, offset, slope=5.0, teacher=70.0, distance=0.5):
    """A result as run_one writes it: the student's WAF falls linearly with the rate."""
    student = [{"rate": r, "realised_rate": r, "waf": offset - slope * r, "acc": offset + 1 - slope * r, "n": 100}
               for r in EVAL_RATES]
    return {"key": key, "fold": fold, "seed": seed, "student": student,
            "teacher": {"rate": 0.0, "realised_rate": 0.0, "waf": teacher + offset - 70, "acc": 71.0, "n": 100},
            "distance": [{"rate": r, "distance": distance + r} for r in EVAL_RATES]}


def fake_set(experiments, cells, level):
    """``(groups, results)``: every row of ``experiments`` over ``cells`` (fold, seed) pairs;
    ``level(exp, label)`` gives the row's WAF at rate 0 (plus 0.5 per cell, so std > 0)."""
    groups, results = {}, {}
    for exp in experiments:
        groups[exp] = {}
        for v in rp.VARIANTS[exp]:
            keys = []
            for i, (fold, seed) in enumerate(cells[:1] if exp == "fig9" else cells):
                key = f"{exp}-{v.label}-{fold}-{seed}"
                slope = 2.0 if v.label.endswith("NAS") else 8.0
                results[key] = fake_result(key, fold, seed, level(exp, v.label) + 0.5 * i, slope,
                                           teacher={"off": 70, "global": 69, "local+global": 72}.get(v.label, 70),
                                           distance=0.4 if v.label == "TF student" else 0.6)
                keys.append(key)
            groups[exp][v.label] = keys
    return groups, results


@pytest.fixture
def context(tiny_keys):
    """``context(dataset, folds, seeds)``: what reproduce hands render, for a fake result set."""
    def make(dataset, folds, seeds):
        base = TrainConfig.from_dict(tiny_keys)
        return {"dataset": dataset, "data": dataset, "folds": folds, "seeds": seeds,
                "command": "iteach-fast reproduce", "input_dims": (6, 4, 5), "num_classes": 4,
                "model": rp.VARIANTS["table4"][0].build(base).model, "device": "cpu", "train_seconds": 1.0}
    return make


def test_render_from_fake_results_on_a_paper_dataset(tmp_path, context):
    exps = ("table1", "table2", "table3", "table4", "table5", "fig6", "fig78")
    cells = [(f, s) for f in (1, 2) for s in (0, 1)]  # 2 folds x 2 seeds
    level = lambda exp, label: 60.0 + (5 if label in ("ITS TF NAS", "ITEACH-Net") else 0)  # noqa: E731
    groups, results = fake_set(exps, cells, level)
    res = rp.render(exps, groups, results, {}, context("iemocap4", (1, 2), (0, 1)), str(tmp_path), log=quiet)
    # Table 2: rates as columns, Average and Decline; ours as mean ± std over the 4 runs; the paper and Δ
    t2 = res["tables"]["table2"].splitlines()
    assert t2[0].split(" | ")[3:13] == [f"{r:.1f}" for r in EVAL_RATES] + ["Average", "Decline"]
    its = next(line for line in t2 if line.startswith("| ITS | TF | NAS"))
    wafs = [65.0, 65.5, 66.0, 66.5]  # the four runs at rate 0
    assert f"{np.mean(wafs):.2f} ± {np.std(wafs, ddof=1):.2f}" in its
    assert "| 1.40 ± 0.00 |" in its  # Decline = 2.0 x 0.7
    i = t2.index(its)
    assert t2[i + 1].startswith("| paper |") and "77.47" in t2[i + 1] and "3.63" in t2[i + 1]
    assert t2[i + 2].startswith("| Δ (ours − paper) |") and f"{np.mean(wafs) - 77.47:+.2f}" in t2[i + 2]
    # Table 1: the teacher on complete data, the paper and Δ beside each row
    t1 = res["tables"]["table1"]
    assert "| ✓ | ✓ | " in t1 and "78.15" in t1 and "77.83" in t1
    # Tables 4 / 5: Average, and the paper's ITEACH-Net row
    assert "Average" in res["tables"]["table4"] and "75.06" in res["tables"]["table4"]
    assert "75.26" in res["tables"]["table5"]
    # Table 3: the split and the paper's counts, with the one sentence on why the teacher differs
    t3 = res["tables"]["table3"]
    assert "2.184M" in t3 and "0.676M" in t3 and "3.887M" in t3 and "2.19M" in t3 and "3.88M" in t3
    assert "counted without the input projections and ECCE" in t3
    # Fig. 7/8: IME at each rate, the 0.7-trained model at every rate
    assert "IME" in res["tables"]["fig78"] and "trained at 0.7" in res["tables"]["fig78"]
    # the orderings: ITS TF NAS leads and declines least; local+global > off > global
    report = res["report"]
    assert "ITS TF NAS > PRE TF (average WAF over the rates): **holds**" in report
    assert "the NAS student declines least" in report and "declines least (its Decline vs the smallest other): " \
        "**holds**" in report
    assert "ECCE local+global > global: **holds**" in report and "off > global" in report
    assert "folds 1, 2 (leave one session out) x seeds 0, 1" in report
    # a difference inside the runs' spread is said to be unresolved
    close = rp.orderings({"table1": {"off": (57.0, 3.0, 3), "global": (58.0, 2.5, 3), "local+global": (64.0, 1.0, 3)}})
    assert "local+global > global: **holds** here (64.00 ± 1.00 vs 58.00 ± 2.50)" in close[0]
    assert "off > global" in close[2] and "**does not hold**" in close[2] and "within one std (3.00)" in close[2]
    # one run per row: no std to show (not "± 0.00"), and the claim says so
    one = {"off": (57.0, 0.0, 1), "global": (58.0, 0.0, 1), "local+global": (64.0, 0.0, 1)}
    single = rp.orderings({"table1": one})
    assert "local+global > global: **holds** here (64.00 vs 58.00; one run per row, so no spread" in single[0]
    assert all("±" not in claim for claim in single)
    # files: CSV of every run x rate x metric, one Markdown per table, the PNGs
    with open(res["paths"]["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["experiment", "row", "dataset", "fold", "seed", "run", "model", "rate", "metric", "value"]
    t2_rows = [r for r in rows if r["experiment"] == "table2"]
    assert len(t2_rows) == 7 * 4 * (8 * 3 + 2 + 8)  # rows x runs x (student waf/acc/realised, teacher, distance)
    assert {r["fold"] for r in t2_rows} == {"1", "2"}
    for exp in exps:
        assert os.path.isfile(tmp_path / f"{exp}.md")
    for key in ("table2", "table4", "table5", "fig6", "fig78"):
        with open(res["paths"][key], "rb") as f:
            assert f.read(8) == PNG, key
    assert os.path.isfile(res["paths"]["report"])


def test_baselines_stand_beside_every_table(tmp_path, context):
    """Each run holds its data's baselines: Tables 1, 2, 4 show them as rows over the same runs,
    `baselines` draws their own table with ITEACH-Net said to be above or below the best of
    them at each rate, and the report checks ITEACH-Net against the best baseline."""
    exps = ("table1", "table2", "table4", "baselines")
    groups, results = fake_set(exps, [(None, 0), (None, 1), (None, 2)], lambda e, v: 60.0)
    for res in results.values():  # BiGRU (mean) 60 - 4r against ITEACH-Net's 60.5 - 8r: ahead from 0.2 on
        res["baselines"] = {name: [{"rate": r, "waf": w - s * r, "acc": w, "n": 100} for r in EVAL_RATES]
                            for name, w, s in (("majority", 15.0, 0.0), ("logreg", 55.0, 10.0),
                                               ("logreg_context", 58.0, 8.0), ("gru", 62.0 - 2.0 * res["seed"], 4.0))}
        res["logreg_context_k"] = 2
    out = rp.render(exps, groups, results, {}, context("synthetic", (None,), (0, 1, 2)), str(tmp_path), log=quiet)
    t4 = out["tables"]["table4"].splitlines()
    gru = next(line for line in t4 if line.startswith("| baseline: BiGRU"))
    assert "60.00 ± 2.00" in gru and gru.endswith("| 3 |")  # rate 0: 62, 60, 58 over the three runs
    assert any(line.startswith("| baseline: logistic regression, log-probs summed over ±2") for line in t4)
    assert "baseline: majority class" in out["tables"]["table2"] and "baseline: BiGRU" in out["tables"]["table1"]
    own = out["tables"]["baselines"]
    assert "- ITEACH-Net: below the best baseline at rates 0.2, 0.3, 0.4, 0.5, 0.6, 0.7 (means)" in own
    assert "ITS TF NAS > PRE TF" in out["report"]  # the cross-ECCE row stays out of the paper's claims
    assert "Table 4: ITEACH-Net > the best baseline (BiGRU (bc-LSTM style); average WAF over the rates): " \
        "**does not hold**" in out["report"]
    with open(out["paths"]["baselines"], "rb") as f:
        assert f.read(8) == PNG


def test_render_on_synthetic_data_has_no_paper_numbers(tmp_path, context):
    groups, results = fake_set(("table2", "table1"), [(None, 0), (None, 1), (None, 2)], lambda e, v: 50.0)
    del results[groups["table2"]["TS NAS TF"][2]]  # a failed run: the row has 2 runs
    res = rp.render(("table1", "table2"), groups, results, {}, context("synthetic", (None,), (0, 1, 2)),
                    str(tmp_path), log=quiet)
    assert "paper" not in res["tables"]["table2"] and "Δ" not in res["tables"]["table1"]
    assert "not one of the paper's datasets" in res["report"]
    assert "folds are not meaningful" in res["report"]
    ts = next(line for line in res["tables"]["table2"].splitlines() if line.startswith("| TS |"))
    assert ts.endswith("| 2 |")
    assert "3 runs per row: seeds 0, 1, 2" in res["report"]
    assert rp.runs_line(context("synthetic", (None,), (0,)), {"off": [{}]}, "table1").startswith("1 run per row:")


def test_fig9_embedding_grid_from_fake_features(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(24) % 4
    panels = {"Teacher (complete)": (rng.standard_normal((24, 8)) + labels[:, None], labels),
              "Student-0.7": (rng.standard_normal((24, 8)), labels)}
    flat = rp.tsne_panels(panels, max_iter=250)
    assert all(xy.shape == (24, 2) and np.isfinite(xy).all() for xy, _ in flat.values())
    path = plots.embedding_grid(flat, ("happy", "sad", "neutral", "angry"), str(tmp_path / "fig9.png"), "t")
    with open(path, "rb") as f:
        assert f.read(8) == PNG


# ----------------------------------------------------------------------------- end to end

def test_reproduce_trains_in_a_pool_then_caches_and_resumes(tmp_path, tiny_keys):
    cfg = TrainConfig.from_dict({**tiny_keys, "out_dir": str(tmp_path)})
    res = rp.reproduce(["table1", "fig9"], cfg, seeds=(0,), jobs=2, log=quiet)
    assert res["failures"] == [] and res["ran"] == 3 and res["cached"] == 0  # fig9 reads table1's local+global run
    for name in ("results.csv", "report.md", "table1.md", "fig9.md", "fig9_tsne.png"):
        assert os.path.isfile(tmp_path / name), name
    runs = sorted(os.listdir(tmp_path / "runs"))
    assert len(runs) == 3
    with open(tmp_path / "runs" / runs[0] / "result.json") as f:
        result = json.load(f)
    assert [r["rate"] for r in result["student"]] == list(EVAL_RATES) and result["teacher"]["rate"] == 0.0
    assert len(result["distance"]) == 8 and result["config"]["threads"] == 1
    # its data's baselines on the same masks, trained once for the three runs (same data, strategy, seed)
    assert set(result["baselines"]) == {"majority", "logreg", "logreg_context", "gru"}
    assert [r["realised_rate"] for r in result["baselines"]["gru"]] == [r["realised_rate"] for r in result["student"]]
    assert len(os.listdir(tmp_path / "baselines")) == 1
    with open(tmp_path / "runs" / runs[0] / "train.log") as f:
        assert "== done in" in f.read()
    # again, for another table reading the same run: only its other rows (the options) are trained
    res = rp.reproduce("table4", cfg, seeds=(0,), jobs=2, log=quiet)
    assert res["ran"] == 3 and res["cached"] == 1
    # an interrupted run (its result not written) resumes from its last.pt, here in this process (jobs=1)
    key = rp.plan(("table4",), cfg, (0,), (None,), str(tmp_path))[1]["table4"]["ITEACH-Net"][0]
    os.remove(tmp_path / "runs" / key / "result.json")
    res = rp.reproduce("table4", cfg, seeds=(0,), log=quiet)
    assert res["ran"] == 1 and res["cached"] == 3
    with open(tmp_path / "runs" / key / "train.log") as f:
        assert "resumed from" in f.read()


def test_cli_reproduce_arguments(tmp_path, capsys):
    rc = cli.main(["reproduce", "table1", "--folds", "1,2", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "--folds" in err and "--seeds" in err
    rc = cli.main(["reproduce", "table1", "--seed", "3", "--out-dir", str(tmp_path)])
    assert rc == 2 and "use --seeds and --folds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "table9"])
    assert "invalid choice: 'table9'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--help"])
    out = capsys.readouterr().out
    for flag in ("--quick", "--seeds", "--folds", "--jobs", "--devices", "--epochs", "--dataset"):
        assert flag in out


@pytest.mark.gpu
def test_reproduce_spreads_runs_over_the_gpus(tmp_path, tiny_keys):
    cfg = TrainConfig.from_dict({**tiny_keys, "out_dir": str(tmp_path)})
    res = rp.reproduce("table1", cfg, seeds=(0,), jobs=2, devices=[0], log=quiet)
    assert res["failures"] == [] and res["ran"] == 3
    for key in os.listdir(tmp_path / "runs"):
        with open(tmp_path / "runs" / key / "result.json") as f:
            assert json.load(f)["config"]["device"] == "cuda:0"
