"""Issue 12, training side: one test per reproduced problem — each failed before the fix.

Item 1: finite or stop (losses, gradients, loaders); item 2: typed configuration; item 3:
checkpoints that cannot lie (run lock, best.pt, validation, config vs weights, resume keys);
item 4: errors at the door (out-dir, rates, backend); item 7: one clear line and a non-zero
exit code for each bad value. Tiny models on the CPU, in this process."""
import math
import multiprocessing
import os
import pickle
import signal

import numpy as np
import pytest
import torch

from iteach_fast.data.dataset import DataError
from iteach_fast.data.gcnet import load_gcnet
from iteach_fast.nn.config import ConfigError
from iteach_fast.nn.model import ITEACHNet
from iteach_fast.ops import backends
from iteach_fast.training import checkpoint
from iteach_fast.training import loop as training
from iteach_fast.training.config import TrainConfig
from tests.system.helpers import one_line_error, quiet, run_main


@pytest.fixture
def no_data(monkeypatch):
    """Reading data fails the test: the error must come before it."""
    def read(_cfg):
        raise AssertionError("the data was read before the error")
    monkeypatch.setattr(training, "splits_for", read)


def _poison_loss(monkeypatch, at_call: int, how: str):
    """From the ``at_call``-th call of ITEACHNet.loss on: a NaN loss term, or a finite loss
    whose gradient is NaN."""
    real, calls = ITEACHNet.loss, [0]

    def loss(self, *args, **kw):
        out = dict(real(self, *args, **kw))
        calls[0] += 1
        if calls[0] >= at_call:
            if how == "loss":
                out["emo_student"] = out["emo_student"] * math.nan
            else:  # sqrt at 0: the value is 0, its derivative infinite (times 0: NaN)
                p = next(self.parameters())
                out["rec"] = out["rec"] + torch.sqrt((p - p.detach()).abs()).sum()
            out["emo"] = out["emo_teacher"] + out["emo_student"]
            out["total"] = out["emo"] + out["rec"]
        return out

    monkeypatch.setattr(ITEACHNet, "loss", loss)


# ------------------------------------------------------------------ item 1: finite or stop

@pytest.mark.parametrize("how,words", [("loss", ("non-finite loss", "emo_student nan")),
                                       ("grad", ("non-finite gradient", "student.proj.0.weight"))])
def test_item1_nonfinite_loss_or_gradient_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, how,
                                                                                   words, tiny):
    cfg = tiny(tmp_path, epochs=3)
    _poison_loss(monkeypatch, at_call=3, how=how)  # 2 steps per epoch: the first step of epoch 2
    with pytest.raises(training.TrainingDiverged) as err:
        training.train(cfg, log=quiet)
    msg = str(err.value)
    for w in ("epoch 2, step 3", "learning rates: weights 0.0005, router 0.005", "last.pt", *words):
        assert w in msg, (w, msg)
    for name in ("last.pt", "best.pt"):  # epoch 1's files, untouched
        ck = checkpoint.load_checkpoint(os.path.join(cfg.out_dir, name))
        assert ck["epoch"] == 0 and all(torch.isfinite(v).all() for v in ck["model"].values())


def _fake_mosi(root, labels=None, feature=None, test=("x",)):
    """A CMU-MOSI-layout folder: dialogues v, w, x; ``feature`` overrides one utterance's text feature."""
    ids = {"v": ["v_1", "v_2"], "w": ["w_1"], "x": ["x_1", "x_2"]}
    labels = labels or {"v": [1.2, -0.4], "w": [0.0], "x": [2.0, -3.0]}
    with open(os.path.join(root, "label.pkl"), "wb") as f:
        pickle.dump((ids, labels, {k: [""] * len(v) for k, v in ids.items()}, {}, ["v"], ["w"], list(test)), f)
    for m, d in (("text", 2), ("audio", 3), ("visual", 4)):
        os.makedirs(os.path.join(root, m))
        for uids in ids.values():
            for u in uids:
                np.save(os.path.join(root, m, u + ".npy"), np.ones(d, "f4"))
    for uid, value in (feature or {}).items():
        np.save(os.path.join(root, "text", uid + ".npy"), value)


def test_item1_loader_rejects_nan_features_naming_file_and_utterance(tmp_path):
    _fake_mosi(str(tmp_path), feature={"x_2": np.array([[0.5, np.nan], [1.0, 2.0]], "f4")})
    with pytest.raises(DataError, match=r"text/x_2\.npy: 1 of 4 feature values are NaN or infinite; utterance 'x_2'"):
        load_gcnet("cmumosi", str(tmp_path))


