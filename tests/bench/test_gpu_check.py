"""The GPU check's dry run (``bench/gpu_check.sh --dry``), as CI can run it: no GPU, and
scikit-learn and tqdm hidden (``--hide``, bench/hide_modules) as on a GPU machine that lacks them.
Every stage runs in order or says why not; the benchmarks reach the headline rows at smoke sizes;
every key GPU test is collected by its node id; the folder holds what a device session brings
back (at most 8 files) and the summary names the missing modules."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from bench import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ORDER = ["preflight", "build", "build-check", "install", "imports", "headline", "gpu-tests-key", "kernel-resources",
         "syncs", "gpu-tests-rest", "compiled-step", "bench-rest", "tests-rest", "report"]


def _stages(summary: str) -> dict[str, str]:
    """``{stage: status}`` from summary.txt's stage table, in order."""
    stages = {}
    for line in summary.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ORDER:
            stages[parts[0]] = parts[1]
    return stages


@pytest.mark.skipif(os.environ.get("ITEACH_FAST_IN_GPU_CHECK") == "1", reason="inside the GPU check itself")
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_dry_run_with_scikit_learn_and_tqdm_hidden(tmp_path):
    out = tmp_path / "gpu-check"
    env = {**os.environ, "PYTHON": sys.executable, "TOTAL_S": "400"}
    env.pop("TRITON_INTERPRET", None)  # as a user runs it
    run = subprocess.run(["bash", "bench/gpu_check.sh", "--dry", "--hide", "sklearn,tqdm", str(out)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    summary = (out / "summary.txt").read_text()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    stages = _stages(summary)
    assert list(stages) == ORDER, summary
    assert all(status in ("passed", "skipped") for status in stages.values()), summary
    assert stages["headline"] == "passed" and stages["gpu-tests-key"] == "passed", summary
    assert "MISSING sklearn" in summary and "MISSING tqdm" in summary, summary
    assert "on a device:" in summary  # each dry stage says what it would run there
    # the headline reached at smoke sizes: the eager reference of every headline op ran
    [result] = [p for p in out.glob("*.json") if p.name != "kernel-resources.json"]
    rows = json.loads(result.read_text())["rows"]
    ok = {(r["op"], r["provider"]) for r in rows if r["status"] == "ok" and r["headline"]}
    assert {("ecce_attention", "reference"), ("routed_mixture", "cpp"), ("iteach_net", "reference"),
            ("iteach_net", "auto")} <= ok, sorted(ok)
    assert not [r for r in rows if r["status"] == "failed"], [r for r in rows if r["status"] == "failed"]
    # every key GPU test collected by its node id (a renamed test, or a module that no longer
    # imports without scikit-learn, shows here rather than on the device)
    log = (out / "log.txt").read_text()
    key_log = log.split("================ gpu-tests-key", 1)[1].split("================ ", 1)[0]
    collected = set(key_log.splitlines())
    for node in gpu_check.KEY_TESTS:  # a parametrised test is collected under its ids
        assert node in collected or any(c.startswith(node + "[") for c in collected), \
            f"{node} not collected:\n{key_log[-3000:]}"
    [counts] = re.findall(r"^\d+ tests? collected.*$", key_log, re.M)
    assert "error" not in counts, key_log[-3000:]
    kernel = json.loads((out / "kernel-resources.json").read_text())
    assert kernel["complete"] and kernel["triton"] and all("error" not in r for r in kernel["triton"])
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files  # what a device session brings back
    assert {"summary.txt", "log.txt", "kernel-resources.json", "kernel-resources.md"} <= {p.name for p in files}
