"""Inverted Teacher-Student training (paper §3.2, §3.5, §5.4.2; docs/training.md).

Each step: a batch of complete conversations; a fresh missing-modality mask at the
strategy's rate; the teacher sees the complete batch, the student the masked copy;
``loss = L_emo + L_rec`` (:meth:`ITEACHNet.loss`); AdamW with the router at its own lr.

Strategies: ``fixed`` (one rate, IME), ``random`` (each batch U[0, max_rate]),
``progressive`` (0 %, + ``progressive_step`` every ``progressive_every`` epochs, capped).

Model selection: after each epoch, the student's WAF on the validation split averaged
over ``select_rates`` (default UME's 0.0..0.7; the fixed strategy: its own rate), with
fixed-seed masks; ``best.pt`` is written only when an epoch improves on the best recorded
so far (a resumed run carries that record), ``last.pt`` after every epoch. Both are full
checkpoints (model, optimiser, config, RNG states of torch / numpy / python and the two
generators, history), written atomically (:mod:`iteach_fast.training.checkpoint`); ``resume``
continues bit-identically.

What makes a run trustworthy, in the order it is checked: every setting validated, the
backend / device / dtype combination asked of the registry, the weights of a resumed
checkpoint compared with its config, the output folder proven writable and locked — all
before any data is read; then, each step, the loss terms and the gradient norm are folded
into one small device tensor read once (the only host synchronisation of a step): a
non-finite value stops the run at once, and nothing of that epoch is saved.

Data parallelism (:mod:`iteach_fast.training.distributed`): under ``torchrun`` every rank takes its
share of each global batch; the result follows the single process with the same
``batch_size``. ``compile`` and ``cuda_graphs`` change the speed, not what is computed.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import NamedTuple

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import BatchSampler, RandomSampler
from tqdm import tqdm

from ..choices import MODALITIES
from ..data.dataset import collate
from ..data.masking import apply_mask, sample_present
from ..data.sources import splits_for
from ..nn.model import ITEACHNet, roles
from ..ops import backends
from .checkpoint import (
    atomic_write,
    check_weights,
    load_checkpoint,
    load_weights,
    require_keys,
    rng_state,
    run_lock,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .distributed import Context, DistributedError, context
from .runtime import autocast, check_precision, op_dtype, seed_everything, set_threads
from .validation import evaluate_rates

__all__ = ["train", "rate_for", "TrainingDiverged", "RESUME_SETTINGS", "TERMS", "length_bucket", "Batch",
           "make_batch", "make_optimizer", "Step", "GraphedStep"]

#: what a resumed run may change; everything else is the checkpoint's
RESUME_SETTINGS = ("epochs", "out_dir", "progress", "compile", "cuda_graphs", "threads", "device")
#: the per-step values read from the device: the loss terms, then the gradient norm
TERMS = ("total", "emo", "rec", "emo_teacher", "emo_student")
#: optimiser steps run eagerly before a CUDA graph captures the step (lazy initialisations)
GRAPH_WARMUP = 3
#: the torch.compile backend of ``compile`` (the tests trace with "aot_eager": Dynamo and
#: AOTAutograd as in a real run, without Inductor's code generation)
COMPILE_BACKEND = "inductor"


class TrainingDiverged(ValueError):
    """A loss term or the gradient became NaN or infinite; nothing of that epoch was saved."""


def rate_for(cfg: TrainConfig, epoch: int, generator: torch.Generator) -> float:
    """The missing rate of one training batch (epoch counted from 0)."""
    if cfg.strategy == "fixed":
        return cfg.rate
    if cfg.strategy == "random":
        return float(torch.rand((), generator=generator)) * cfg.max_rate
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
               shape: tuple[int, int] | None = None) -> Batch:
    """This rank's share of the global batch ``idx`` (positions in ``dataset``).

    The missing-modality mask is drawn for the whole global batch, so every rank (and a
    single process) draws the same one, and ``count`` (:meth:`ITEACHNet.loss_counts`) gives
    the global batch's loss denominators, known to every rank without communication;
    ``shape`` = ``(rows, length)`` pads the share with zero-length conversations and zero
    positions to a fixed shape (compiled / captured steps); without it a rank's share has at
    least one row and one position."""
    convs = [dataset[i] for i in idx]
    lengths_g = torch.tensor([len(c["labels"]) for c in convs], dtype=torch.int64)
    present_g = sample_present(lengths_g, int(lengths_g.max()) if len(convs) else 0, rate, generator)
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
                               counts=None if counts is None else {"valid": counts[0], "lost": counts[1]})
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


# ------------------------------------------------------------------ checks at the door

def _check_speed_settings(cfg: TrainConfig, ctx: Context, dtype: str) -> None:
    if not cfg.cuda_graphs:
        return
    if ctx.device.type != "cuda":
        raise ValueError(f"--cuda-graphs captures the training step in a CUDA graph; this run is on {ctx.device}: "
                         "drop --cuda-graphs (or use --compile, which also speeds up CPU runs)")
    if ctx.parallel:
        raise ValueError("--cuda-graphs is not supported with several processes (torchrun): drop it, or train "
                         "in one process")
    if dtype == "fp16":
        raise ValueError("--cuda-graphs with --dtype fp16: the loss scaler decides on the host each step; use "
                         "--dtype bf16 or fp32")


def _check_backend(cfg: TrainConfig, device: torch.device, dtype: str) -> None:
    """Ask the registry for every fused op the model will call (one clear line now, rather
    than an error at the first forward)."""
    mixers = {mixer for _, mixer in roles(cfg.model)}
    used = ("ecce_attention",) + (("routed_mixture",) if "nas" in mixers else ())
    for op in used:
        try:
            backends.select(op, cfg.model.backend, device, op_dtype(dtype))
        except (ValueError, TypeError, RuntimeError) as err:
            raise ValueError(f"--backend {cfg.model.backend} on {device} ({dtype}): {err}") from None


def _resume_config(cfg: TrainConfig, ckpt: dict, path: str) -> TrainConfig:
    require_keys(ckpt, path, ("model", "optimizer", "rng", "epoch", "best_score", "best_epoch", "history"),
                 "resume training")
    stored = TrainConfig.from_dict(ckpt["config"], source=path)
    keep = {k: getattr(cfg, k) for k in RESUME_SETTINGS}
    return stored.replace(**{**keep, "epochs": max(cfg.epochs, stored.epochs)})


def _check_resumed_weights(cfg: TrainConfig, ckpt: dict, path: str) -> None:
    """The checkpoint's weights against the model its config builds, before any data is read."""
    data = ckpt.get("data") or {}
    if "input_dims" not in data or "num_classes" not in data:
        return  # an old checkpoint: checked when the weights are loaded
    with torch.device("meta"):
        net = ITEACHNet.from_config(cfg.model, data["input_dims"], data["num_classes"])
    check_weights(net.state_dict(), ckpt["model"], path)