@pytest.mark.parametrize("name,labels,match", [
    ("cmumosi", {"v": [1.2, np.nan], "w": [0.0], "x": [2.0, -3.0]}, r"dialogue 'v', utterance 'v_2': label nan is "
                                                                     "not a finite number"),
    ("iemocap4", {"v": [1, 2.7], "w": [0], "x": [2, 3]}, r"utterance 'v_2': label 2.7 is not a class id"),
    ("iemocap4", {"v": [1, 4], "w": [0], "x": [2, 3]}, r"utterance 'v_2': label 4 lies outside the class ids 0..3"),
])
def test_item1_loader_rejects_nonfinite_and_float_class_labels(tmp_path, name, labels, match):
    root = str(tmp_path)
    _fake_mosi(root, labels=labels)
    if name == "iemocap4":  # the same dialogues in IEMOCAP's 6-tuple layout
        with open(os.path.join(root, "label.pkl"), "rb") as f:
            ids, lab, spk, sent, *_ = pickle.load(f)
        os.remove(os.path.join(root, "label.pkl"))
        with open(os.path.join(root, "label_4way.pkl"), "wb") as f:
            pickle.dump((ids, lab, spk, sent, ["v", "w"], ["x"]), f)
    with pytest.raises(DataError, match=match):
        load_gcnet(name, root)


def test_item1_loader_rejects_train_test_dialogue_overlap(tmp_path):
    _fake_mosi(str(tmp_path), test=("x", "v"))
    with pytest.raises(DataError, match=r"1 dialogue\(s\) are in both the train and the test split \(e.g. 'v'\)"):
        load_gcnet("cmumosi", str(tmp_path))


# ------------------------------------------------------------------ item 2: typed configuration

def test_item2_yaml_values_are_coerced_and_errors_name_key_file_and_type(tmp_path):
    pytest.importorskip("yaml")
    good = tmp_path / "good.yaml"
    good.write_text("lr: 5e-4\nepochs: '3'\nmodel:\n  dim: 16\n")  # PyYAML reads 5e-4 as a string
    cfg = TrainConfig.from_file(str(good))
    assert cfg.lr == 5e-4 and type(cfg.lr) is float and cfg.epochs == 3 and cfg.model.dim == 16
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: two\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: .*key 'epochs': expected an int, got 'two' \(str\)"):
        TrainConfig.from_file(str(bad))
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: 3\nlr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML at line 3"):
        TrainConfig.from_file(str(broken))


def test_item2_unknown_keys_and_wrong_types_are_reported_together(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text('{"epochs": "two", "dim": "wide", "epoch": 3, "dropout": null}')
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_file(str(path))
    msg = str(err.value)
    for w in ("cfg.json", "key 'epochs'", "key 'dim'", "key 'dropout'", "unknown config keys ['epoch']"):
        assert w in msg, (w, msg)


# ------------------------------------------------------------------ item 3: checkpoints that cannot lie

def _hold_lock(folder, ready):
    with checkpoint.run_lock(folder):
        ready.set()
        signal.pause()


def test_item3_a_second_run_into_a_locked_folder_fails_naming_the_holder_and_a_dead_holder_is_taken_over(
        tmp_path, no_data, tiny):
    cfg = tiny(tmp_path)
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(cfg.out_dir, ready), daemon=True)
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(checkpoint.RunDirBusy, match=rf"another run is writing there \(pid {holder.pid} on "
                                                        r".+, started \d{4}-\d\d-\d\dT"):
            training.train(cfg, log=quiet)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # dies holding the lock: the OS releases it
        holder.join(10)
    with checkpoint.run_lock(cfg.out_dir):  # taken over at once
        pass


def _scores(monkeypatch, wafs):
    """evaluate_rates returns the given WAFs, one per epoch."""
    it = iter(wafs)

    def fake(*_a, **_k):
        return [{"rate": 0.0, "realised_rate": 0.0, "waf": next(it), "acc": 0.0, "n": 1}]
    monkeypatch.setattr(training, "evaluate_rates", fake)


def test_item3_best_is_written_only_on_improvement_and_resume_carries_the_record(tmp_path, monkeypatch, tiny):
    _scores(monkeypatch, [50.0, 40.0, 45.0])
    first = training.train(tiny(tmp_path / "a", epochs=1), log=quiet)
    logged = []
    resumed = training.train(tiny(tmp_path / "b", epochs=3), resume=first["last"], log=logged.append)
    best = checkpoint.load_checkpoint(resumed["best"])
    assert resumed["best_epoch"] == 1 and best["epoch"] == 0 and best["best_score"] == 50.0
    a = checkpoint.load_checkpoint(first["best"])["model"]
    assert all(torch.equal(a[k], best["model"][k]) for k in a)  # the weights the log names
    assert "best epoch 1 (valid WAF 50.00)" in logged[-1]
    assert checkpoint.load_checkpoint(resumed["last"])["epoch"] == 2


