"""Issue 24, the commands: an output never overwrites an input and is checked writable before
any work (one helper, iteach_fast.files.check_output, behind every writer); every refusal is one
line naming the argument or file, before data is read; the processes a command starts end
with it. Each test failed before the fix (the slow ones kill a reproduce mid-run)."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

from iteach_fast import files
from iteach_fast import reproduce as rp
from iteach_fast.evaluation import predict, protocols
from iteach_fast.nn.model import ITEACHNet
from iteach_fast.nn.streaming import NoModalityWarning
from iteach_fast.ops import backends
from iteach_fast.reproduce import run as rp_run
from iteach_fast.training import checkpoint
from iteach_fast.training import loop as training
from iteach_fast.training.config import TrainConfig
from tests.system.helpers import one_line_error, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIMS = (6, 4, 5)


@pytest.fixture
def ckpt(tmp_path, tiny_keys):
    """A checkpoint of the tiny model (its config's data: 6/4/5-dim features) and an input .npz."""
    cfg = TrainConfig.from_dict({**tiny_keys, "syn_dims": DIMS})
    net = ITEACHNet.from_config(cfg.model, DIMS, 4)
    path = str(tmp_path / "best.pt")
    checkpoint.save_checkpoint(path, model=net.state_dict(), config=cfg.to_dict(),
                               data={"name": "t", "input_dims": list(DIMS), "num_classes": 4,
                                     "class_names": ["a", "b", "c", "d"]})
    arrays = {f"c0/{m}": np.random.randn(5, d).astype(np.float32) for m, d in zip(("text", "audio", "visual"), DIMS)}
    inputs = str(tmp_path / "in.npz")
    np.savez(inputs, **arrays)
    return path, inputs


@pytest.fixture
def no_predict_work(monkeypatch):
    """Loading the checkpoint fails the test: the refusal must come before it."""
    def load(*_a, **_k):
        raise AssertionError("the checkpoint was loaded before the error")
    monkeypatch.setattr(predict, "load_model", load)


# ------------------------------------------------------------------ outputs: never an input, writable, checked first

@pytest.mark.parametrize("which", ["checkpoint", "inputs"])
def test_predict_never_writes_over_its_checkpoint_or_its_input(ckpt, capsys, no_predict_work, which):
    """It exited 0 having replaced the checkpoint with CSV."""
    path, inputs = ckpt
    target = path if which == "checkpoint" else inputs
    before = open(target, "rb").read()
    rc, _, err = run_main(["predict", path, inputs, "--out", target, "--device", "cpu"], capsys)
    one_line_error(rc, err, "--out", target, "is also an input of this command")
    assert open(target, "rb").read() == before
    rc, _, err = run_main(["predict", path, inputs, "--out", os.path.join(os.path.dirname(target), ".",
                                                                          os.path.basename(target))], capsys)
    one_line_error(rc, err, "is also an input")  # the same file by another name


def test_predict_out_must_be_a_writable_file_path(ckpt, tmp_path, capsys, no_predict_work):
    path, inputs = ckpt
    afile = tmp_path / "afile"
    afile.write_text("")
    for out, words in ((str(tmp_path), "is a folder; expected a file path"),
                       (str(afile / "x.csv"), "not a writable file path")):
        rc, _, err = run_main(["predict", path, inputs, "--out", out, "--device", "cpu"], capsys)
        one_line_error(rc, err, "--out", out, words)


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing_half_written(ckpt, tmp_path, capsys,
                                                                                  monkeypatch):
    path, inputs = ckpt
    out = tmp_path / "pred.csv"
    out.write_text("the previous predictions\n")
    real_open = open

    def full(name, mode="r", *a, **k):
        if ".tmp" in str(name) and "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(name, mode, *a, **k)
    monkeypatch.setattr(files, "open", full, raising=False)
    rc, _, err = run_main(["predict", path, inputs, "--out", str(out), "--device", "cpu"], capsys)
    one_line_error(rc, err, str(out), "cannot write (No space left on device)")
    assert out.read_text() == "the previous predictions\n" and os.listdir(tmp_path).count("pred.csv") == 1
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


def test_evaluate_checks_its_output_folder_before_evaluating(ckpt, tmp_path, capsys, monkeypatch):
    """It evaluated everything, then failed with a traceback writing into a file."""
    path, _ = ckpt

    def load(*_a, **_k):
        raise AssertionError("evaluated before the output was checked")
    monkeypatch.setattr(protocols, "load_for_eval", load)
    afile = tmp_path / "afile"
    afile.write_text("")
    rc, _, err = run_main(["evaluate", path, "--out", str(afile), "--device", "cpu"], capsys)
    one_line_error(rc, err, "--out", str(afile), "is a file; expected a folder")
    rc, _, err = run_main(["evaluate", path, "--batch-size", "0", "--device", "cpu"], capsys)
    one_line_error(rc, err, "--batch-size must be >= 1")


def test_reproduce_and_export_check_their_folders_first(tmp_path, capsys, monkeypatch, tiny_flags):
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setattr(rp, "splits_for", lambda _cfg: pytest.fail("the data was read before the error"))
    rc, _, err = run_main(["reproduce", "table4", *tiny_flags, "--out-dir", str(afile / "x")], capsys)
    one_line_error(rc, err, "--out-dir", str(afile / "x"), "not a writable folder")
    rc, _, err = run_main(["export-synthetic", str(afile)], capsys)
    one_line_error(rc, err, str(afile), "is a file; expected a folder")
    assert afile.read_text() == ""


# ------------------------------------------------------------------ refusals: one line, before data

def test_predict_batch_size_below_one_is_refused_first(ckpt, capsys, no_predict_work):
    """--batch-size -1 wrote a CSV of the header alone, exit 0."""
    path, inputs = ckpt
    for size in ("-1", "0"):
        rc, _, err = run_main(["predict", path, inputs, "--batch-size", size], capsys)
        one_line_error(rc, err, "--batch-size must be an integer >= 1", size)


def test_predict_refuses_features_beyond_float32_naming_them(ckpt, tmp_path, capsys):
    """1e300 in a float64 file passed the check made before the cast: nan probabilities, exit 0."""
    path, _ = ckpt
    arrays = {f"c0/{m}": np.random.randn(5, d) for m, d in zip(("text", "audio", "visual"), DIMS)}
    arrays["c0/visual"][3, 1] = 1e300
    np.savez(tmp_path / "huge.npz", **arrays)
    rc, _, err = run_main(["predict", path, str(tmp_path / "huge.npz"), "--device", "cpu"], capsys)
    one_line_error(rc, err, "conversation 'c0', visual: utterance 3 holds NaN or infinite values as float32")


def test_predict_says_when_an_utterance_has_no_modality(ckpt, tmp_path):
    path, _ = ckpt
    arrays = {f"c0/{m}": np.random.randn(4, d).astype(np.float32) for m, d in zip(("text", "audio", "visual"), DIMS)}
    arrays["c0/present"] = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 0, 0]], bool)
    np.savez(tmp_path / "gaps.npz", **arrays)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        res = predict.predict_file(path, str(tmp_path / "gaps.npz"), device="cpu", log=lambda *_: None)
    said = [w for w in said if issubclass(w.category, NoModalityWarning)]
    assert len(said) == 1 and "2 utterance(s) have no modality present (e.g. conversation 'c0', utterance 1)" \
        in str(said[0].message)
    assert len(res["rows"]) == 4