# ------------------------------------------------------------------ the loop

def _log_line(epoch, epochs, stats, score, best, secs, rate_desc, speed):
    return (f"epoch {epoch + 1:3d}/{epochs}  loss {stats['total']:.4f} (emo {stats['emo']:.4f}, "
            f"rec {stats['rec']:.4f})  {rate_desc}  valid WAF {score:6.2f}  best {best:6.2f}  {secs:5.1f}s  "
            f"{speed:.1f} conv/s")


def _diverged(vals, epoch, step, raw, optim, last_good) -> str:
    terms = dict(zip(TERMS, vals))
    bad_terms = [f"{k} {v}" for k, v in terms.items() if not math.isfinite(v)]
    if bad_terms:
        what = f"non-finite loss ({', '.join(bad_terms)})"
    else:
        names = [n for n, p in raw.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        what = (f"non-finite gradient (norm {vals[len(TERMS)]}; e.g. {', '.join(names[:3]) or 'unknown'}) with a "
                f"finite loss {terms['total']:.4g}")
    lrs = ", ".join(f"{g.get('name', i)} {g['lr']:g}" for i, g in enumerate(optim.param_groups))
    kept = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written"
    return (f"training stopped at epoch {epoch + 1}, step {step}: {what}; learning rates: {lrs}. Nothing of this "
            f"epoch was saved ({kept}); lower --lr / --router-lr, set --grad-clip, or check the data")


def _lost_peer(err: RuntimeError) -> bool:
    """Whether ``err`` is a collective that failed because another rank went away (gloo and
    NCCL report it as a RuntimeError from inside backward or all_reduce)."""
    text = str(err)
    return isinstance(err, torch.distributed.DistError) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted",
                            "ProcessGroupNCCL", "ProcessGroupGloo"))