def test_item3_empty_or_nan_validation_is_an_error(tmp_path, monkeypatch, tiny):
    with pytest.raises(ValueError, match="validation split .* has no utterances"):
        training.train(tiny(tmp_path, syn_conversations=4), log=quiet)  # round(0.1 * 4) = 0 valid conversations
    _scores(monkeypatch, [math.nan])
    with pytest.raises(ValueError, match="epoch 1: the validation WAF is nan"):
        training.train(tiny(tmp_path / "nan"), log=quiet)
    assert not os.path.exists(tmp_path / "nan" / "run" / "best.pt")


def _edited(src, dst, **config_changes) -> str:
    ck = checkpoint.load_checkpoint(str(src))
    ck["config"]["model"].update(config_changes)
    checkpoint.save_checkpoint(str(dst), **{k: v for k, v in ck.items() if k != "version"})
    return str(dst)


def test_item3_checkpoint_config_that_does_not_match_its_weights_lists_the_hyperparameters(tmp_path, capsys, tiny):
    out = training.train(tiny(tmp_path), log=quiet)
    bad = _edited(out["last"], tmp_path / "edited.pt", dim=16, student_layers=2)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load_for_eval(bad, device="cpu")
    for w in ("edited.pt: the weights do not match the config", "dim: config 16, weights 8",
              "student_layers: config 2, weights 1"):
        assert w in str(err.value)
    rc, _, err = run_main(["train", "--resume", bad, "--no-progress"], capsys)  # before any data is read
    one_line_error(rc, err, "edited.pt", "dim: config 16, weights 8")
    rc, _, err = run_main(["evaluate", bad, "--no-plots", "--device", "cpu"], capsys)
    one_line_error(rc, err, "edited.pt", "dim: config 16, weights 8")


def test_item3_resume_checkpoint_without_optimizer_or_rng_is_one_clear_error(tmp_path, capsys, tiny):
    out = training.train(tiny(tmp_path), log=quiet)
    ck = checkpoint.load_checkpoint(out["last"])
    stripped = str(tmp_path / "weights_only.pt")
    checkpoint.save_checkpoint(stripped, **{k: v for k, v in ck.items() if k not in ("version", "optimizer", "rng")})
    rc, _, err = run_main(["train", "--resume", stripped, "--no-progress"], capsys)
    one_line_error(rc, err, "weights_only.pt: cannot resume training: the checkpoint has no optimizer, rng")


# ------------------------------------------------------------------ item 4: errors at the door

def test_item4_unwritable_out_dir_fails_before_any_data_is_read(tmp_path, no_data, tiny):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"--out-dir .*a_file/run: not a writable folder"):
        training.train(tiny(tmp_path, out_dir=str(blocker / "run")), log=quiet)
    assert not list(tmp_path.glob("**/.write-probe-*"))


def test_item4_rates_are_checked_before_training(tmp_path, capsys, no_data, tiny_flags):
    rc, _, err = run_main(["train", *tiny_flags, "--select-rates", "0.0,1.5", "--out-dir", str(tmp_path)], capsys)
    one_line_error(rc, err, "select_rates", "1.5")
    rc, _, err = run_main(["ime", *tiny_flags, "--rates", "0.0,1.2", "--out-dir", str(tmp_path)], capsys)
    one_line_error(rc, err, "--rates 1.2", "rate must lie in [0, 1.0]")


def test_item4_backend_device_combination_is_checked_when_the_model_is_built(tmp_path, monkeypatch, capsys,
                                                                            no_data, tiny_flags):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # Triton on a CPU needs the interpreter
    backends.refresh()
    try:
        rc, _, err = run_main(["train", *tiny_flags, "--backend", "triton", "--device", "cpu",
                               "--out-dir", str(tmp_path)], capsys)
    finally:
        monkeypatch.undo()
        backends.refresh()
    one_line_error(rc, err, "--backend triton on cpu", "ecce_attention")


# ------------------------------------------------------------------ item 7: one clear line each

@pytest.mark.parametrize("flags,words", [
    (["--lr", "-1"], ("lr must be a finite number > 0", "-1")),
    (["--lr", "nan"], ("lr must be a finite number > 0", "nan")),
    (["--teacher-layers", "0"], ("teacher_layers",)),
    (["--heads", "0"], ("heads",)),
    (["--dim", "0"], ("dim",)),
    (["--threads", "-3"], ("threads must be an int >= 0", "-3")),
    (["--device", "meta"], ("device 'meta'",)),
])
def test_item7_bad_values_give_one_clear_line_and_a_nonzero_exit(tmp_path, capsys, no_data, flags, words, tiny_flags):
    rc, _, err = run_main(["train", *tiny_flags, "--out-dir", str(tmp_path), *flags], capsys)
    one_line_error(rc, err, *words)
