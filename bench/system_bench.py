"""System entries: streaming inference (one utterance at a time) and data-parallel training.

* ``iteach_stream`` — the latency of producing the newest utterance's prediction: a
  ``StreamingSession.push`` (cached state, ``O(L·D)``) against re-running the full causal
  forward on the whole prefix (``recompute``, the baseline), at ``L`` = 110 and 1024, one
  conversation; the session's state memory after ``L`` utterances in the row.
* ``ddp_train`` — training throughput (conversations per second) of ``torchrun
  --nproc-per-node N -m iteach_fast train`` with 1 and 2 processes on the same global
  batch, each measured in its own process group (gloo on the CPU, NCCL on GPUs).

Each skips with the reason while the package lacks the API it measures.
"""
from __future__ import annotations

import importlib.util
import itertools
import os
import re
import subprocess
import sys
import tempfile

import torch

from .cases import Case, Entry, Prepared, Size, Skip
from .model_bench import MODEL_INPUT_DIMS, make_batches, make_net

__all__ = ["StreamEntry", "DdpEntry", "STREAM_ENTRY", "DDP_ENTRY", "tensor_bytes"]


def tensor_bytes(obj, seen: set | None = None) -> int:
    """The bytes of every tensor reachable from ``obj`` (attributes, lists, dicts), each storage once."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = (obj.untyped_storage().data_ptr(), obj.device)
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, torch.nn.Module):
        return 0  # the model's weights are not the session's state
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and id(obj) not in seen:
        seen.add(id(obj))
        return sum(tensor_bytes(v, seen) for v in vars(obj).values())
    return 0


class StreamEntry(Entry):
    op = "iteach_stream"
    baseline = "recompute"
    modes = ("per-utterance",)
    dtypes = {"cuda": ("float32",), "cpu": ("float32",)}
    sizes = {"cuda": (Size(1, 110), Size(1, 1024)), "cpu": (Size(1, 110), Size(1, 1024)),
             "smoke": (Size(1, 16, tags=frozenset({"headline"})),)}
    #: pushes timed after the session holds L - PUSHES utterances (the cost of one push grows with L)
    PUSHES = 40

    def providers(self) -> list[str]:
        return ["recompute", "push"]

    def describe(self) -> dict[str, str]:
        return {"recompute": "the full causal forward of the student on the whole prefix, for its newest utterance",
                "push": "StreamingSession.push of one utterance (cached keys/values, prefix sums, windows)"}

    def prepare(self, cases: list[Case], device: torch.device, copies: int = 3, seed: int = 0) -> dict:
        c0 = cases[0]
        try:
            net = make_net(c0.L, "auto", device, c0.torch_dtype, c0.D, c0.H, causal=True).eval()
        except TypeError as err:
            return dict.fromkeys(cases, Skip(f"ITEACHNet has no causal mode yet ({err})"))
        student = net.student
        if not hasattr(student, "stream"):
            return dict.fromkeys(cases, Skip("the model has no stream() (StreamingSession) yet"))
        gen = torch.Generator().manual_seed(seed)
        _, incomplete, _, present, _ = make_batches(c0.B, c0.L, device, c0.torch_dtype, 1, gen)[0]
        lengths = torch.full((c0.B,), c0.L, dtype=torch.int64, device=device)
        out = {}
        for case in cases:
            if case.provider == "recompute":
                def recompute():
                    with torch.no_grad():
                        student(*incomplete, lengths, present)
                out[case] = Prepared(recompute)
                continue
            try:
                out[case] = self._push(student, incomplete, present, c0.L)
            except Exception as err:  # noqa: BLE001 - an API in progress: its failure is the row
                out[case] = err
        return out

    def _push(self, student, incomplete, present, L: int) -> Prepared:
        pushes = min(self.PUSHES, L // 2)
        session = student.stream(batch_size=1)

        def push(t: int):
            with torch.no_grad():
                return session.push(*(x[:, t] for x in incomplete), present[:, t])

        for t in range(L - pushes):  # the conversation so far (not timed)
            push(t)
        positions = itertools.count(L - pushes)
        prepared = Prepared(lambda: push(next(positions)), max_calls=pushes,
                            note=f"pushes of utterances {L - pushes + 1}..{L}")
        prepared.counters = lambda: {"state_bytes": tensor_bytes(session)}
        return prepared


def _ddp_supported() -> str | None:
    """None if ``iteach-fast train`` runs data-parallel under torchrun, else why not."""
    if importlib.util.find_spec("iteach_fast.training.distributed") is None:
        return "iteach_fast.training.loop does not run data-parallel under torchrun yet"
    return None


class DdpEntry(Entry):
    op = "ddp_train"
    on_request = True  # two training runs per size: python -m bench.run --ops ddp_train
    baseline = "1 process"
    modes = ("train_epoch",)
    dtypes = {"cuda": ("float32",), "cpu": ("float32",)}
    # B: the global batch; L: the longest synthetic conversation
    sizes = {"cuda": (Size(32, 110),), "cpu": (Size(16, 110),), "smoke": (Size(4, 16),)}
    CONVERSATIONS = {"smoke": 16, "default": 64}

    def providers(self) -> list[str]:
        return ["1 process", "2 processes"]

    def describe(self) -> dict[str, str]:
        return {"1 process": "torchrun --nproc-per-node 1 -m iteach_fast train (the run's CPU threads)",
                "2 processes": "torchrun --nproc-per-node 2 -m iteach_fast train, the same global batch (the run's "
                               "CPU threads shared, at least one each; gloo on the CPU, NCCL on GPUs)"}

    def prepare(self, cases: list[Case], device: torch.device, copies: int = 3, seed: int = 0) -> dict:
        why = _ddp_supported()
        if why:
            return dict.fromkeys(cases, Skip(why))
        if device.type == "cuda" and torch.cuda.device_count() < 2:
            two = next((c for c in cases if c.provider == "2 processes"), None)
            skipped = {two: Skip(f"{torch.cuda.device_count()} CUDA device(s): 2 processes need 2")} if two else {}
        else:
            skipped = {}
        out = {}
        for case in cases:
            if case in skipped:
                out[case] = skipped[case]
                continue
            nproc = 1 if case.provider == "1 process" else 2
            try:
                out[case] = Prepared(None, measured=_run_torchrun(case, device, nproc))
            except Exception as err:  # noqa: BLE001
                out[case] = err
        return out


def _run_torchrun(case: Case, device: torch.device, nproc: int) -> dict:
    """Two epochs under torchrun; the second's time per step and conversations per second."""
    conversations = DdpEntry.CONVERSATIONS["smoke" if case.L <= 16 else "default"]
    # the run's threads shared by the processes (at least one each): python -m bench.run --threads
    threads = max(1, torch.get_num_threads() // nproc) if device.type == "cpu" else 0
    with tempfile.TemporaryDirectory() as out_dir:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "iteach_fast", "train", "--dataset", "synthetic", "--syn-conversations", str(conversations),
               "--syn-max-len", str(case.L), "--syn-dims", ",".join(map(str, MODEL_INPUT_DIMS)), "--epochs", "2",
               "--batch-size", str(case.B), "--max-len", str(case.L), "--device", device.type,
               "--threads", str(threads), "--out-dir", out_dir, "--no-progress"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun exited {proc.returncode}: {_child_error(proc.stderr + proc.stdout)}")
        history = torch.load(os.path.join(out_dir, "last.pt"), map_location="cpu", weights_only=False)["history"]
    last = history[-1]
    seconds = last.get("train_seconds", last["seconds"])
    n_train = last.get("train_conversations", conversations)
    steps = max(1, -(-n_train // case.B))
    ms = 1e3 * seconds / steps
    return {"median_ms": ms, "p20_ms": ms, "p80_ms": ms, "rounds": steps,
            "timer": "the second epoch's training time (train_seconds in the history) / its steps",
            "samples_per_s": n_train / seconds,
            "note": f"{nproc} x {threads} CPU threads" if threads else f"{nproc} process(es), one GPU each"}


def _child_error(text: str) -> str:
    """The training process's own error in torchrun's output (not torchrun's summary of it)."""
    errors = [line.strip() for line in text.splitlines()
              if re.search(r"(^|\]: ?)\s*([\w.]*(Error|Exception)|iteach-fast: error): ", line)
              and "ChildFailedError" not in line]
    return errors[-1] if errors else (text.strip().splitlines() or ["no output"])[-1]


STREAM_ENTRY = StreamEntry()
DDP_ENTRY = DdpEntry()
