"""Issue 24, the data tier: hostile and broken data folders are refused by the loader and named
by check-data, in the data tier that owns each rule — every feature array checked after its
cast to float32 (empty, NaN, ±inf), label pickles read with a restricted unpickler, each
dialogue and utterance id once, folds checked before any feature file is read, and an export
that its own check-data accepts (or a clear refusal). Each test failed before the fix."""
import os
import pickle
import shutil

import numpy as np
import pytest

from iteach_fast import cli
from iteach_fast.data import gcnet
from iteach_fast.data.check import check_data, export_synthetic
from iteach_fast.data.dataset import DataError, checked_features
from iteach_fast.data.gcnet import load_gcnet
from iteach_fast.data.sources import synthetic_spec
from iteach_fast.data.synthetic import SyntheticSpec, make_synthetic
from iteach_fast.files import OutputError
from iteach_fast.training.config import TrainConfig

SYN = dict(syn_conversations=10, syn_min_len=3, syn_max_len=6, syn_dims=(6, 4, 5), seed=3)
LABELS = "IEMOCAP_features_raw_4way.pkl"
TEXT = os.path.join("features", "deberta-large-4-UTT")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("export") / "iemocap")
    export_synthetic(root, "iemocap4", synthetic_spec(TrainConfig.from_dict(SYN)))
    return root


@pytest.fixture
def copy(export, tmp_path):
    """A fresh copy of the export and its label pickle's tuple (to corrupt)."""
    root = str(tmp_path / "data")
    shutil.copytree(export, root)
    with open(os.path.join(root, LABELS), "rb") as f:
        return root, list(pickle.load(f))


def _dump(root, table):
    with open(os.path.join(root, LABELS), "wb") as f:
        pickle.dump(tuple(table), f)


def _refused_by_both(root, *words):
    """The loader raises a DataError, check-data lists a problem, each holding every word."""
    with pytest.raises(DataError) as err:
        load_gcnet("iemocap4", root)
    report = check_data("iemocap4", root)
    found = [p for p in report.problems if all(w in p for w in words)]
    assert all(w in str(err.value) for w in words), (words, str(err.value))
    assert not report.ok and found, (words, report.problems)


# ------------------------------------------------------------------ every array checked after its cast

def test_an_empty_feature_file_is_refused_naming_it(copy):
    """A (0, d) .npy averaged over time was a silent NaN vector: check-data passed it, training
    ran on it."""
    root, table = copy
    uid = table[0]["Ses01F_impro00"][1]
    path = os.path.join(root, TEXT, uid + ".npy")
    np.save(path, np.zeros((0, 6), np.float32))
    _refused_by_both(root, path, "empty", uid)


def test_features_that_overflow_float32_are_refused_after_the_cast():
    """1e300 is finite as float64 and inf as float32, the dtype the model computes in."""
    x = np.array([[0.5, 1.0], [1e300, 2.0]])
    with pytest.raises(DataError, match=r"x\.npy: utterance 1 holds NaN or infinite values as float32 .*beyond "
                                        r"float32's range"):
        checked_features(x, "x.npy", row="utterance")
    with pytest.raises(DataError, match="empty"):
        checked_features(np.zeros((0, 3)), "y.npy")
    assert checked_features(np.arange(3), "z").dtype == np.float32


def test_an_fp16_run_checks_the_features_as_float16():
    splits = make_synthetic(SyntheticSpec(num_conversations=6, min_len=2, max_len=4, dims=(3, 2, 2)))
    splits.check_dtype(np.float16)  # the synthetic features fit
    splits.test.conversations[0]["audio"][1, 0] = 1e5  # finite in float32, inf in float16
    with pytest.raises(DataError, match=r"test conversation '.*', audio: utterance 1 holds NaN or infinite values as "
                                        r"float16"):
        splits.check_dtype(np.float16)


# ------------------------------------------------------------------ pickles from users' folders

