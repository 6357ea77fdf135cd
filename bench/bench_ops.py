"""pytest-benchmark: every kernel op, every provider (registry backends and peers), each mode."""
import suite

OPS = suite.KERNEL_OPS


def test_op(bench_case, case):
    bench_case(case)
