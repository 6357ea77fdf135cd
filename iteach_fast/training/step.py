"""The training step and what it reads: one optimisation step (:class:`Step`, and
:class:`GraphedStep` captured in a CUDA graph), a rank's share of a global batch
(:func:`make_batch`), the optimiser, and the strategies' missing rate per batch.

Each step: a batch of complete conversations; a fresh missing-modality mask at the
strategy's rate; the teacher sees the complete batch, the student the masked copy;
``loss = L_emo + L_rec`` (:meth:`ITEACHNet.loss`); AdamW with the router at its own lr. The
loss terms and the gradient norm come back in one small device tensor, read once (the step's
only host synchronisation). ``compile`` and ``cuda_graphs`` change the speed, not what is
computed.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from ..choices import MODALITIES
from ..data.dataset import collate
from ..data.masking import add_outages, apply_mask, random_rate, sample_present
from ..nn.model import ITEACHNet
from .config import TrainConfig
from .distributed import Context
from .runtime import autocast

__all__ = ["TERMS", "GRAPH_WARMUP", "COMPILE_BACKEND", "rate_for", "length_bucket", "Batch", "make_batch",
           "make_optimizer", "Step", "GraphedStep"]

#: the per-step values read from the device: the loss terms, then the gradient norm
TERMS = ("total", "emo", "rec", "emo_teacher", "emo_student")
#: optimiser steps run eagerly before a CUDA graph captures the step (lazy initialisations)
GRAPH_WARMUP = 3
#: the torch.compile backend of ``compile`` (tests/system/test_compile_step.py sets "eager":
#: Dynamo's whole-graph capture as in a real run, without Inductor's code generation)
COMPILE_BACKEND = "inductor"


def rate_for(cfg: TrainConfig, epoch: int, generator: torch.Generator) -> float:
    """The missing rate of one training batch (epoch counted from 0)."""
    if cfg.strategy == "fixed":
        return cfg.rate
    if cfg.strategy == "random":
        return random_rate(cfg.max_rate, cfg.rate_power, generator)
    return min(cfg.progressive_step * (epoch // cfg.progressive_every), cfg.max_rate)


# ------------------------------------------------------------------ batches

def length_bucket(n: int, longest: int) -> int:
    """The padded length of a batch whose longest conversation has ``n`` utterances, for a
    compiled or graph-captured step: the next power of two >= ``n`` (at least 16), capped at
    the training set's ``longest`` — a few shapes in all, not one per batch."""
    return min(max(16, 1 << max(n - 1, 0).bit_length()), longest)


class Batch(NamedTuple):
    """One rank's share of a global batch, on the CPU. ``counts``: int64 ``(2,)``, the
    denominators of the loss — the *global* batch's labelled valid utterances and lost
    utterances (:meth:`ITEACHNet.loss_counts`), so that each rank's loss is its share of the
    global means; None: this batch's own (one process)."""
    complete: tuple
    incomplete: tuple
    lengths: torch.Tensor
    labels: torch.Tensor
    present: torch.Tensor
    counts: torch.Tensor | None = None

    def flat(self) -> list:
        return [*self.complete, *self.incomplete, self.lengths, self.labels, self.present, self.counts]

    @staticmethod
    def from_flat(ts) -> Batch:
        return Batch(tuple(ts[0:3]), tuple(ts[3:6]), *ts[6:])


def _empty_conversation(like: dict) -> dict:
    """A zero-length conversation (padding rows: DDP needs every rank in every step, and a
    compiled step a fixed batch size); its lengths mask it out of every loss and metric."""
    return {"id": "", "labels": np.asarray(like["labels"])[:0], "speakers": np.asarray(like["speakers"])[:0],
            **{m: np.asarray(like[m])[:0] for m in MODALITIES}}


def _pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """``t (B, L, ...)`` zero-padded (or cut) to ``(B, length, ...)``."""
    out = t.new_zeros((t.shape[0], length, *t.shape[2:]))
    n = min(length, t.shape[1])
    out[:, :n] = t[:, :n]
    return out


