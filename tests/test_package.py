"""The package imports without its compiled parts, says once what is missing, and reports backends."""
import os
import subprocess
import sys

import torch

import iteach_fast
from iteach_fast import backends


def _import_with(env_extra):
    env = dict(os.environ, **env_extra)
    code = "import warnings; warnings.simplefilter('always'); import iteach_fast, iteach_fast.ops; import iteach_fast"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_imports_without_extension_and_warns_once():
    proc = _import_with({"ITEACH_FAST_NO_EXT": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("backends unavailable") == 1, proc.stderr
    assert "cpp (ITEACH_FAST_NO_EXT=1)" in proc.stderr


def test_available_backends_lists_every_op_and_reason():
    table = backends.available_backends("cpu")
    assert set(table) == set(backends.OPS)
    for op, per_backend in table.items():
        assert per_backend["reference"] is None
        for name, reason in per_backend.items():
            assert reason is None or isinstance(reason, str) and reason


def test_extension_reports_its_build():
    module, why = iteach_fast._extension.extension()
    if module is None:
        import pytest
        pytest.skip(f"extension not built: {why}")
    assert torch.ops.iteach_fast.version() == iteach_fast.__version__
    assert isinstance(torch.ops.iteach_fast.has_cuda(), bool)
