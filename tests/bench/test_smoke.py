"""CI smoke run of the benchmark runner: the smallest sizes, no compilation, every kernel op,
JSON + Markdown + plots written. Checks the instrument runs end to end, not any speed."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytest.importorskip("matplotlib")


def test_bench_smoke_run(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "bench", "run.py"), "--smoke", "--no-compile", "--sizes", "2x16",
           "--ops", "ecce_bias,ecce_attention,ecce_prefix,routed_mixture", "--out", str(tmp_path)]
    # the package importable from this checkout even where it is not pip-installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [path] = list(tmp_path.glob("smoke-*.json"))
    data = json.loads(path.read_text())
    rows = data["rows"]
    assert {r["op"] for r in rows} == {"ecce_bias", "ecce_attention", "ecce_prefix", "routed_mixture"}
    assert all(r["status"] in ("ok", "skipped") for r in rows), [r for r in rows if r["status"] == "failed"]
    assert all(r["reason"] for r in rows if r["status"] == "skipped"), "a skipped case must say why"
    assert any(r["status"] == "ok" and r["provider"] == "reference" for r in rows)
    assert all(r["median_ms"] > 0 for r in rows if r["status"] == "ok")
    assert data["ceilings"]["copy_bytes_per_s"] > 0
    env = json.dumps(data["environment"])
    assert ROOT not in env and os.path.expanduser("~") not in env, "no machine paths in results"
    assert path.with_suffix(".md").exists() and len(list(tmp_path.glob("smoke-*.png"))) == 4
