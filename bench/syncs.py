"""The host synchronisations and launches of one ITEACH-Net training step, per backend, by op.

    python -m bench.syncs                          # the paper's size (B 32, L 110), reference and auto
    python -m bench.syncs --sizes 2x16 --device cpu

Counts with ``bench.counters`` (a ``TorchDispatchMode``) over the model's part of the step —
forward, loss, backward — and the launches over the whole step (aten ops on the CPU, CUDA
kernels from ``torch.profiler`` on a GPU); on a GPU also what ``torch.cuda.set_sync_debug_mode``
reports. The target is zero syncs: each one blocks CUDA-graph capture. A measurement, not a
test (the exit status says only whether every step ran).
"""
from __future__ import annotations

import argparse
import sys

import torch

from .counters import count_cuda_syncs, count_kernels, count_ops, count_syncs
from .model_bench import make_batches, make_net


def measure_step(B: int, L: int, backend: str, device: torch.device) -> dict:
    """``{"syncs": {op: n}, "launches": n, "cuda_syncs": n or None}`` of one warm training step."""
    net = make_net(L, backend, device).train()
    optimizer = torch.optim.AdamW(net.parameter_groups())
    complete, incomplete, lengths, present, labels = make_batches(B, L, device, torch.float32, 1,
                                                                  torch.Generator().manual_seed(0))[0]

    def model_part():
        teacher_out, student_out = net(complete, incomplete, lengths, present)
        net.loss(teacher_out, student_out, labels, lengths, present)["total"].backward()

    def step():
        optimizer.zero_grad(set_to_none=True)
        model_part()
        optimizer.step()

    step()  # warm-up: lazy initialisation is not the step's
    launches = count_kernels(step) if device.type == "cuda" else sum(count_ops(step).values())
    cuda_syncs = count_cuda_syncs(model_part) if device.type == "cuda" else None
    return {"syncs": count_syncs(model_part), "launches": launches, "cuda_syncs": cuda_syncs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.syncs", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="32x110", help="comma-separated BxL (default: the paper's 32x110)")
    p.add_argument("--backends", default="reference,auto", help="comma-separated model backends")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--threads", type=int, default=0, help="torch's CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    what = "CUDA kernels" if device.type == "cuda" else "aten ops (a CPU proxy)"
    failed = 0
    for size in args.sizes.split(","):
        B, L = (int(n) for n in size.lower().split("x"))
        for backend in args.backends.split(","):
            try:
                res = measure_step(B, L, backend, device)
            except Exception as err:  # noqa: BLE001 - report it and go on with the next backend
                print(f"train step B={B} L={L} backend={backend}: failed ({type(err).__name__}: {err})", flush=True)
                failed += 1
                continue
            total = sum(res["syncs"].values())
            by_op = ", ".join(f"{name} {n}" for name, n in sorted(res["syncs"].items(), key=lambda kv: -kv[1]))
            cuda = f"; sync-debug mode: {res['cuda_syncs']}" if res["cuda_syncs"] is not None else ""
            print(f"train step B={B} L={L} backend={backend} on {device.type}: {total} host syncs in forward+loss+"
                  f"backward ({by_op or 'none'}){cuda}; {res['launches']:,} {what} per step", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