def _quiet(*_args, **_kwargs):
    pass


def train(cfg: TrainConfig, resume: str | None = None, log=print, max_steps: int | None = None) -> dict:
    """Train per ``cfg``; returns ``{"best", "last", "best_score", "best_epoch", "history", "config"}``
    (``best`` None when no checkpoint of the best epoch is available, see below).

    ``resume``: a ``last.pt`` (or ``best.pt``) to continue from — the config stored in it is
    used, except :data:`RESUME_SETTINGS` (``epochs`` may only grow). ``max_steps`` stops
    after that many optimiser steps (tests). Under torchrun this is one rank of the job.
    """
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt is not None:
        cfg = _resume_config(cfg, ckpt, resume)
    cfg.validate()
    ctx = context(cfg.device)
    ctx.check_same_config(cfg.to_dict())
    log = log if ctx.is_main else _quiet
    for note in ctx.notes:
        log(f"note: {note}")
    paths = {"last": os.path.join(cfg.out_dir, "last.pt"), "best": os.path.join(cfg.out_dir, "best.pt")}
    with contextlib.ExitStack() as stack:
        error = None
        try:  # everything that can fail before training, on every rank; then all agree
            set_threads(cfg.threads)
            dtype = check_precision(cfg.dtype, ctx.device)
            _check_speed_settings(cfg, ctx, dtype)
            _check_backend(cfg, ctx.device, dtype)
            if ckpt is not None:
                _check_resumed_weights(cfg, ckpt, resume)
            if ctx.is_main:
                stack.enter_context(run_lock(cfg.out_dir))
            seed_everything(cfg.seed)
            splits = splits_for(cfg)
            if splits.valid.num_utterances() == 0:
                raise ValueError(f"the validation split of {splits.train.name} has no utterances: model selection "
                                 "needs some (use --select-on test, or more data)")
        except (ValueError, TypeError, OSError, RuntimeError) as err:
            error = err
        ctx.settle(error)
        return _run(cfg, ctx, splits, dtype, ckpt, resume, paths, log, max_steps)


