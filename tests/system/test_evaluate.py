"""Tests of evaluation (iteach_fast.training.validation) and the figures (iteach_fast.evaluation.plots): metric
parity with a hand computation, the UME / IME outputs (JSON, CSV, table, average row),
the PNGs, the data-gap report, and the teacher on complete data (Table 1)."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from iteach_fast import cli
from iteach_fast.data import masking
from iteach_fast.data.masking import EVAL_RATES
from iteach_fast.data.synthetic import SyntheticSpec, make_synthetic
from iteach_fast.evaluation import plots, protocols
from iteach_fast.evaluation.baselines import BaselineConfig
from iteach_fast.evaluation.gaps import data_gaps
from iteach_fast.nn.model import ITEACHNet
from iteach_fast.training import loop as training
from iteach_fast.training import validation as ev
from iteach_fast.training.checkpoint import load_checkpoint, load_for_eval
from iteach_fast.training.config import TrainConfig
from tests.system.helpers import quiet

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_keys):
    out = tmp_path_factory.mktemp("ck") / "run"
    return training.train(TrainConfig.from_dict({**tiny_keys, "out_dir": str(out)}), log=quiet)["best"]


# ----------------------------------------------------------------------------- metrics

def _hand_waf(t, p):
    """Weighted F1 from its definition: per-class F1 weighted by the class's support in t."""
    total = 0.0
    for c in sorted(set(t)):
        tp = sum(1 for a, b in zip(t, p) if a == c and b == c)
        fp = sum(1 for a, b in zip(t, p) if a != c and b == c)
        fn = sum(1 for a, b in zip(t, p) if a == c and b != c)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        total += f1 * sum(1 for a in t if a == c)
    return 100 * total / len(t)


def test_classification_metrics_match_hand_computation():
    t = [0, 0, 1, 1, 1, 2, 3, 3, 2, 0]
    p = [0, 1, 1, 1, 0, 2, 3, 2, 2, 3]
    m = ev.compute_metrics(np.array(t), np.array(p))
    assert m["acc"] == pytest.approx(100 * 6 / 10)
    assert m["waf"] == pytest.approx(_hand_waf(t, p))
    assert set(m) == {"waf", "acc"}
    empty = ev.compute_metrics(np.zeros(0), np.zeros(0))
    assert np.isnan(empty["waf"]) and np.isnan(empty["acc"])


def test_regression_metrics_binary_rule_and_mae():
    # GCNet's MOSI rule: > 0 positive, < 0 negative, label exactly 0 excluded; MAE over all
    y = np.array([2.0, -1.0, 0.0, 0.5, -2.5, 1.0])
    s = np.array([1.5, 0.4, 2.0, 0.2, -1.0, -0.3])
    m = ev.compute_metrics(y, s, task="regression")
    kept_t = [True, False, True, False, True]  # labels without the 0
    kept_p = [True, True, True, False, False]
    assert m["acc"] == pytest.approx(100 * 3 / 5)
    assert m["waf"] == pytest.approx(_hand_waf(kept_t, kept_p))
    assert m["mae"] == pytest.approx(np.abs(y - s).mean())


# ----------------------------------------------------------------------------- UME / IME

