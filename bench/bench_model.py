"""pytest-benchmark: a whole ITEACH-Net training step (teacher + student forward, loss,
backward, AdamW step) and inference, per backend."""
import suite

OPS = (suite.MODEL_OP,)


def test_model(bench_case, case):
    bench_case(case)