class _Shell:
    """What a hostile label file holds: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_label_pickle_that_runs_a_command_is_refused_and_runs_nothing(copy, tmp_path, capsys):
    root, table = copy
    marker = tmp_path / "pwned"
    table[3] = {**table[3], "Ses01F_impro00": _Shell(marker)}  # videoSentences: never even read
    _dump(root, table)
    _refused_by_both(root, LABELS, "system", "refused")
    rc = cli.main(["check-data", "--dataset", "iemocap4", "--data-root", root])
    assert rc == 1 and "refused" in capsys.readouterr().out
    assert not marker.exists()


def test_the_restricted_unpickler_reads_what_gcnet_label_files_hold(tmp_path):
    """Numpy arrays and scalars, sets, an ordered dict, Python 2's protocol-2 pickles (latin1)."""
    from collections import OrderedDict
    value = (OrderedDict(a=["a_1"]), {"a": np.array([1, 2])}, {"a": ["M"]}, {"a": [b"x"]}, {"a", "b"},
             [np.float64(2.5), np.int64(3)])
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        with open(path, "rb") as f:
            got = gcnet.LabelUnpickler(f, encoding="latin1").load()
        assert got[0] == value[0] and got[4] == value[4] and list(got[1]["a"]) == [1, 2] and got[5] == value[5]


# ------------------------------------------------------------------ each dialogue and utterance id once

def test_an_utterance_id_in_two_dialogues_is_refused(copy):
    """Two dialogues naming one utterance read one feature file: with one in training and one
    in the test session, a leak."""
    root, table = copy
    a, b = "Ses01F_impro00", "Ses05F_impro00"
    table[0][b] = [table[0][a][0]] + table[0][b][1:]
    _dump(root, table)
    _refused_by_both(root, repr(table[0][a][0]), "dialogue 'Ses01F_impro00' and 'Ses05F_impro00'")


def test_a_dialogue_listed_twice_is_refused(copy):
    root, table = copy
    first = sorted(table[4])[0]
    table[4] = sorted(table[4]) + [first]  # a list (GCNet's files hold sets, which cannot repeat an id)
    _dump(root, table)
    _refused_by_both(root, "listed more than once in the train split", repr(first))


def test_an_empty_dialogue_is_one_clear_error(copy):
    root, table = copy
    for k in range(4):
        table[k]["Ses02F_impro00"] = []
    _dump(root, table)
    _refused_by_both(root, "dialogue 'Ses02F_impro00' is empty")


def test_a_fold_outside_the_sessions_is_refused_before_any_feature_file_is_read(copy, monkeypatch):
    root, _ = copy

    def read(*_a, **_k):
        raise AssertionError("a feature file was read before the error")
    monkeypatch.setattr(gcnet, "utterance_feature", read)
    with pytest.raises(ValueError, match="--fold 7: iemocap4's folds are its sessions 1..5"):
        load_gcnet("iemocap4", root, fold=7)
    with pytest.raises(ValueError, match="--fold 7"):
        TrainConfig.from_dict({"dataset": "iemocap4", "data_root": root, "fold": 7}).validate()
    TrainConfig.from_dict({"dataset": "cmumosi", "fold": 7}).validate()  # one split: any fold reads it


# ------------------------------------------------------------------ an export its own check-data accepts

@pytest.mark.parametrize("dataset,least", [("iemocap4", 5), ("cmumosi", 6)])
def test_export_refuses_too_few_conversations_and_the_least_it_takes_checks_ok(tmp_path, dataset, least):
    spec = synthetic_spec(TrainConfig.from_dict({**SYN, "syn_conversations": 3}))
    with pytest.raises(ValueError, match=f"--syn-conversations 3: {dataset}'s layout needs"):
        export_synthetic(str(tmp_path / "few"), dataset, spec)
    assert not (tmp_path / "few").exists()  # nothing written
    with pytest.raises(ValueError, match=f"use {least} or more" if dataset == "cmumosi" else "at least 5"):
        export_synthetic(str(tmp_path / "few"), dataset, synthetic_spec(TrainConfig.from_dict(
            {**SYN, "syn_conversations": least - 1})))
    root = str(tmp_path / "least")
    export_synthetic(root, dataset, synthetic_spec(TrainConfig.from_dict({**SYN, "syn_conversations": least})))
    report = check_data(dataset, root)
    assert report.ok, report.problems


def test_export_overwrite_replaces_only_a_previous_export(tmp_path, export):
    spec = synthetic_spec(TrainConfig.from_dict(SYN))
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="thesis.tex.*replaces a previous export only"):
        export_synthetic(str(folder), "iemocap4", spec, overwrite=True)
    assert (folder / "thesis.tex").read_text() == "years of work"
    again = tmp_path / "again"
    shutil.copytree(export, again)
    export_synthetic(str(again), "iemocap4", spec, overwrite=True)  # a previous export: replaced
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(OutputError, match="DIR .*afile: is a file; expected a folder"):
        export_synthetic(str(afile), "iemocap4", spec)