@pytest.mark.parametrize("argv,words", [
    (["reproduce", "table4", "--seeds", ","], ("--seeds", "expected one or more int values", "','")),
    (["reproduce", "table4", "--folds", ","], ("--folds", "expected one or more int values")),
    (["ime", "--rates", ","], ("--rates", "expected one or more float values")),
    (["evaluate", "x.pt", "--rates", ","], ("--rates", "expected one or more float values")),
    (["train", "--epochs", "many"], ("--epochs", "expected an int")),
])
def test_empty_lists_and_usage_errors_are_one_line(argv, words, capsys, monkeypatch, tmp_path):
    """--seeds , silently ran the default seeds; ime --rates , was a traceback."""
    for module in (rp, training):
        monkeypatch.setattr(module, "splits_for", lambda _cfg: pytest.fail("the data was read before the error"))
    monkeypatch.chdir(tmp_path)  # the default output folders
    rc, _, err = run_main(argv, capsys)
    one_line_error(rc, err, *words, "(see iteach-fast")


def test_reproduce_refuses_a_precision_or_backend_the_device_lacks_before_reading_data(tmp_path, capsys,
                                                                                     monkeypatch, tiny_flags):
    """It read every feature file, failed every run, and wrote empty tables."""
    monkeypatch.setattr(rp, "splits_for", lambda _cfg: pytest.fail("the data was read before the error"))
    base = ["reproduce", "table4", *tiny_flags, "--device", "cpu", "--out-dir", str(tmp_path / "r")]
    rc, _, err = run_main([*base, "--dtype", "bf16"], capsys)
    one_line_error(rc, err, "--dtype bf16 needs a CUDA device")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # Triton on a CPU needs the interpreter
    backends.refresh()
    try:
        rc, _, err = run_main([*base, "--backend", "triton"], capsys)
    finally:
        monkeypatch.undo()
        backends.refresh()
    one_line_error(rc, err, "--backend triton on cpu")
    assert not os.path.exists(tmp_path / "r" / "runs")