def make_batch(dataset, idx: list, rate: float, generator: torch.Generator, ctx: Context, count,
               shape: tuple[int, int] | None = None, outage: float = 0.0) -> Batch:
    """This rank's share of the global batch ``idx`` (positions in ``dataset``).

    The missing-modality mask is drawn for the whole global batch, so every rank (and a
    single process) draws the same one, and ``count`` (:meth:`ITEACHNet.loss_counts`) gives
    the global batch's loss denominators, known to every rank without communication;
    ``shape`` = ``(rows, length)`` pads the share with zero-length conversations and zero
    positions to a fixed shape (compiled / captured steps); without it a rank's share has at
    least one row and one position. ``outage``: the probability that a conversation also
    loses one or two modalities for its whole length (:func:`~iteach_fast.data.masking.add_outages`)."""
    convs = [dataset[i] for i in idx]
    lengths_g = torch.tensor([len(c["labels"]) for c in convs], dtype=torch.int64)
    present_g = sample_present(lengths_g, int(lengths_g.max()) if len(convs) else 0, rate, generator)
    if outage:  # drawn only when asked: runs without outages keep their generator streams
        present_g = add_outages(present_g, lengths_g, outage, generator)
    labels_g = pad_sequence([torch.as_tensor(np.asarray(c["labels"])) for c in convs], batch_first=True)
    counts = count(labels_g, lengths_g, present_g)
    mine = ctx.shard(range(len(convs)))
    rows = shape[0] if shape else max(len(mine), 1)
    batch = collate([convs[i] for i in mine] + [_empty_conversation(convs[0])] * (rows - len(mine)))
    # at least one position: a share of only zero-length conversations still runs every layer
    length = shape[1] if shape else max(batch["labels"].shape[1], 1)
    batch.update({k: _pad(batch[k], length) for k in (*MODALITIES, "labels")})
    present = torch.zeros(rows, length, 3, dtype=torch.bool)
    present[: len(mine)] = _pad(present_g[mine], length)
    masked = apply_mask(batch, present)
    return Batch(tuple(batch[m] for m in MODALITIES), tuple(masked[m] for m in MODALITIES), batch["lengths"],
                 batch["labels"], present, torch.stack([counts["valid"], counts["lost"]]))


# ------------------------------------------------------------------ the step