def test_ume_outputs(checkpoint, tmp_path):
    res = protocols.ume(checkpoint, out_dir=str(tmp_path), device="cpu", log=quiet)
    rows = res["rows"]
    assert [r["rate"] for r in rows] == list(EVAL_RATES)
    for r in rows:
        assert set(r) == {"rate", "realised_rate", "waf", "acc", "n"} and r["n"] > 0
        assert r["realised_rate"] == pytest.approx(min(r["rate"], 2 / 3), abs=0.05)
    assert rows[0]["realised_rate"] == 0.0
    avg = res["average"]
    assert avg["rate"] == "average" and avg["waf"] == pytest.approx(np.mean([r["waf"] for r in rows]))
    # JSON: meta, rows and the average
    with open(tmp_path / "ume.json") as f:
        data = json.load(f)
    assert len(data["rows"]) == len(rows) and data["average"] == pytest.approx(avg)
    for got, want in zip(data["rows"], rows):
        assert got == pytest.approx(want)
    assert {"dataset", "split", "mask_seed", "framework", "student_mixer", "strategy", "metrics"} <= set(data)
    # CSV: the columns, one row per rate, then the average
    with open(tmp_path / "ume.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["rate", "realised_rate", "waf", "acc", "n"]
    assert [r["rate"] for r in table] == [str(r) for r in EVAL_RATES] + ["average"]
    assert float(table[-1]["waf"]) == pytest.approx(avg["waf"], abs=1e-4)
    # the printed table, then the model beside the baselines on the same masks
    lines = res["table"].splitlines()
    assert lines[1].split() == ["rate", "realised", "WAF", "Acc"] and lines[len(rows) + 3].split()[0] == "average"
    assert lines[-1].split()[:2] == ["average", f"{avg['waf']:.2f}"]
    base = data["baselines"]
    assert set(base["rows"]) == {"majority", "logreg", "logreg_context", "gru"}
    for name, brows in base["rows"].items():
        assert [b["realised_rate"] for b in brows] == [r["realised_rate"] for r in rows], name
    assert len(list(tmp_path.glob("baselines-*.json"))) == 1  # kept: the next evaluation reads them back
    # the plots are PNGs
    for key in ("waf_plot", "confusion", "ecce"):
        with open(res["paths"][key], "rb") as f:
            assert f.read(8) == PNG, key
    # fixed-seed masks: the same numbers again
    again = protocols.ume(checkpoint, out_dir=str(tmp_path / "again"), rates=(0.3,), device="cpu", plots=False,
                          log=quiet, baselines=False)
    assert again["rows"][0] == rows[3]


def test_ume_regression_has_mae(tmp_path, tiny_keys):
    cfg = TrainConfig.from_dict({**tiny_keys, "syn_classes": 1, "out_dir": str(tmp_path / "r")})
    ck = training.train(cfg, log=quiet)["best"]
    res = protocols.ume(ck, out_dir=str(tmp_path), rates=(0.0, 0.5), device="cpu", log=quiet, baselines=False)
    assert all("mae" in r for r in res["rows"]) and "mae" in res["average"]
    with open(tmp_path / "ume.csv") as f:
        assert next(csv.reader(f)) == ["rate", "realised_rate", "waf", "acc", "mae", "n"]
    assert "confusion" not in res["paths"]  # no classes to confuse
    assert "MAE" in res["table"]


def test_ime_one_model_per_rate(tmp_path, tiny_keys):
    cfg = TrainConfig.from_dict({**tiny_keys, "out_dir": str(tmp_path)})
    res = protocols.ime(cfg, rates=(0.0, 0.4), log=quiet)
    assert [r["rate"] for r in res["rows"]] == [0.0, 0.4]
    for rate in ("0.0", "0.4"):
        ck = load_checkpoint(str(tmp_path / "ime" / f"rate_{rate}" / "best.pt"))
        assert ck["config"]["strategy"] == "fixed" and ck["config"]["rate"] == float(rate)
    with open(tmp_path / "ime" / "ime.json") as f:
        assert json.load(f)["average"]["rate"] == "average"
    assert os.path.isfile(tmp_path / "ime" / "ime.csv")


def test_data_gaps_report(checkpoint):
    net, _, splits, _ = load_for_eval(checkpoint, device="cpu")
    res = data_gaps(splits, net, log=quiet, config=BaselineConfig(epochs=2, hidden=8))
    models = {r["model"] for r in res["rows"]}
    assert models == {"student", "teacher", "logreg", "logreg_context", "gru", "majority"}
    assert all(0 <= r["waf"] <= 100 for r in res["rows"] if r["n"])
    student = [r for r in res["rows"] if r["model"] == "student"]
    # complete data once, each modality subset the paper's masks leave, each outage
    assert [r["section"] for r in student] == ["context"] + ["kept"] * 7 + ["outage"] * 6


# ----------------------------------------------------------------------------- plots

def test_plots_are_pngs(tmp_path, checkpoint, tiny_keys):
    rows = [{"rate": r, "waf": 50 - 10 * r} for r in (0.0, 0.3, 0.7)] + [{"rate": "average", "waf": 46.7}]
    p1 = plots.waf_vs_rate({"a": rows, "b": rows[:2]}, str(tmp_path / "x" / "waf.png"))
    p2 = plots.confusion_grid({0.0: np.eye(3) * 4, 0.5: np.ones((3, 3))}, ["a", "b", "c"], str(tmp_path / "cm.png"))
    net, _, splits, _ = load_for_eval(checkpoint, device="cpu")
    p3 = plots.ecce_heatmap(net, splits.test, str(tmp_path / "ecce.png"))
    for p in (p1, p2, p3):
        with open(p, "rb") as f:
            assert f.read(8) == PNG
    E = plots.ecce_bias_of(net, splits.test[0])
    n = len(splits.test[0]["labels"])
    assert E.shape == (tiny_keys["heads"], n, n) and torch.isfinite(E).all()


def _heatmap_case(seed: int, n: int = 9, **options):
    """A small net with ``options`` and one random conversation of ``n`` utterances for it."""
    from iteach_fast.nn.model import ITEACHNet

    g = torch.Generator().manual_seed(seed)
    dims = (6, 4, 5)
    net = ITEACHNet(dims, 3, dim=8, heads=2, max_len=12, dist=3, **options).eval()
    conv = {m: torch.randn(n, d, generator=g).numpy() for m, d in zip(("text", "audio", "visual"), dims)}
    conv.update(id="c0", labels=np.zeros(n, dtype=np.int64))
    return net, conv


@pytest.mark.parametrize("mode", ["text", "all"])
def test_ecce_heatmap_of_an_early_fusion_model_reads_all_three_modalities(tmp_path, mode):
    """The heatmap's E is the student's text-stream ECCE bias on that stream's own input: with
    early fusion, the three modalities side by side (a first version fed the text alone)."""
    net, conv = _heatmap_case(5, early_fusion=mode)
    n = len(conv["labels"])
    E = plots.ecce_bias_of(net, conv)
    assert E.shape == (2, n, n) and torch.isfinite(E).all()
    moved = dict(conv, audio=conv["audio"] + 1.0)
    assert (plots.ecce_bias_of(net, moved) - E).abs().max() > 1e-5  # the audio reaches the text stream's ECCE
    with open(plots.ecce_heatmap(net, [conv], str(tmp_path / "ecce.png")), "rb") as f:
        assert f.read(8) == PNG


def test_ecce_heatmap_of_a_recurrent_model_reads_the_grus_output():
    """With ``recurrent`` the text ECCE reads the residual GRU's output: the heatmap's E is the
    bias the model computes (its forward's input to ECCE), not the bare projection's."""
    net, conv = _heatmap_case(6, recurrent=True)
    n = len(conv["labels"])
    E = plots.ecce_bias_of(net, conv)
    text = torch.as_tensor(conv["text"])[None]
    with torch.no_grad():
        x = net.student.recurrence[0](net.student.proj[0](text), torch.tensor([n]))
        torch.testing.assert_close(E, net.student.ecce[0].bias(x, torch.tensor([n]))[0])


# ----------------------------------------------------------------------------- the teacher (Table 1)

def test_teacher_is_evaluated_on_complete_data(checkpoint, tmp_path):
    net, _, splits, _ = load_for_eval(checkpoint, device="cpu")
    test = splits.test
    (row,) = ev.evaluate_rates(net, test, (0.0,), model="teacher")
    # by hand: the teacher's logits on the complete, padded conversations
    ys, ps = [], []
    with torch.no_grad():
        for conv in test:
            x = [torch.as_tensor(conv[m])[None] for m in ("text", "audio", "visual")]
            logits = net.teacher(*x, torch.tensor([len(conv["labels"])])).logits[0]
            ys.append(conv["labels"])
            ps.append(logits.argmax(-1).numpy())
    want = ev.compute_metrics(np.concatenate(ys), np.concatenate(ps))
    assert row["waf"] == pytest.approx(want["waf"]) and row["acc"] == pytest.approx(want["acc"])
    assert row["realised_rate"] == 0.0 and row["n"] == sum(len(c["labels"]) for c in test)
    with pytest.raises(ValueError, match=r"rates \[0.0, 0.5\].*complete data"):
        ev.evaluate_rates(net, test, (0.0, 0.5), model="teacher")
    with pytest.raises(ValueError, match="complete data only"):
        ev.predictions(net, test, {}, model="teacher")
    with pytest.raises(ValueError, match="model must be one of student, teacher"):
        ev.evaluate_rates(net, test, (0.0,), model="both")
    # the protocol and the command line
    res = protocols.ume(checkpoint, out_dir=str(tmp_path), device="cpu", model="teacher", log=quiet)
    assert [r["rate"] for r in res["rows"]] == [0.0] and res["rows"][0]["waf"] == pytest.approx(row["waf"])
    with open(tmp_path / "teacher.json") as f:
        assert json.load(f)["model"] == "teacher"
    assert not os.path.exists(tmp_path / "ume.json")


def test_evaluate_model_teacher_on_the_command_line(checkpoint, tmp_path, capsys):
    rc = cli.main(["evaluate", checkpoint, "--model", "teacher", "--device", "cpu", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("teacher on complete data") and "teacher.json" in out
    rc = cli.main(["evaluate", checkpoint, "--model", "teacher", "--rates", "0,0.3", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "rates [0.0, 0.3]" in err and "complete data only" in err


def test_teacher_of_pre_is_the_student_on_complete_data():
    net = ITEACHNet((6, 4, 5), 4, framework="pre", dim=8, heads=2, max_len=8, dist=4, conv_kernel=3).eval()
    splits = make_synthetic(SyntheticSpec(num_conversations=8, min_len=3, max_len=8, dims=(6, 4, 5)))
    teacher = ev.evaluate_rates(net, splits.test, (0.0,), model="teacher")
    student = ev.evaluate_rates(net, splits.test, (0.0,))
    assert teacher == student
    h = ev.hidden_features(net, splits.test, None)
    n = splits.test.num_utterances()
    assert h["teacher"].shape == (n, 8) and h["labels"].shape == (n,)
    np.testing.assert_array_equal(h["teacher"], h["student"])  # one model, the same complete input


def test_hidden_features_follow_the_masks(checkpoint):
    net, _, splits, _ = load_for_eval(checkpoint, device="cpu")
    test = splits.test
    full = ev.hidden_features(net, test, None)
    masked = ev.hidden_features(net, test, masking.fixed_masks(test, 0.7, 0))
    np.testing.assert_array_equal(full["teacher"], masked["teacher"])  # the teacher always sees complete data
    assert np.abs(full["student"] - masked["student"]).mean() > 0
    y, _, _ = ev.predictions(net, test, None)
    np.testing.assert_array_equal(full["labels"], y)