def test_train_refuses_an_iemocap_fold_outside_the_sessions_before_reading_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(training, "splits_for", lambda _cfg: pytest.fail("the data was read before the error"))
    rc, _, err = run_main(["train", "--dataset", "iemocap4", "--data-root", str(tmp_path), "--fold", "7",
                           "--out-dir", str(tmp_path / "run")], capsys)
    one_line_error(rc, err, "--fold 7: iemocap4's folds are its sessions 1..5")


def test_a_result_json_without_student_is_measured_again_not_a_traceback(tmp_path, tiny_keys):
    cfg = TrainConfig.from_dict({**tiny_keys, "out_dir": str(tmp_path)})
    runs, _ = rp.plan(("table4",), cfg, (0,), (None,), str(tmp_path))
    run = next(iter(runs.values()))
    os.makedirs(run.folder)
    good = {"key": run.key, "result_version": rp.RESULT_VERSION, "config": {}, "seed": 0, "dataset": "d",
            "task": "classification", "student": [], "teacher": {}, "distance": []}
    with open(run.result_path, "w") as f:
        json.dump(good, f)
    assert rp_run.cached_result(run) == good
    for broken in ({k: v for k, v in good.items() if k != "student"}, [1, 2], {**good, "teacher": None}):
        with open(run.result_path, "w") as f:
            json.dump(broken, f)
        said = []
        assert rp_run.cached_result(run, said.append) is None
        assert len(said) == 1 and run.result_path in said[0] and "measured again" in said[0], said


# ------------------------------------------------------------------ every process a command starts ends with it

def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(condition, timeout: float, step: float = 0.2) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return True
        time.sleep(step)
    return condition()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_reproduce_jobs_workers_end_with_the_command(tmp_path, tiny_flags, how):
    """SIGTERM to `reproduce --jobs 2` left its workers training for minutes; SIGKILL orphaned
    them. Now SIGTERM stops them and says how to continue; a worker whose parent is gone stops."""
    out = tmp_path / "r"
    flags = list(tiny_flags)
    flags[flags.index("--epochs") + 1] = "100000"
    proc = subprocess.Popen([sys.executable, "-m", "iteach_fast", "reproduce", "table4", "--seeds", "0,1", "--jobs",
                             "2", *flags, "--device", "cpu", "--out-dir", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def training_in_both():
            logs = [os.path.join(out, "runs", k, "train.log") for k in
                    (os.listdir(out / "runs") if (out / "runs").is_dir() else [])]
            return sum(os.path.isfile(p) and "epoch" in open(p).read() for p in logs) == 2
        assert _wait(training_in_both, 240), proc.stderr.read() if proc.poll() is not None else "not started"
        workers = [p for p in _children(proc.pid) if _alive(p)]
        assert len(workers) >= 2
        proc.send_signal(getattr(signal, how))
        proc.wait(60)
        assert _wait(lambda: not any(_alive(p) for p in workers), 30), [p for p in workers if _alive(p)]
        if how == "SIGTERM":
            err = proc.stderr.read()
            assert proc.returncode == 130 and "Traceback" not in err, err
            last = [ln for ln in err.splitlines() if ln.strip()][-1]
            assert "interrupted: reproduce stopped (stopped by SIGTERM)" in last and "re-run the same command" in last
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_child_of_a_command_ends_when_the_command_is_terminated(tmp_path):
    """`iteach-fast bench` runs the suite as a child process: SIGTERM to the command reaches it."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        from iteach_fast import cli
        sys.exit(cli._child([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(300)"],
                            dict(os.environ)))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        (child,) = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert _wait(lambda: not _alive(child), 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