def make_optimizer(raw: ITEACHNet, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the net's parameter groups (router at its own lr), fused on the CPU and CUDA:
    one kernel over all parameters instead of a Python loop over them (~3x faster on the CPU
    for the paper's net), and on CUDA a step count that stays on the device, which the default
    implementation reads on the host every step; capturable for a CUDA graph."""
    groups = raw.parameter_groups(cfg.lr, cfg.router_lr, cfg.weight_decay)
    if device.type == "cuda" and cfg.cuda_graphs:
        return torch.optim.AdamW(groups, capturable=True)
    return torch.optim.AdamW(groups, fused=device.type in ("cpu", "cuda") or None)


class Step:
    """One optimisation step: forward + loss (``torch.compile(fullgraph=True)`` with
    ``compile``), backward, clipping, AdamW. A call returns the :data:`TERMS` and the
    gradient norm summed over the ranks, read from the device once."""

    def __init__(self, net: torch.nn.Module, raw: ITEACHNet, optim, scaler, cfg: TrainConfig, ctx: Context,
                 dtype: str):
        self.net, self.raw, self.optim, self.scaler, self.cfg, self.ctx, self.dtype = (
            net, raw, optim, scaler, cfg, ctx, dtype)
        self.params = [p for p in raw.parameters() if p.requires_grad]
        self.autocast_cache = True
        self.model, self.loss, self.forward_loss = net, raw.loss, self._forward_loss
        if cfg.compile:  # one graph per batch shape (length buckets), backward through AOTAutograd
            opts = dict(fullgraph=True, dynamic=False, backend=COMPILE_BACKEND)
            if cfg.model.recurrent:  # Dynamo refuses nn.GRU unless told (its support is marked experimental)
                torch._dynamo.config.allow_rnn = True
            if ctx.parallel:  # Dynamo compiles a DDP module's inner module (split at its gradient buckets);
                # DDP's own bookkeeping around it stays eager, so the module cannot be one full graph
                self.model = torch.compile(net, **{**opts, "fullgraph": False})
                self.loss = torch.compile(raw.loss, **opts)
            else:
                self.forward_loss = torch.compile(self._forward_loss, **opts)

    def _forward_loss(self, complete, incomplete, lengths, labels, present, counts=None) -> torch.Tensor:
        with autocast(self.ctx.device, self.dtype, self.autocast_cache):
            t_out, s_out = self.model(complete, incomplete, lengths, present)
            losses = self.loss(t_out, s_out, labels, lengths, present,
                               counts=None if counts is None else {"valid": counts[0], "lost": counts[1]},
                               rec_weight=self.cfg.rec_weight)
        return torch.stack([losses[k] for k in TERMS])

    def body(self, b: Batch) -> torch.Tensor:
        """Forward, backward and update on device tensors; the report tensor, not yet reduced."""
        terms = self.forward_loss(b.complete, b.incomplete, b.lengths, b.labels, b.present, b.counts)
        # the ranks' losses sum to the global batch's; DDP averages gradients, hence x world
        self.scaler.scale(terms[0] * self.ctx.world).backward()
        if self.scaler.is_enabled():  # fp16: the scaler skips steps with inf gradients by design
            if self.cfg.grad_clip > 0:
                self.scaler.unscale_(self.optim)
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            norm = terms.new_zeros(())
        elif self.cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        self.scaler.step(self.optim)
        self.scaler.update()
        return torch.cat([terms.detach().float(), (norm.detach().float() / self.ctx.world).reshape(1)])

    def to_device(self, b: Batch) -> Batch:
        if self.ctx.device.type != "cuda":
            return b
        return Batch.from_flat([t if t is None else t.pin_memory().to(self.ctx.device, non_blocking=True)
                                for t in b.flat()])

    def __call__(self, b: Batch) -> list[float]:
        self.optim.zero_grad(set_to_none=True)
        report = self.body(self.to_device(b))
        return self.ctx.sum_(report).tolist()  # the step's one host synchronisation


class GraphedStep(Step):
    """:class:`Step` captured whole in a CUDA graph (``cuda_graphs``): every batch is copied
    into static buffers (pinned host memory, non-blocking copies) and the graph replayed.
    The first :data:`GRAPH_WARMUP` steps run eagerly on a side stream, the next is captured
    and replayed; batches must all have one shape (:func:`make_batch` with ``shape``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.autocast_cache = False
        self.graph, self.host, self.static, self.report, self.warm = None, None, None, None, 0

    def __call__(self, b: Batch) -> list[float]:
        flat = b.flat()
        if self.static is None:
            self.host = [None if t is None else torch.empty_like(t).pin_memory() for t in flat]
            self.static = [None if t is None else torch.empty_like(t, device=self.ctx.device) for t in flat]
        for h, s, t in zip(self.host, self.static, flat):
            if t is not None:
                h.copy_(t)
                s.copy_(h, non_blocking=True)
        static = Batch.from_flat(self.static)
        if self.graph is None and self.warm < GRAPH_WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.optim.zero_grad(set_to_none=True)
                report = self.body(static)
            torch.cuda.current_stream().wait_stream(side)
            self.warm += 1
            return report.tolist()
        if self.graph is None:
            self.optim.zero_grad(set_to_none=True)  # gradients allocated inside the graph's pool
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.report = self.body(static)
        self.graph.replay()
        return self.report.tolist()
