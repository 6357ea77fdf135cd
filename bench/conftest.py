"""pytest-benchmark over the same case list as ``bench/run.py`` (``bench/suite.py``).

    pytest bench                          # this device's quick set
    pytest bench --bench-set full         # the full set
    pytest bench --bench-set smoke        # smallest sizes

Needs pytest-benchmark (``bench/run.py`` does not). Files named ``bench_*.py`` are
collected; each declares ``OPS``, the ops whose cases it runs.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import suite  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_addoption(parser):
    parser.addoption("--bench-set", choices=("quick", "full", "smoke"), default="quick",
                     help="which case set of bench/suite.py to run (default: quick)")


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        which = metafunc.config.getoption("--bench-set")
        cases = suite.build_cases(DEVICE, quick=which != "full", smoke=which == "smoke", ops_=metafunc.module.OPS)
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


@pytest.fixture
def bench_case(benchmark):
    """``bench_case(case)``: prepare ``case`` (skip with the reason if it cannot run here),
    warm it up, then time it with pytest-benchmark (synchronising the GPU inside each call)."""
    def run(case: suite.Case):
        try:
            prepared = suite.prepare(case, DEVICE)
        except suite.Skip as why:
            pytest.skip(str(why))
        if DEVICE.type == "cuda":
            def fn():
                prepared.fn()
                torch.cuda.synchronize(DEVICE)
        else:
            fn = prepared.fn
        for _ in range(2):  # warm-up: compilation and autotuning stay out of the timings
            fn()
        benchmark.extra_info.update(case.as_dict(), bytes_moved=prepared.bytes_moved, flops=prepared.flops)
        benchmark(fn)
    return run
