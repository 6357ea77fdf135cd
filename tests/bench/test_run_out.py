"""``python -m bench.run`` writes into a folder git ignores unless told otherwise: a benchmark run
leaves the checkout clean; ``--out bench/results`` still writes where committed results live."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_default_out_is_runs_bench_of_the_checkout():
    from bench import run

    assert os.path.relpath(run.parse_args([]).out, ROOT) == os.path.join("runs", "bench")
    out = os.path.join("bench", "results")
    assert run.parse_args(["--out", out]).out == out


@pytest.mark.skipif(shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")),
                    reason="not a git checkout")
def test_default_out_is_ignored_by_git():
    from bench import run

    probe = os.path.relpath(os.path.join(run.DEFAULT_OUT, "cpu-x-2026-01-01.json"), ROOT)
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", probe], cwd=ROOT)
    assert ignored.returncode == 0, f"{probe} is not ignored by git: a benchmark run would dirty the checkout"
    tracked = os.path.join("bench", "results", "cpu-x-2026-01-01.json")
    assert subprocess.run(["git", "check-ignore", "-q", "--no-index", tracked], cwd=ROOT).returncode == 1
