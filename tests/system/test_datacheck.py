"""Tests of iteach_fast.data.check: the synthetic conversations exported in GCNet's layout load
back unchanged through the real-data loader (IEMOCAP's five folds, MOSI's splits), train end
to end through the command line with ``--select-on test``, and ``check-data`` names the file
of each defect seeded into an export."""
import os
import pickle
import re
import shutil

import numpy as np
import pytest

from iteach_fast import cli
from iteach_fast.data.check import check_data, export_synthetic
from iteach_fast.data.gcnet import load_gcnet
from iteach_fast.data.sources import load_dataset, splits_for, synthetic_spec
from iteach_fast.training.config import TrainConfig

SYN = dict(syn_conversations=12, syn_min_len=3, syn_max_len=8, syn_dims=(6, 4, 5), seed=2)
TINY_FLAGS = ["--dim", "8", "--heads", "2", "--max-len", "8", "--dist", "4", "--conv-kernel", "3",
              "--teacher-layers", "1", "--student-layers", "1", "--batch-size", "4", "--select-rates", "0,0.5",
              "--epochs", "1", "--no-progress", "--threads", "1"]
TEXT, AUDIO, VISUAL = "deberta-large-4-UTT", "wav2vec-large-c-UTT", "manet_UTT"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("export") / "iemocap")
    return root, export_synthetic(root, "iemocap4", synthetic_spec(TrainConfig.from_dict(SYN)))


@pytest.fixture
def copy(export, tmp_path):
    """A fresh copy of the export and its label pickle's tuple (to corrupt)."""
    root = str(tmp_path / "data")
    shutil.copytree(export[0], root)
    with open(os.path.join(root, "IEMOCAP_features_raw_4way.pkl"), "rb") as f:
        return root, list(pickle.load(f))


def test_export_iemocap_loads_back_unchanged_in_every_fold(export):
    root, info = export
    assert info["dialogues"] == 12 and set(info["splits"]) == {f"Session {k}" for k in range(1, 6)}
    with open(info["label_file"], "rb") as f:
        ids, labels, speakers, sentences, train_v, test_v = pickle.load(f)
    assert all(v.startswith("Ses05") for v in test_v) and not any(v.startswith("Ses05") for v in train_v)
    assert set(speakers["Ses01F_impro00"]) <= {"F", "M"} and len(sentences) == 12
    original = splits_for(TrainConfig.from_dict({**SYN, "syn_classes": 4}))
    by_labels = {}
    for conv in list(original.train) + list(original.valid) + list(original.test):
        by_labels.setdefault(conv["text"].tobytes(), conv)
    for fold in range(1, 6):
        s = load_gcnet("iemocap4", root, fold=fold)
        assert s.input_dims == (6, 4, 5) and {c["id"][:5] for c in s.test} == {f"Ses0{fold}"}
        assert not any(c["id"].startswith(f"Ses0{fold}") for c in list(s.train) + list(s.valid))
        for conv in s.test:
            src = by_labels[conv["text"].tobytes()]  # the same features, labels and speakers
            np.testing.assert_array_equal(conv["audio"], src["audio"])
            np.testing.assert_array_equal(conv["visual"], src["visual"])
            np.testing.assert_array_equal(conv["labels"], src["labels"])
            np.testing.assert_array_equal(conv["speakers"], src["speakers"])
    assert check_data("iemocap4", root).ok


def test_export_mosi_keeps_the_synthetic_splits(tmp_path):
    info = export_synthetic(str(tmp_path / "mosi"), "cmumosi", synthetic_spec(TrainConfig.from_dict(SYN)))
    s = load_dataset("cmumosi", data_root=str(tmp_path / "mosi"))
    original = splits_for(TrainConfig.from_dict({**SYN, "syn_classes": 1}))
    assert [c["id"] for c in s.test] == sorted(c["id"] for c in original.test)
    assert s.task == "regression" and info["splits"] == {"train": 8, "valid": 1, "test": 3}
    report = check_data("cmumosi", str(tmp_path / "mosi"))
    assert report.ok and "negative / zero / positive" in report.text()
    with open(info["label_file"], "rb") as f:
        table = list(pickle.load(f))
    table[4] = table[4] + table[6][:1]  # a test video also in train
    with open(info["label_file"], "wb") as f:
        pickle.dump(tuple(table), f)
    report = check_data("cmumosi", str(tmp_path / "mosi"))
    assert not report.ok and "CMUMOSI_features_raw_2way.pkl: 1 dialogue(s) are in both the train and the test" \
        in report.problems[0]
    with pytest.raises(ValueError, match="not empty.*--overwrite"):
        export_synthetic(str(tmp_path / "mosi"), "cmumosi")


