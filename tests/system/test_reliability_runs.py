"""Issue 24, training and checkpoints: a loaded model is checked finite, a checkpoint of a newer
format is refused, a run folder's best.pt agrees with its last.pt on resume (repaired when a
run stopped between the two writes, refused otherwise, either said), a config key given both
nested and flat is an error naming both, and Ctrl-C during training prints one line with the
command that continues the run. Tiny models on the CPU; each test failed before the fix."""
import argparse
import os
import shlex
import shutil

import pytest
import torch

from iteach_fast import cli
from iteach_fast.nn.config import ConfigError
from iteach_fast.nn.model import ITEACHNet
from iteach_fast.training import checkpoint
from iteach_fast.training import loop as training
from iteach_fast.training.config import TrainConfig
from tests.system.helpers import quiet, run_main

DIMS = (6, 4, 5)


def one_line(err):
    """The one line of a refusal (notes about the machine before it aside)."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_data(monkeypatch):
    def read(_cfg):
        raise AssertionError("the data was read before the error")
    monkeypatch.setattr(training, "splits_for", read)
    monkeypatch.setattr(checkpoint, "splits_for", read)


def _checkpoint(path, tiny_keys, **extra):
    cfg = TrainConfig.from_dict({**tiny_keys, "syn_dims": DIMS})
    net = ITEACHNet.from_config(cfg.model, DIMS, 4)
    checkpoint.save_checkpoint(str(path), model=net.state_dict(), config=cfg.to_dict(),
                               data={"name": "t", "input_dims": list(DIMS), "num_classes": 4,
                                     "class_names": ["a", "b", "c", "d"]}, **extra)
    return str(path)


def _scores(monkeypatch, wafs):
    it = iter(wafs)

    def fake(*_a, **_k):
        return [{"rate": 0.0, "realised_rate": 0.0, "waf": next(it), "acc": 0.0, "n": 1}]
    monkeypatch.setattr(training, "evaluate_rates", fake)


# ------------------------------------------------------------------ a loaded model is checked finite

def test_a_checkpoint_with_nan_weights_is_refused_where_it_is_loaded(tmp_path, capsys, tiny_keys, no_data):
    """It evaluated as 'average 11.69' (the argmax of NaN is class 0), exit 0."""
    path = _checkpoint(tmp_path / "nan.pt", tiny_keys)
    ck = checkpoint.load_checkpoint(path)
    ck["model"]["student.classifier.weight"][0, 0] = float("nan")
    torch.save(ck, path)
    with pytest.raises(checkpoint.CheckpointError, match=r"nan\.pt: 1 weight tensor\(s\) hold NaN or infinite "
                                                         r"values \(student\.classifier\.weight\)"):
        checkpoint.load_model(path, device="cpu")
    for argv in (["evaluate", path, "--device", "cpu", "--no-plots"],
                 ["predict", path, str(tmp_path / "in.npz"), "--device", "cpu"]):
        rc, _, err = run_main(argv, capsys)
        assert rc == 2 and "student.classifier.weight" in one_line(err)


def test_resuming_from_nan_weights_is_refused_before_any_data_is_read(tmp_path, capsys, tiny_keys, no_data):
    path = _checkpoint(tmp_path / "last.pt", tiny_keys, optimizer={}, rng={}, epoch=0, best_score=1.0, best_epoch=0,
                       history=[])
    ck = checkpoint.load_checkpoint(path)
    ck["model"]["teacher.proj.0.weight"].fill_(float("inf"))
    torch.save(ck, path)
    rc, _, err = run_main(["train", "--resume", path], capsys)
    assert rc == 2 and "teacher.proj.0.weight" in one_line(err)


def test_a_checkpoint_of_a_newer_format_is_refused(tmp_path, capsys, tiny_keys):
    path = _checkpoint(tmp_path / "future.pt", tiny_keys)
    ck = checkpoint.load_checkpoint(path)
    torch.save({**ck, "version": checkpoint.CHECKPOINT_VERSION + 1}, path)
    with pytest.raises(checkpoint.CheckpointError, match=r"future\.pt: written by a newer iteach-fast \(checkpoint "
                                                         rf"format {checkpoint.CHECKPOINT_VERSION + 1}"):
        checkpoint.load_checkpoint(path)
    rc, _, err = run_main(["evaluate", path, "--device", "cpu"], capsys)
    assert rc == 2 and "upgrade iteach-fast" in one_line(err)


# ------------------------------------------------------------------ a run folder's files agree

def test_resume_repairs_best_pt_after_a_stop_between_the_two_writes_of_an_epoch(tmp_path, monkeypatch, tiny):
    """Epoch 2 improves: last.pt of epoch 2 is written, then the run stops before best.pt is.
    The resume trusted the best.pt of epoch 1 left in the folder; now it repairs it from
    last.pt (which holds epoch 2) and says so."""
    _scores(monkeypatch, [40.0, 50.0])
    cfg = tiny(tmp_path, epochs=2)
    real, writes = checkpoint.save_checkpoint, []

    def stop_at_the_fourth(path, **payload):  # epoch 1: last, best; epoch 2: last, then the stop
        writes.append(path)
        if len(writes) == 4:
            raise KeyboardInterrupt
        return real(path, **payload)
    monkeypatch.setattr(training, "save_checkpoint", stop_at_the_fourth)
    with pytest.raises(training.Interrupted, match=r"continue with: iteach-fast train --resume .*last\.pt"):
        training.train(cfg, log=quiet)
    monkeypatch.setattr(training, "save_checkpoint", real)
    last = os.path.join(cfg.out_dir, "last.pt")
    assert checkpoint.load_checkpoint(os.path.join(cfg.out_dir, "best.pt"))["epoch"] == 0  # the stale one
    logged = []
    out = training.train(cfg, resume=last, log=logged.append)
    best = checkpoint.load_checkpoint(out["best"])
    assert out["best_epoch"] == 2 and best["epoch"] == 1
    held = checkpoint.load_checkpoint(last)["model"]
    assert all(torch.equal(held[k], best["model"][k]) for k in held)
    assert any("best.pt repaired" in line and "held epoch 1" in line for line in logged), logged


def test_resume_refuses_a_best_pt_of_another_epoch_that_cannot_be_repaired(tmp_path, monkeypatch, tiny):
    _scores(monkeypatch, [50.0, 40.0])
    cfg = tiny(tmp_path, epochs=2)
    training.train(cfg, log=quiet)
    last, best = (os.path.join(cfg.out_dir, n) for n in ("last.pt", "best.pt"))
    shutil.copyfile(last, best)  # best.pt now holds epoch 2; last.pt records epoch 1 as the best

    def read(_cfg):
        raise AssertionError("the data was read before the error")
    monkeypatch.setattr(training, "splits_for", read)
    with pytest.raises(checkpoint.CheckpointError, match=r"best\.pt: holds epoch 2, but .*last\.pt records epoch 1 "
                                                         r"as the best .*remove .*best\.pt"):
        training.train(cfg.replace(epochs=3), resume=last, log=quiet)


# ------------------------------------------------------------------ the config

def test_a_key_given_nested_and_flat_is_an_error_naming_both(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"key 'dim' is given twice, as model\.dim \(16\) and as dim \(32\)"):
        TrainConfig.from_dict({"model": {"dim": 16}, "dim": 32})
    assert TrainConfig.from_dict({"model": {"dim": 16}, "dim": 16}).model.dim == 16  # no disagreement
    path = tmp_path / "both.json"
    path.write_text('{"model": {"dim": 16}, "dim": 32}')
    rc, _, err = run_main(["train", "--config", str(path)], capsys)
    assert rc == 2 and "model.dim (16)" in one_line(err) and "dim (32)" in err


def test_a_config_file_changes_only_its_own_keys_of_a_commands_defaults(tmp_path):
    """A model: section replaced every model default of the command (demo's dim 32 became 128)."""
    path = tmp_path / "cfg.json"
    path.write_text('{"model": {"heads": 2}, "lr": 0.01}')
    cfg = cli.config_from_args(argparse.Namespace(config=str(path)), {"dim": 32, "epochs": 3})
    assert (cfg.model.dim, cfg.model.heads, cfg.lr, cfg.epochs) == (32, 2, 0.01, 3)


# ------------------------------------------------------------------ Ctrl-C says how to resume

def test_ctrl_c_prints_one_line_with_the_resume_command_that_continues_the_run(tmp_path, monkeypatch, capsys,
                                                                              tiny_flags):
    out_dir = str(tmp_path / "run")
    real, calls = training.evaluate_rates, []

    def interrupt_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(training, "evaluate_rates", interrupt_in_epoch_2)
    rc, _, err = run_main(["train", *tiny_flags, "--epochs", "3", "--out-dir", out_dir], capsys)
    line = one_line(err)
    assert rc == 130 and "interrupted" in line, line
    command = line.split("continue with: ")[1]
    assert command == f"iteach-fast train --resume {os.path.join(out_dir, 'last.pt')}"
    monkeypatch.setattr(training, "evaluate_rates", real)
    rc, _, _ = run_main(shlex.split(command)[1:], capsys)
    assert rc == 0 and checkpoint.load_checkpoint(os.path.join(out_dir, "last.pt"))["epoch"] == 2


def test_ctrl_c_before_the_first_epoch_says_there_is_nothing_to_resume(tmp_path, monkeypatch, capsys, tiny_flags):
    def interrupt(*_a, **_k):
        raise KeyboardInterrupt
    monkeypatch.setattr(training, "evaluate_rates", interrupt)
    rc, _, err = run_main(["train", *tiny_flags, "--out-dir", str(tmp_path / "run")], capsys)
    assert rc == 130 and "nothing to resume: run the same command again" in one_line(err)
