"""CI smoke run of the benchmark runner (``python -m bench.run --smoke``): the smallest sizes,
no compilation, every kernel op and the model's training step; JSON + Markdown + plots
written, host syncs and launches recorded. Checks the instrument runs end to end, not any speed."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytest.importorskip("matplotlib")


def test_bench_smoke_run(tmp_path):
    ops = "ecce_prefix,ecce_bias,ecce_attention,routed_mixture,iteach_net"
    cmd = [sys.executable, "-m", "bench.run", "--smoke", "--no-compile", "--ops", ops, "--modes", "fwd+bwd,train_step",
           "--providers", "reference,triton,cpp,sdpa-float-mask,auto", "--threads", "1", "--out", str(tmp_path)]
    # the package importable from this checkout even where it is not pip-installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    env.pop("TRITON_INTERPRET", None)  # as a user runs it: Triton on a CPU is skipped, not interpreted
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [path] = list(tmp_path.glob("smoke-*.json"))
    data = json.loads(path.read_text())
    rows = data["rows"]
    assert {r["op"] for r in rows} == set(ops.split(","))
    assert all(r["status"] in ("ok", "skipped") for r in rows), [r for r in rows if r["status"] == "failed"]
    assert all(r["reason"] for r in rows if r["status"] == "skipped"), "a skipped case must say why"
    assert all(r["median_ms"] > 0 for r in rows if r["status"] == "ok")
    assert {r["provider"] for r in rows if r["status"] == "ok"} >= {"reference", "cpp", "sdpa-float-mask", "auto"}
    steps = [r for r in rows if r["op"] == "iteach_net" and r["status"] == "ok"]
    assert len(steps) == 2 and all(r["host_syncs"] >= 0 and r["launches"] > 0 for r in steps)
    assert data["ceilings"]["copy_bytes_per_s"] > 0 and data["ceiling_samples"]
    assert all(r["ceilings_at"] is not None for r in rows if r["status"] == "ok" and r["op"] != "iteach_net")
    env_text = json.dumps(data["environment"])
    assert ROOT not in env_text and os.path.expanduser("~") not in env_text, "no machine paths in results"
    assert path.with_suffix(".md").exists() and len(list(tmp_path.glob("smoke-*.png"))) == 4