def _run(cfg, ctx, splits, dtype, ckpt, resume, paths, log, max_steps) -> dict:
    device = ctx.device
    for note in splits.notes:
        log(f"note: {note}")
    raw = ITEACHNet.from_config(cfg.model, splits.input_dims, splits.num_classes).to(device)
    optim = make_optimizer(raw, cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == "fp16")
    gens = {"shuffle": torch.Generator().manual_seed(cfg.seed + 1),  # batch order
            "mask": torch.Generator().manual_seed(cfg.seed + 2)}  # batch rates and masks
    select_rates = (cfg.rate,) if cfg.strategy == "fixed" else tuple(cfg.select_rates)
    start, best_score, best_epoch, history = 0, -math.inf, -1, []
    if ckpt is not None:
        data = ckpt.get("data") or {}
        if list(data.get("input_dims", splits.input_dims)) != list(splits.input_dims):
            raise ValueError(f"{resume}: trained on features of dims {data['input_dims']}, but the data now has "
                             f"{list(splits.input_dims)}")
        load_weights(raw, ckpt["model"], resume)
        optim.load_state_dict(ckpt["optimizer"])
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        own = ckpt.get("rng_ranks") or []
        set_rng_state(own[ctx.rank] if len(own) == ctx.world else ckpt["rng"], gens)
        if ctx.parallel and len(own) != ctx.world:
            log(f"note: {resume} was written by {len(own) or 1} process(es), this job has {ctx.world}: the data "
                "order and masks continue exactly, dropout draws do not")
        start, best_score, best_epoch = ckpt["epoch"] + 1, ckpt["best_score"], ckpt["best_epoch"]
        history = list(ckpt["history"])
        log(f"resumed from {resume} at epoch {start + 1}")
        best_file = _carry_best(resume, paths["best"], best_epoch, log if ctx.is_main else None)
    else:
        best_file = None  # the file known to hold the weights of best_epoch
    net = ctx.wrap(raw)

    def payload(epoch: int, rngs: list) -> dict:  # a checkpoint (rank 0 writes it)
        out = dict(model=raw.state_dict(), optimizer=optim.state_dict(), scaler=scaler.state_dict(),
                   config=cfg.to_dict(), epoch=epoch, best_score=best_score, best_epoch=best_epoch, history=history,
                   rng=rngs[0], world=ctx.world,
                   data={"name": splits.train.name, "input_dims": list(splits.input_dims),
                         "num_classes": splits.num_classes, "class_names": list(splits.class_names)})
        if ctx.parallel:
            out["rng_ranks"] = rngs  # each rank's dropout stream continues exactly on resume
        return out

    step = (GraphedStep if cfg.cuda_graphs else Step)(net, raw, optim, scaler, cfg, ctx, dtype)
    n_params = sum(p.numel() for p in raw.parameters())
    shape = (f"one {raw.student.num_layers}x{raw.student.mixer.upper()} model" if raw.teacher is raw.student else
             f"teacher {raw.teacher.num_layers}x{raw.teacher.mixer.upper()}, student "
             f"{raw.student.num_layers}x{raw.student.mixer.upper()}")
    log(f"{splits.summary()}\nITEACH-Net {cfg.model.framework}: {shape}, "
        f"{n_params / 1e6:.2f}M parameters, dim {cfg.model.dim}, ecce {cfg.model.ecce}; strategy {cfg.strategy}; "
        f"device {device}, dtype {dtype}"
        + (f", {ctx.world} processes" if ctx.parallel else "")
        + (", compiled" if cfg.compile else "") + (", CUDA graphs" if cfg.cuda_graphs else "")
        + f"; selection: valid WAF averaged over rates {list(select_rates)}")
    train_set = splits.train
    longest = max(len(c["labels"]) for c in train_set)
    share = -(-cfg.batch_size // ctx.world)  # a rank's rows of a full global batch
    fixed = cfg.compile or cfg.cuda_graphs
    valid_part = ctx.shard(splits.valid.conversations) if ctx.parallel else None
    steps, last_good = 0, resume
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        raw.train()
        sums, count, rates, samples = dict.fromkeys(TERMS, 0.0), 0, [], 0
        batches = BatchSampler(RandomSampler(train_set, generator=gens["shuffle"]), cfg.batch_size, drop_last=False)
        bar = batches
        if cfg.progress and ctx.is_main:
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr,
                       dynamic_ncols=True)
        for idx in bar:
            rate = rate_for(cfg, epoch, gens["mask"])
            rates.append(rate)
            shape = None
            if cfg.cuda_graphs:
                shape = (share, longest)
            elif fixed:
                shape = (share, length_bucket(max(len(train_set[i]["labels"]) for i in idx), longest))
            try:
                vals = step(make_batch(train_set, idx, rate, gens["mask"], ctx, raw.loss_counts, shape))
            except RuntimeError as err:
                if not (ctx.parallel and _lost_peer(err)):
                    raise
                raise DistributedError(f"another process of this job stopped (a collective at epoch {epoch + 1}, "
                                       f"step {steps + 1} failed: {str(err).splitlines()[0][:200]}); its own "
                                       "message, and torchrun's summary, name it") from None
            steps += 1
            if not all(map(math.isfinite, vals)):
                raise TrainingDiverged(_diverged(vals, epoch, steps, raw, optim, last_good))
            for k, v in zip(TERMS, vals):
                sums[k] += v
            count += 1
            samples += len(idx)
            if cfg.progress and ctx.is_main:
                bar.set_postfix(loss=f"{sums['total'] / count:.4f}", rate=f"{rate:.2f}")
            if max_steps is not None and steps >= max_steps:
                break
        train_secs = time.time() - t0
        stats = {k: v / max(count, 1) for k, v in sums.items()}
        scores = evaluate_rates(raw, splits.valid, select_rates, cfg.eval_seed, cfg.batch_size, device, dtype,
                                part=valid_part, gather=ctx.gather_predictions if ctx.parallel else None)
        score = float(np.mean([r["waf"] for r in scores]))
        if not math.isfinite(score):
            raise ValueError(f"epoch {epoch + 1}: the validation WAF is {score} at rates {list(select_rates)} "
                             f"({[r['waf'] for r in scores]}): model selection needs a finite score (a regression "
                             "split whose labels are all 0 has no polarity to score)")
        improved = score > best_score
        if improved:
            best_score, best_epoch = score, epoch
        rate_desc = (f"rate {rates[0]:.2f}" if cfg.strategy != "random" else
                     f"rates {min(rates):.2f}-{max(rates):.2f}") if rates else "no batches"
        history.append({"epoch": epoch + 1, **{k: stats[k] for k in ("total", "emo", "rec")}, "valid_waf": score,
                        "seconds": time.time() - t0, "train_seconds": train_secs, "train_conversations": samples,
                        "processes": ctx.world})
        rngs = ctx.gather(rng_state(gens))
        if ctx.is_main:
            save_checkpoint(paths["last"], **payload(epoch, rngs))
            if improved:
                save_checkpoint(paths["best"], **payload(epoch, rngs))
        if improved:
            best_file = paths["best"]
        last_good = paths["last"]
        log(_log_line(epoch, cfg.epochs, stats, score, best_score, time.time() - t0, rate_desc,
                      samples / max(train_secs, 1e-9)))
        if max_steps is not None and steps >= max_steps:
            break
    if not history and best_epoch < 0:
        # nothing trained (epochs 0): still leave loadable checkpoints of the initial weights
        best_file, rngs = paths["best"], ctx.gather(rng_state(gens))
        if ctx.is_main:
            save_checkpoint(paths["best"], **payload(start - 1, rngs))
            save_checkpoint(paths["last"], **payload(start - 1, rngs))
        log("no epoch trained: best.pt and last.pt hold the initial weights")
    ctx.barrier()  # the files are complete before any rank returns
    if best_epoch >= 0:
        where = best_file or (f"not available: no epoch of this run improved on it, and no best.pt of epoch "
                              f"{best_epoch + 1} was found next to {resume}")
        log(f"best epoch {best_epoch + 1} (valid WAF {best_score:.2f}); best: {where}; last: {paths['last']}")
    return {**paths, "best": best_file, "best_score": best_score, "best_epoch": best_epoch + 1,
            "history": history, "config": cfg, "rank": ctx.rank}


def _carry_best(resume: str, best_path: str, best_epoch: int, log) -> str | None:
    """The file holding the weights of ``best_epoch`` for a run resumed from ``resume`` into
    the folder of ``best_path``: that folder's own (same folder), or a copy of the one next to
    ``resume`` if it is of that epoch, else None — ``best.pt`` never holds other weights.
    ``log`` None: another rank, which only computes the answer."""
    src = os.path.join(os.path.dirname(os.path.abspath(resume)), "best.pt")
    if best_epoch < 0:
        return None
    if os.path.abspath(src) == os.path.abspath(best_path):
        return best_path if os.path.isfile(best_path) else None
    if not (os.path.isfile(src) and load_checkpoint(src).get("epoch") == best_epoch):
        return None
    if log is not None:
        with open(src, "rb") as f:
            atomic_write(best_path, f.read())
        log(f"best.pt of epoch {best_epoch + 1} copied from {src}")
    return best_path