def test_export_then_train_select_on_test_through_the_cli(tmp_path, capsys):
    root = str(tmp_path / "iem")
    rc = cli.main(["export-synthetic", "--layout", "gcnet", root, "--syn-conversations", "10", "--syn-min-len", "3",
                   "--syn-max-len", "8", "--syn-dims", "6,4,5"])
    out = capsys.readouterr().out
    assert rc == 0 and "10 dialogues" in out and "Session 5" in out
    rc = cli.main(["train", "--dataset", "iemocap4", "--data-root", root, "--select-on", "test", "--fold", "3",
                   "--out-dir", str(tmp_path / "run"), *TINY_FLAGS])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "model selection on the test session (Session 3)" in out and "best checkpoint" in out
    rc = cli.main(["check-data", "--dataset", "iemocap4", "--data-root", root])
    out = capsys.readouterr().out
    assert rc == 0 and "result: OK" in out and "class balance (happy / sad / neutral / angry)" in out
    assert "Session 5" in out and "dim 6" in out


def _save(path, array):
    np.save(path, array)


def _write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def _dump(root, table):
    with open(os.path.join(root, "IEMOCAP_features_raw_4way.pkl"), "wb") as f:
        pickle.dump(tuple(table), f)


def _feature(root, folder, uid, ext=".npy"):
    return os.path.join(root, "features", folder, uid + ext)


# each defect: (how to seed it into (root, table, an utterance id, a dialogue id), a regex its message matches)
DEFECTS = {
    "missing file": (lambda root, t, uid, vid: os.remove(_feature(root, TEXT, uid)),
                     lambda root, uid, vid: re.escape(_feature(root, TEXT, uid, "*: expected exactly one"))),
    "NaN": (lambda root, t, uid, vid: _save(_feature(root, AUDIO, uid), np.array([1.0, np.nan, 0.0, 2.0], "f4")),
            lambda root, uid, vid: re.escape(_feature(root, AUDIO, uid)) + ": .*(NaN|finite)"),
    "inf": (lambda root, t, uid, vid: _save(_feature(root, VISUAL, uid), np.array([1, np.inf, 0, 2, 1], "f4")),
            lambda root, uid, vid: re.escape(_feature(root, VISUAL, uid)) + ": .*(inf|finite)"),
    "wrong dim": (lambda root, t, uid, vid: _save(_feature(root, VISUAL, uid), np.ones(7, "f4")),
                  lambda root, uid, vid: re.escape(_feature(root, VISUAL, uid)) + ": visual feature dim 7, expected 5"),
    "unreadable": (lambda root, t, uid, vid: _write_text(_feature(root, TEXT, uid), "x"),
                   lambda root, uid, vid: re.escape(_feature(root, TEXT, uid)) + ": cannot read"),
    "empty conversation": (lambda root, t, uid, vid: ([t[k].__setitem__(vid, []) for k in range(3)], _dump(root, t)),
                           lambda root, uid, vid: f"IEMOCAP_features_raw_4way.pkl: dialogue '{vid}' is empty"),
    "label out of range": (lambda root, t, uid, vid: (t[1].__setitem__(vid, [7] * len(t[1][vid])), _dump(root, t)),
                           lambda root, uid, vid: f"dialogue '{vid}', utterance .*: label 7 lies outside the class"),
    "missing folder": (lambda root, t, uid, vid: shutil.rmtree(os.path.join(root, "features", AUDIO)),
                       lambda root, uid, vid: "audio feature folder not found; tried .*wav2vec-large-c-UTT"),
    "no session 2": (lambda root, t, uid, vid: (
        [d.pop(v) for d in t[:4] for v in list(d) if v.startswith("Ses02")],
        t.__setitem__(4, [v for v in t[4] if not v.startswith("Ses02")]), _dump(root, t)),
        lambda root, uid, vid: "no dialogue id starts with 'Ses02': fold 2"),
    "bad pickle": (lambda root, t, uid, vid: _dump(root, t[:3]),
                   lambda root, uid, vid: "IEMOCAP_features_raw_4way.pkl: expected a tuple"),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_check_data_names_the_file_of_each_defect(defect, copy, capsys):
    root, table = copy
    vid = "Ses01F_impro00"
    uid = table[0][vid][1]
    seed, message = DEFECTS[defect]
    seed(root, table, uid, vid)
    report = check_data("iemocap4", root)
    assert not report.ok
    assert any(re.search(message(root, uid, vid), p) for p in report.problems), report.problems
    rc = cli.main(["check-data", "--dataset", "iemocap4", "--data-root", root])
    out = capsys.readouterr().out
    assert rc == 1 and "problem(s): fix them before training" in out


def test_check_data_names_extra_files_as_warnings(copy):
    root, _ = copy
    np.save(os.path.join(root, "features", TEXT, "Ses09X_unknown_F000.npy"), np.ones(6, "f4"))
    os.makedirs(os.path.join(root, "features", VISUAL, "stray_folder"))
    report = check_data("iemocap4", root)
    assert report.ok  # GCNet's IEMOCAP folders hold more utterances than the four-class set uses
    text = report.text()
    assert "Ses09X_unknown_F000.npy" in text and "stray_folder" in text and "match no utterance" in text


def test_check_data_of_a_folder_without_a_label_pickle(tmp_path):
    report = check_data("iemocap6", str(tmp_path))
    assert not report.ok and "label pickle" in report.problems[0] and str(tmp_path) in report.problems[0]
    assert not check_data("iemocap6", str(tmp_path / "nowhere")).ok
