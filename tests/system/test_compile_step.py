"""The training step compiled and graph-captured (issue 16 item 4): what is computed must not change.

* from a fresh interpreter (nothing run eagerly before), the training step's forward + loss
  is captured by Dynamo with ``fullgraph=True`` for backend ``auto`` and ``reference`` (and with
  the ``recurrent`` option's GRUs), and
  its losses follow the eager step's over several optimiser steps. The compiler is Dynamo's
  "eager" one: the capture is what fails from a cold process or on a graph break;
  AOTAutograd's trace of the same forward + loss and its backward is
  ``tests/nn/test_model.py::test_model_traces_as_one_graph``, and Inductor's code
  generation (minutes on a CPU) runs in the benchmarks' ``auto+compile`` rows;
* padding to a length bucket and to a fixed number of rows changes nothing;
* ``--cuda-graphs`` is refused on the CPU; on a GPU the step runs under
  ``torch.cuda.set_sync_debug_mode("error")`` and the captured step follows the eager one.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from iteach_fast import cli
from iteach_fast.data.sources import splits_for
from iteach_fast.nn.model import ITEACHNet
from iteach_fast.training import step as ts
from iteach_fast.training.config import TrainConfig
from iteach_fast.training.distributed import Context
from iteach_fast.training.runtime import set_threads

TINY = dict(syn_conversations=10, syn_min_len=3, syn_max_len=8, syn_dims=(6, 4, 5), dim=8, heads=2, max_len=8,
            dist=4, conv_kernel=3, teacher_layers=1, student_layers=1, batch_size=4, progress=False, threads=1)


def make_steps(cfg: TrainConfig, splits, device, kinds, dtype="fp32"):
    """One :class:`ts.Step` per ``(class, compile)`` in ``kinds``, each on its own copy of
    one initial model."""
    set_threads(cfg.threads)
    torch.manual_seed(0)
    init = ITEACHNet.from_config(cfg.model, splits.input_dims, splits.num_classes).state_dict()
    ctx = Context(torch.device(device))
    steps = []
    for cls, compiled in kinds:
        raw = ITEACHNet.from_config(cfg.model, splits.input_dims, splits.num_classes).to(device)
        raw.load_state_dict(init)
        optim = ts.make_optimizer(raw, cfg.replace(cuda_graphs=cls is ts.GraphedStep), ctx.device)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        steps.append(cls(raw, raw, optim, scaler, cfg.replace(compile=compiled), ctx, dtype))
    return steps, ctx


def losses(step, splits, ctx, n: int, shape=None) -> list:
    """The reported values of ``n`` steps on fixed batches (the same for every step object)."""
    g = torch.Generator().manual_seed(1)
    train = splits.train
    idx = [list(range(len(train)))[i:i + 4] for i in range(0, len(train), 4)]
    return [step(ts.make_batch(train, idx[k % len(idx)], 0.5, g, ctx, step.raw.loss_counts, shape))
            for k in range(n)]


COLD = """
import json, sys
import torch
from iteach_fast.training import step as ts
from iteach_fast.training.config import TrainConfig
from iteach_fast.data.sources import splits_for
sys.path.insert(0, {here!r})
from test_compile_step import TINY, losses, make_steps

out = {{}}
ts.COMPILE_BACKEND = "eager"  # Dynamo's whole-graph capture, run as captured
for name, options in (("auto", {{}}), ("reference", {{"backend": "reference"}}), ("recurrent", {{"recurrent": True}})):
    # one model (pre) with the NAS mixer: every fused op (ECCE attention, routed mixture), half the trace
    cfg = TrainConfig.from_dict({{**TINY, **options, "framework": "pre", "student_mixer": "nas"}})
    splits = splits_for(cfg)
    (compiled, eager), ctx = make_steps(cfg, splits, "cpu", [(ts.Step, True), (ts.Step, False)])
    longest = max(len(c["labels"]) for c in splits.train)
    shape = (4, ts.length_bucket(longest, longest))
    out[name] = {{"compiled": losses(compiled, splits, ctx, 3, shape),  # first: a cold trace
                    "eager": losses(eager, splits, ctx, 3, shape)}}
print(json.dumps(out))
"""


def test_compiled_step_from_a_cold_process_follows_the_eager_step():
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", COLD.format(here=here)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for backend, got in out.items():
        for k, (c, e) in enumerate(zip(got["compiled"], got["eager"])):
            # loss terms: the later steps also compare the weights the earlier ones left
            assert c[:len(ts.TERMS)] == pytest.approx(e[:len(ts.TERMS)], rel=1e-5, abs=1e-6), (backend, k)


def test_padding_to_a_bucket_and_to_fixed_rows_changes_nothing(tmp_path):
    cfg = TrainConfig.from_dict({**TINY, "max_len": 16})  # the NAS token mixer's width bounds the padding
    splits = splits_for(cfg)
    (plain, padded), ctx = make_steps(cfg, splits, "cpu", [(ts.Step, False), (ts.Step, False)])
    a = losses(plain, splits, ctx, 3)
    b = losses(padded, splits, ctx, 3, shape=(6, 16))  # 2 zero-length rows, 8+ zero positions
    for x, y in zip(a, b):
        assert x == pytest.approx(y, rel=1e-5, abs=1e-6)
    assert [ts.length_bucket(n, 110) for n in (0, 1, 16, 17, 64, 65, 110)] == [16, 16, 16, 32, 64, 110, 110]


def test_cuda_graphs_are_refused_on_the_cpu(tmp_path, capsys):
    try:
        rc = cli.main(["train", "--cuda-graphs", "--device", "cpu", "--out-dir", str(tmp_path)])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and "--cuda-graphs captures the training step in a CUDA graph; this run is on cpu" in err


@pytest.mark.gpu
def test_a_step_on_the_gpu_makes_no_host_synchronisation():
    cfg = TrainConfig.from_dict({**TINY, "backend": "auto"})
    splits = splits_for(cfg)
    (step,), ctx = make_steps(cfg, splits, "cuda", [(ts.Step, False)])
    g = torch.Generator().manual_seed(1)
    for _ in range(2):  # the second after every lazy initialisation
        batch = step.to_device(ts.make_batch(splits.train, [0, 1, 2, 3], 0.5, g, ctx, step.raw.loss_counts))
        step.optim.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            report = step.body(batch)  # forward, loss, backward, clipping, AdamW
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(report).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_the_graph_captured_step_follows_the_eager_step(dtype):
    cfg = TrainConfig.from_dict({**TINY, "backend": "auto", "grad_clip": 1.0})
    splits = splits_for(cfg)
    (graphed, eager), ctx = make_steps(cfg, splits, "cuda", [(ts.GraphedStep, False), (ts.Step, False)],
                                       dtype=dtype)
    longest = max(len(c["labels"]) for c in splits.train)
    n = ts.GRAPH_WARMUP + 3  # warm-up, capture + replay, replays
    a = losses(graphed, splits, ctx, n, shape=(4, longest))
    b = losses(eager, splits, ctx, n, shape=(4, longest))
    assert graphed.graph is not None
    tol = 1e-4 if dtype == "fp32" else 2e-2
    for x, y in zip(a, b):
        assert x[:len(ts.TERMS)] == pytest.approx(y[:len(ts.TERMS)], rel=tol, abs=tol)
