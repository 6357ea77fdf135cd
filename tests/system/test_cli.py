"""Tests of the command line (iteach_fast.cli): --help of every subcommand (each option described,
the choices of closed sets, no heavy import), --version, a tiny train + evaluate through the
console script, config files, resume, bad flags naming the argument, bench delegation, info."""
import argparse
import json
import os
import subprocess
import sys

import pytest

import iteach_fast
from iteach_fast import cli
from iteach_fast.choices import BACKENDS, DATASETS, ECCE_MODES, FRAMEWORKS, PRECISIONS, STRATEGIES
from iteach_fast.training.config import MODEL_KEYS, TRAIN_KEYS
from tests.system.helpers import run_main

SUBCOMMANDS = ("train", "evaluate", "ime", "demo", "bench", "info")


def console_script():
    """The installed ``iteach-fast`` next to this interpreter, else ``python -m iteach_fast``."""
    exe = os.path.join(os.path.dirname(sys.executable), "iteach-fast")
    return [exe] if os.path.isfile(exe) else [sys.executable, "-m", "iteach_fast"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_of_each_subcommand(command, capsys):
    rc, out, _ = run_main([command, "--help"], capsys)
    assert rc == 0 and out.startswith(f"usage: iteach-fast {command}")
    if command in ("train", "ime", "demo"):
        for flag in ("--epochs", "--strategy", "--framework", "--device", "--backend", "--dtype", "--config"):
            assert flag in out
    if command == "train":
        assert "--resume" in out and "--compile" in out and "--cuda-graphs" in out
    if command == "evaluate":
        assert "--checkpoint" in out and "--rates" in out and "--gaps" in out
    if command == "demo":
        assert "epochs=" in out  # the demo's own schedule is shown


def test_top_level_help_lists_commands(capsys):
    rc, out, _ = run_main(["--help"], capsys)
    assert rc == 0 and all(c in out for c in SUBCOMMANDS)
    rc, _, err = run_main([], capsys)
    assert rc == 2 and "COMMAND" in err
    rc, out, _ = run_main(["--version"], capsys)
    assert rc == 0 and out.strip() == f"iteach-fast {iteach_fast.__version__}"


def test_every_option_has_a_help_line_and_closed_sets_their_choices(capsys):
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {c.name for c in cli.COMMANDS}
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help and "\n" not in action.help, (name, action.dest)
    assert set(TRAIN_KEYS + MODEL_KEYS) <= set(cli.CONFIG_HELP)  # a new config field needs its line here
    _, out, _ = run_main(["train", "--help"], capsys)
    for flag, allowed in (("--dataset", DATASETS), ("--strategy", STRATEGIES), ("--framework", FRAMEWORKS),
                          ("--ecce", ECCE_MODES), ("--backend", BACKENDS), ("--dtype", PRECISIONS)):
        assert f"{flag} {{{','.join(allowed)}}}" in out, flag  # the choices, from iteach_fast.choices
    assert "(default: random)" in out and "the training missing rate" in out


def test_help_imports_no_training_evaluation_or_plotting(tmp_path):
    """``--help`` and ``train --help`` load neither the training loop, evaluation, reproduce,
    scikit-learn nor matplotlib (the commands import them when they run)."""
    heavy = ("iteach_fast.training.loop", "iteach_fast.evaluation", "iteach_fast.reproduce", "sklearn", "matplotlib")
    for argv in (["--help"], ["train", "--help"]):
        code = ("import sys, contextlib, io\nfrom iteach_fast import cli\n"
                f"with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit): cli.main({argv!r})\n"
                f"print([m for m in sys.modules if m.split('.')[0] in {heavy!r} or m.startswith({heavy!r})])")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and res.stdout.strip() == "[]", (argv, res.stdout, res.stderr)


def test_train_then_evaluate_through_the_console_script(tmp_path, tiny_flags):
    cfg = tmp_path / "cfg.json"  # a config file; flags override it (epochs 3 -> 1)
    cfg.write_text(json.dumps({"epochs": 3, "strategy": "random", "framework": "its"}))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = subprocess.run(console_script() + ["train", "--config", str(cfg), "--epochs", "1", "--out-dir", str(out),
                                               *tiny_flags], capture_output=True, text=True, env=env, timeout=300)
    assert train.returncode == 0, train.stderr
    assert "epoch   1/1" in train.stdout and "best checkpoint" in train.stdout
    ume = subprocess.run(console_script() + ["evaluate", str(out / "best.pt"), "--rates", "0", "0.7",
                                             "--no-plots", "--device", "cpu"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ume.returncode == 0, ume.stderr
    lines = ume.stdout.splitlines()
    assert lines[0].startswith("UME on synthetic-4class [test]")
    assert [ln.split()[0] for ln in lines[3:6]] == ["0.0", "0.7", "average"]
    with open(out / "ume.json") as f:
        assert [r["rate"] for r in json.load(f)["rows"]] == [0.0, 0.7]


def test_config_file_yaml_and_resume(tmp_path, capsys, tiny_flags):
    pytest.importorskip("yaml")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("epochs: 1\nstrategy: progressive\nsyn-dims: [6, 4, 5]\n")
    out = tmp_path / "run"
    rc, stdout, err = run_main(["train", "--config", str(cfg), "--out-dir", str(out), *tiny_flags], capsys)
    assert rc == 0, err
    from iteach_fast.training.checkpoint import load_checkpoint

    ck = load_checkpoint(str(out / "last.pt"))
    assert ck["config"]["strategy"] == "progressive" and ck["config"]["syn_dims"] == [6, 4, 5]
    # resume: the checkpoint's config, its folder, one more epoch
    rc, stdout, err = run_main(["train", "--resume", str(out / "last.pt"), "--epochs", "2", "--no-progress"], capsys)
    assert rc == 0, err
    assert "resumed from" in stdout and "epoch   2/2" in stdout
    assert load_checkpoint(str(out / "last.pt"))["epoch"] == 1


@pytest.mark.parametrize("argv,named", [
    (["train", "--strategy", "sometimes"], "--strategy"),
    (["train", "--framework", "xyz"], "--framework"),
    (["train", "--batch-size", "many"], "--batch-size"),
    (["train", "--syn-dims", "6,x,5"], "--syn-dims"),
    (["train", "--dtype", "fp8"], "--dtype"),
    (["train", "--backend", "cuda"], "--backend"),
    (["train", "--no-such-flag"], "--no-such-flag"),
    (["evaluate"], "--checkpoint"),
    (["evaluate", "--checkpoint", "x.pt", "--rates", "a,b"], "--rates"),
    (["demo", "--epochs", "1.5"], "--epochs"),
])
def test_bad_flags_name_the_argument(argv, named, capsys):
    rc, _, err = run_main(argv, capsys)
    assert rc == 2 and named in err, err


def test_bad_values_give_one_clear_line(tmp_path, capsys):
    rc, _, err = run_main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt")], capsys)
    assert rc == 2 and "missing.pt" in err and "not found" in err and "Traceback" not in err
    rc, _, err = run_main(["train", "--dtype", "bf16", "--device", "cpu", "--out-dir", str(tmp_path)], capsys)
    assert rc == 2 and "--dtype bf16" in err
    rc, _, err = run_main(["train", "--device", "gpu7", "--out-dir", str(tmp_path)], capsys)
    assert rc == 2 and "device 'gpu7'" in err
    rc, _, err = run_main(["train", "--dim", "10", "--heads", "4", "--out-dir", str(tmp_path)], capsys)
    assert rc == 2 and "divisible by heads" in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"epoch": 3}')
    rc, _, err = run_main(["train", "--config", str(bad)], capsys)
    assert rc == 2 and "unknown config keys ['epoch']" in err


def test_bench_delegates_to_the_suite(tmp_path, monkeypatch, capsys):
    # not there (an install without the repository): a clear error, no traceback
    monkeypatch.setattr(cli, "_repo_root", lambda: str(tmp_path))
    rc, _, err = run_main(["bench", "--quick"], capsys)
    assert rc == 2 and "benchmark suite is not present" in err
    # there: main(argv) gets the remaining arguments, its exit code is ours
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")
    (tmp_path / "bench" / "run.py").write_text(
        "import json, os, sys\n"
        "def main(argv):\n"
        "    open(os.path.join(os.path.dirname(__file__), 'argv.json'), 'w').write(json.dumps(argv))\n"
        "    return 3\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(main(sys.argv[1:]))\n")
    rc, _, err = run_main(["bench", "--quick", "--ops", "ecce_bias"], capsys)
    assert rc == 3, err
    assert json.loads((tmp_path / "bench" / "argv.json").read_text()) == ["--quick", "--ops", "ecce_bias"]


def test_info_lists_versions_device_and_backends(capsys):
    rc, out, _ = run_main(["info"], capsys)
    assert rc == 0
    for word in ("iteach_fast", "torch", "device", "backends on", "ecce_attention", "reference"):
        assert word in out
