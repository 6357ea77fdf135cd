"""Data-parallel training (issue 15) on the CPU: 2 processes, gloo, a tiny model.

* torchrun end to end: after one epoch the 2-process run's weights equal the single
  process's with the same global batch, and its validation metrics are identical;
* a rank that raises ends the job (every process exits non-zero within seconds, the failed
  rank named), and resuming that job gives the uninterrupted run's final checkpoint;
* ranks started with different settings stop at start, naming the setting.

The last two launch the ranks by forking this process with torchrun's variables set (what
torchrun does, minus a fresh interpreter per rank: seconds instead of half a minute).
"""
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from iteach_fast import cli
from iteach_fast.nn.model import ITEACHNet
from iteach_fast.training import checkpoint, distributed
from iteach_fast.training import loop as training
from iteach_fast.training.config import TrainConfig

# 9 training conversations in global batches of 4: the last batch has one, so rank 1 trains on
# a zero-length conversation there (every rank joins every step)
FLAGS = ["--syn-conversations", "13", "--syn-min-len", "3", "--syn-max-len", "8", "--syn-dims", "6,4,5",
         "--dim", "8", "--heads", "2", "--max-len", "8", "--dist", "4", "--conv-kernel", "3",
         "--teacher-layers", "1", "--student-layers", "1", "--batch-size", "4", "--select-rates", "0,0.5",
         "--strategy", "random", "--no-progress", "--threads", "1", "--device", "cpu"]
#: gradients below this are float32 rounding noise of an O(1) loss (e.g. the key biases, which
#: softmax's shift invariance gives an exact gradient of 0); AdamW turns such noise into steps
#: of up to lr whatever its size, so these parameters random-walk in any run, one process or N
NOISE = 1e-6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(path) -> dict:
    return checkpoint.load_checkpoint(str(path))["model"]


def assert_same_weights(a: dict, b: dict, grads: dict, atol: float = 1e-5) -> float:
    """Every weight whose gradients were above float32 noise equal within ``atol`` (and at
    least most of them: the test must be able to fail); returns the max difference."""
    worst = 0.0
    assert sum(g > NOISE for g in grads.values()) > 0.8 * len(grads)
    for k in a:
        if grads[k] > NOISE:
            diff = (a[k] - b[k]).abs().max().item()
            assert diff <= atol, (k, diff)
            worst = max(worst, diff)
    return worst


def gradient_scale(ck: dict) -> dict:
    """``{name: RMS of its gradients}`` over a run, from AdamW's second moment in checkpoint ``ck``."""
    cfg = TrainConfig.from_dict(ck["config"])
    net = ITEACHNet.from_config(cfg.model, ck["data"]["input_dims"], ck["data"]["num_classes"])
    names = {id(p): n for n, p in net.named_parameters()}
    order = [names[id(p)] for g in net.parameter_groups() for p in g["params"]]  # the optimiser's order
    state = ck["optimizer"]["state"]
    return {n: (state[i]["exp_avg_sq"] / (1 - 0.999 ** float(state[i]["step"]))).sqrt().max().item()
            for i, n in enumerate(order)}


def test_two_processes_under_torchrun_follow_one_process(tmp_path):
    one = tmp_path / "one"
    cfg = cli.config_from_args(cli.build_parser().parse_args(["train", *FLAGS, "--epochs", "1", "--out-dir",
                                                              str(one)]))
    single = training.train(cfg, log=lambda *_: None)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(free_port()), "-m", "iteach_fast", "train", *FLAGS, "--epochs", "1", "--out-dir",
                          str(two)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 processes" in run.stdout and run.stdout.count("epoch   1/1") == 1  # rank 0 alone logs
    a, b = checkpoint.load_checkpoint(single["last"]), checkpoint.load_checkpoint(str(two / "last.pt"))
    worst = assert_same_weights(a["model"], b["model"], gradient_scale(a))
    print(f"max weight difference, 2 processes vs 1: {worst:.2e}")
    assert [h["valid_waf"] for h in a["history"]] == [h["valid_waf"] for h in b["history"]]
    assert a["history"][0]["total"] == pytest.approx(b["history"][0]["total"], rel=1e-5)
    assert b["world"] == 2 and len(b["rng_ranks"]) == 2


# ------------------------------------------------------------------ forked ranks

