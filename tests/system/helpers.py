"""What the system tests share beside the fixtures of conftest.py: running the command line in
this process, what a refusal must look like, and loading a script of ``experiments/``."""
import importlib.util
import os

import pytest

from iteach_fast import cli


def quiet(*_args, **_kw):
    """A ``log`` that prints nothing."""


def run_main(argv, capsys):
    """``(exit code, stdout, stderr)`` of ``iteach-fast argv`` in this process."""
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse: --help and usage errors
        rc = e.code
    except KeyboardInterrupt:  # would stop the test session
        pytest.fail("KeyboardInterrupt escaped the command")
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *words):
    """A refusal: exit status 2 and one line (notes about the machine before it aside) holding every word."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note: ")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


def experiment(name: str):
    """The module ``experiments/<name>.py`` (a script folder, not a package), freshly loaded."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
