"""Data parallelism: one ITEACH-Net trained by N processes with torch DDP, launched by torchrun.

``torchrun --nproc-per-node N -m iteach_fast train ...`` starts N copies of the command;
torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``) makes :func:`context` join them in one process group —
NCCL when the ranks train on GPUs (rank ``r`` on ``cuda:LOCAL_RANK``), gloo on CPUs.
Without that environment everything here is the single process (``world == 1``).

How N processes follow the single-process run with the same global batch (docs/training.md):

* every rank draws the same global batch order and the same missing-modality mask for the
  whole global batch (the generators are seeded alike); rank ``r`` trains on the global
  batch's conversations ``r, r + N, ...`` (:meth:`Context.shard`);
* every loss term is normalised by the global count of what it averages, which each rank
  knows from the global batch's lengths and mask without communication; the ranks' local
  losses then sum to the single process's loss, and since DDP averages gradients over the
  ranks, each rank back-propagates ``N`` times its local loss;
* evaluation is sharded the same way and the predictions gathered, so every rank computes
  the single process's metrics and takes the same model-selection decision;
* rank 0 alone writes checkpoints and logs.

Failures are collective: :meth:`Context.settle` turns an error on one rank into the same
error on every rank (no rank waits forever in a collective for a peer that gave up), and
:meth:`Context.check_same_config` stops a job whose ranks were given different settings.
"""
from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .runtime import resolve_device

__all__ = ["Context", "context", "torchrun_env", "rank_tag", "rank_device", "DistributedError"]

#: the variables torchrun sets for every worker
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """Another rank failed, or the ranks disagree; the message names the rank."""


def torchrun_env() -> dict | None:
    """``{"rank", "world", "local_rank", "local_world"}`` from torchrun's variables, or None
    when this process was not started by torchrun (or a launcher that sets the same)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        env = {"rank": int(os.environ["RANK"]), "world": int(os.environ["WORLD_SIZE"]),
               "local_rank": int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
               "local_world": int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))}
    except ValueError as err:
        raise ValueError(f"torchrun's environment is malformed ({err}): RANK, WORLD_SIZE, LOCAL_RANK and "
                         "LOCAL_WORLD_SIZE must be integers") from None
    if not 0 <= env["rank"] < env["world"] or not 0 <= env["local_rank"] < env["local_world"]:
        raise ValueError(f"torchrun's environment is inconsistent: {env}")
    return env


def rank_tag() -> str:
    """``" [rank r]"`` in a process of a torchrun job of several processes, else ``""`` (for messages)."""
    try:
        env = torchrun_env()
    except ValueError:
        return ""
    return f" [rank {env['rank']}]" if env and env["world"] > 1 else ""


def rank_device(device: str, local_rank: int, local_world: int, world: int) -> tuple[torch.device, list[str]]:
    """The device of this rank: ``cuda:LOCAL_RANK`` for ``auto`` / ``cuda`` on a GPU machine,
    the CPU for ``cpu`` (or ``auto`` without CUDA); explained errors otherwise."""
    notes = []
    cuda = torch.cuda.is_available()
    if device == "cpu" or (device == "auto" and not cuda):
        if cuda and world > 1:
            notes.append(f"--device cpu: the {world} processes train on CPUs with gloo although "
                         f"{torch.cuda.device_count()} CUDA device(s) are present; leave --device at auto (or cuda) "
                         "for one GPU per process with NCCL")
        return resolve_device("cpu"), notes
    if device not in ("auto", "cuda"):
        dev = resolve_device(device)  # the usual errors for a malformed or absent device
        if world > 1:
            raise ValueError(f"--device {device}: under torchrun every process uses the GPU of its LOCAL_RANK "
                             "(cuda:LOCAL_RANK); give --device cuda (or auto), and choose the GPUs with "
                             "CUDA_VISIBLE_DEVICES")
        return dev, notes
    if not cuda:
        raise ValueError(f"--device {device}: no CUDA device is available to this process (use --device cpu: "
                         "gloo on CPUs)")
    if local_world > torch.cuda.device_count():
        raise ValueError(f"torchrun started {local_world} processes on this machine but it has "
                         f"{torch.cuda.device_count()} CUDA device(s): give --nproc-per-node "
                         f"{torch.cuda.device_count()} or fewer (one GPU per process)")
    return torch.device("cuda", local_rank), notes


@dataclass
class Context:
    """Where this process stands in a (possibly one-process) data-parallel job."""
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    notes: list = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    # ---------------------------------------------------------------- data and model

    def shard(self, items: list) -> list:
        """This rank's part of ``items`` (a global batch, or a split's conversations)."""
        return list(items)[self.rank::self.world]

    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        """``net`` in DDP (rank 0's weights broadcast to every rank), or ``net`` itself."""
        if not self.parallel:
            return net
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids, output_device=ids[0] if ids else None)

    # ---------------------------------------------------------------- collectives

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks in place (no-op for one process)."""
        if self.parallel:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def gather(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.parallel:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather_predictions(self, y: np.ndarray, p: np.ndarray, realised: float):
        """Every rank's ``(y_true, y_pred, realised rate)`` of its shard combined (in rank
        order): the whole split's, as one process would have computed it."""
        parts = self.gather((y, p, realised))
        n = [len(part[0]) for part in parts]
        rate = sum(r * k for (_, _, r), k in zip(parts, n)) / max(sum(n), 1)
        return np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts]), rate

    def settle(self, error: BaseException | None) -> None:
        """Every rank calls this at the same point with the error it met (or None); if any
        rank met one, every rank raises: its own error, or a :class:`DistributedError`
        naming the rank that failed. One process: raises ``error`` if given."""
        if not self.parallel:
            if error is not None:
                raise error
            return
        messages = self.gather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        for r, msg in enumerate(messages):
            if msg is not None:
                raise DistributedError(f"rank {r} failed: {msg}")

    def check_same_config(self, config: dict) -> None:
        """Stop the job at start when the ranks were given different settings."""
        configs = self.gather(json.dumps(config, sort_keys=True, default=str))
        ref = json.loads(configs[0])
        for r, text in enumerate(configs[1:], start=1):
            other = json.loads(text)
            differ = sorted(k for k in set(ref) | set(other) if ref.get(k) != other.get(k))
            if differ:
                raise DistributedError(f"rank {r} was started with other settings than rank 0: "
                                       + "; ".join(f"{k}: {ref.get(k)!r} vs {other.get(k)!r}" for k in differ)
                                       + " — every process of a job must get the same command line")

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()


def context(device: str = "auto", timeout_s: float = 1800.0) -> Context:
    """This process's :class:`Context`: the process group from torchrun's environment (NCCL
    on GPUs, gloo on CPUs), joined once per process, and this rank's device."""
    env = torchrun_env()
    if env is None or env["world"] == 1:
        return Context(resolve_device(device))
    dev, notes = rank_device(device, env["local_rank"], env["local_world"], env["world"])
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dist.is_initialized():
        if dist.get_backend() != backend:
            raise ValueError(f"the process group already uses {dist.get_backend()}, but this run's device "
                             f"{dev} needs {backend}")
    else:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Context(dev, rank=env["rank"], world=env["world"], local_rank=env["local_rank"], notes=notes)