def _rank(rank: int, world: int, port: int, argv: list, log: str, raise_at: int | None):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    sys.stdout = sys.stderr = open(log, "w", buffering=1)  # noqa: SIM115 - the process ends with it
    if raise_at is not None and rank == 1:
        real, calls = ITEACHNet.loss, [0]

        def loss(self, *a, **k):
            calls[0] += 1
            if calls[0] == raise_at:
                with open(log + ".raised", "w") as f:
                    f.write(str(time.time()))
                raise ValueError("injected failure on rank 1")
            return real(self, *a, **k)
        ITEACHNet.loss = loss
    code = cli.main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def launch(tmp_path, name: str, argv_of_rank, raise_at=None, timeout=240) -> list:
    """Two forked ranks; ``[(exit code, log text, exit time)]`` per rank."""
    ctx = multiprocessing.get_context("fork")
    port = free_port()
    procs = []
    for r in range(2):
        log = str(tmp_path / f"{name}.rank{r}.log")
        p = ctx.Process(target=_rank, args=(r, 2, port, argv_of_rank(r), log, raise_at))
        p.start()
        procs.append((p, log))
    out, deadline = [], time.time() + timeout
    for p, log in procs:
        p.join(max(deadline - time.time(), 1))
        if p.is_alive():
            for q, _ in procs:
                q.kill()
            pytest.fail(f"{name}: rank hung past {timeout} s")
        with open(log) as f:
            out.append((p.exitcode, f.read(), time.time()))
    return out


def test_a_rank_that_raises_ends_the_job_and_resuming_gives_the_uninterrupted_result(tmp_path):
    train = ["train", *FLAGS, "--epochs", "2"]
    straight = launch(tmp_path, "straight", lambda r: [*train, "--out-dir", str(tmp_path / "a")])
    assert [code for code, _, _ in straight] == [0, 0], straight
    # rank 1 fails at the first step of epoch 2 (3 steps per epoch)
    failed = launch(tmp_path, "failed", lambda r: [*train, "--out-dir", str(tmp_path / "b")], raise_at=4)
    (code0, log0, _), (code1, log1, _) = failed
    assert code0 != 0 and code1 != 0, failed
    assert "[rank 1]: error: injected failure on rank 1" in log1
    assert "another process of this job stopped" in log0 and "Traceback" not in log0
    with open(tmp_path / "failed.rank1.log.raised") as f:
        raised = float(f.read())
    assert max(t for _, _, t in failed) - raised < 20  # no rank waits for a timeout
    assert checkpoint.load_checkpoint(str(tmp_path / "b" / "last.pt"))["epoch"] == 0  # epoch 1's checkpoint
    resumed = launch(tmp_path, "resumed", lambda r: ["train", "--resume", str(tmp_path / "b" / "last.pt"),
                                                     "--epochs", "2", "--no-progress"])
    assert [code for code, _, _ in resumed] == [0, 0], resumed
    a, b = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k  # the same computation: bit-identical


def test_ranks_with_different_settings_stop_at_start(tmp_path):
    out = launch(tmp_path, "mismatch", lambda r: ["train", *FLAGS, "--out-dir", str(tmp_path / "c"),
                                                  "--lr", "0.001" if r else "0.0005"], timeout=120)
    for code, log, _ in out:
        assert code == 2 and "rank 1 was started with other settings than rank 0: lr: 0.0005 vs 0.001" in log, log
    assert not (tmp_path / "c" / "last.pt").exists()


def test_the_device_of_a_rank_is_explained(monkeypatch):
    """Under torchrun on a (pretended) machine with one GPU: cuda:LOCAL_RANK, or a clear error."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed.rank_device("auto", 0, 1, 2) == (torch.device("cuda", 0), [])  # 2 machines, 1 GPU each
    dev, notes = distributed.rank_device("cpu", 1, 2, 2)
    assert dev == torch.device("cpu") and "gloo although 1 CUDA device(s) are present" in notes[0]
    with pytest.raises(ValueError, match="started 2 processes on this machine but it has 1 CUDA device"):
        distributed.rank_device("cuda", 1, 2, 2)
    with pytest.raises(ValueError, match="--device cuda:0: under torchrun every process uses the GPU of its "
                                         "LOCAL_RANK"):
        distributed.rank_device("cuda:0", 0, 1, 2)
