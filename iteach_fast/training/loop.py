"""Inverted Teacher-Student training (paper §3.2, §3.5, §5.4.2; docs/training.md).

Each step: a batch of complete conversations; a fresh missing-modality mask at the
strategy's rate; the teacher sees the complete batch, the student the masked copy;
``loss = L_emo + L_rec`` (:meth:`ITEACHNet.loss`); AdamW with the router at its own lr
(the step itself: :mod:`iteach_fast.training.step`). A run is :func:`train`'s checks at the
door, then a :class:`TrainingRun`: built, restored when resumed, trained epoch by epoch
(each: its steps, then validation, best / last checkpoints), or, with no epoch to train, its
initial weights saved.

Strategies: ``fixed`` (one rate, IME), ``random`` (each batch U[0, max_rate]),
``progressive`` (0 %, + ``progressive_step`` every ``progressive_every`` epochs, capped).

Model selection: after each epoch, the student's WAF on the validation split averaged
over ``select_rates`` (default UME's 0.0..0.7; the fixed strategy: its own rate), with
fixed-seed masks; ``best.pt`` is written only when an epoch improves on the best recorded
so far (a resumed run carries that record), ``last.pt`` after every epoch. Both are full
checkpoints (model, optimiser, config, RNG states of torch / numpy / python and the two
generators, history; with ``ema`` the model validated and saved is the weights' moving
average, and ``trained_model`` holds the trained weights), written atomically
(:mod:`iteach_fast.training.checkpoint`); ``resume`` continues bit-identically. A resumed
run's folder must agree with itself: ``best.pt`` holds the epoch ``last.pt`` records as the
best; a run stopped between the two writes of one epoch (``last.pt`` of the new best epoch,
``best.pt`` of an older one) is repaired from ``last.pt``, any other disagreement refused,
and either is said. Interrupting a run (Ctrl-C) raises :class:`Interrupted`, whose message is
the command that continues it.

What makes a run trustworthy, in the order it is checked: every setting validated, the
backend / device / dtype combination asked of the registry, the weights of a resumed
checkpoint compared with its config and checked finite, the output folder proven writable
and locked, its ``best.pt`` checked against the resumed ``last.pt`` — all before any data is
read; the data checked (an fp16 run: every feature after its cast to float16); then, each
step, the loss terms and the gradient norm are folded into one small device tensor read once
(the only host synchronisation of a step): a non-finite value stops the run at once, and
nothing of that epoch is saved.

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
from torch.utils.data import BatchSampler, RandomSampler

from ..data.sources import splits_for
from ..nn.model import ITEACHNet, roles
from ..ops import backends
from .averaging import WeightAverage
from .checkpoint import (
    CheckpointError,
    atomic_write,
    check_finite,
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
from .runtime import check_precision, op_dtype, seed_everything, set_threads
from .step import GRAPH_WARMUP, TERMS, Batch, GraphedStep, Step, length_bucket, make_batch, make_optimizer, rate_for
from .validation import evaluate_rates

__all__ = ["train", "TrainingRun", "EpochStats", "TrainingDiverged", "Interrupted", "RESUME_SETTINGS",
           "check_backend", "check_compute",
           # the step's, re-exported: bench/model_bench.py imports them from here
           "Batch", "GraphedStep", "Step", "make_optimizer", "GRAPH_WARMUP"]

#: what a resumed run may change; everything else is the checkpoint's
RESUME_SETTINGS = ("epochs", "out_dir", "progress", "compile", "cuda_graphs", "threads", "device")


class TrainingDiverged(ValueError):
    """A loss term or the gradient became NaN or infinite; nothing of that epoch was saved."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C; the message says how to continue it."""


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


def check_backend(cfg: TrainConfig, device: torch.device, dtype: str) -> None:
    """Ask the registry for every fused op the model will call (one clear line now, rather
    than an error at the first forward)."""
    mixers = {mixer for _, mixer in roles(cfg.model)}
    used = ("ecce_attention",) + (("routed_mixture",) if "nas" in mixers else ())
    for op in used:
        try:
            backends.select(op, cfg.model.backend, device, op_dtype(dtype))
        except (ValueError, TypeError, RuntimeError) as err:
            raise ValueError(f"--backend {cfg.model.backend} on {device} ({dtype}): {err}") from None


def check_compute(cfg: TrainConfig, device: torch.device) -> str:
    """The precision ``cfg`` asks for on ``device`` and every fused op's backend there, checked
    without reading any data; returns the precision."""
    dtype = check_precision(cfg.dtype, device)
    check_backend(cfg, device, dtype)
    return dtype


def _resume_config(cfg: TrainConfig, ckpt: dict, path: str) -> TrainConfig:
    require_keys(ckpt, path, ("model", "optimizer", "rng", "epoch", "best_score", "best_epoch", "history"),
                 "resume training")
    stored = TrainConfig.from_dict(ckpt["config"], source=path)
    keep = {k: getattr(cfg, k) for k in RESUME_SETTINGS}
    return stored.replace(**{**keep, "epochs": max(cfg.epochs, stored.epochs)})


def _check_resumed_weights(cfg: TrainConfig, ckpt: dict, path: str) -> None:
    """The checkpoint's weights (finite, and as the model its config builds), before any data is read."""
    check_finite(ckpt["model"], path)
    data = ckpt.get("data") or {}
    if "input_dims" not in data or "num_classes" not in data:
        return  # an old checkpoint: checked when the weights are loaded
    with torch.device("meta"):
        net = ITEACHNet.from_config(cfg.model, data["input_dims"], data["num_classes"])
    check_weights(net.state_dict(), ckpt["model"], path)


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
            dtype = check_compute(cfg, ctx.device)
            _check_speed_settings(cfg, ctx, dtype)
            if ckpt is not None:
                _check_resumed_weights(cfg, ckpt, resume)
            if ctx.is_main:
                stack.enter_context(run_lock(cfg.out_dir))
            best_file = (TrainingRun.agree_best(resume, ckpt, paths["best"], log if ctx.is_main else None)
                         if ckpt is not None else None)
            seed_everything(cfg.seed)
            splits = splits_for(cfg)
            if splits.valid.num_utterances() == 0:
                raise ValueError(f"the validation split of {splits.train.name} has no utterances: model selection "
                                 "needs some (use --select-on test, or more data)")
            if dtype == "fp16":  # the features as the model computes with them
                splits.check_dtype(np.float16)
        except (ValueError, TypeError, OSError, RuntimeError) as err:
            error = err
        ctx.settle(error)
        return _run(cfg, ctx, splits, dtype, ckpt, resume, best_file, paths, log, max_steps)


# ------------------------------------------------------------------ the run

class EpochStats(NamedTuple):
    """One epoch's steps: the :data:`TERMS` averaged over them, each batch's missing rate, the
    conversations trained on, when the epoch began and the seconds its steps took."""
    means: dict
    rates: list
    conversations: int
    started: float
    seconds: float


class TrainingRun:
    """One run's model, optimiser and generators, and what it carries from epoch to epoch and
    into its checkpoints (the best score and epoch, the history): :meth:`restore` (resume),
    :meth:`train_epoch` (the steps), :meth:`select_and_save` (validation, ``last.pt`` and an
    improved ``best.pt``), :meth:`save_initial` (no epoch to train), :meth:`summary`."""

    def __init__(self, cfg: TrainConfig, ctx: Context, splits, dtype: str, paths: dict, log):
        self.cfg, self.ctx, self.splits, self.dtype, self.paths, self.log = cfg, ctx, splits, dtype, paths, log
        self.raw = ITEACHNet.from_config(cfg.model, splits.input_dims, splits.num_classes).to(ctx.device)
        self.optim = make_optimizer(self.raw, cfg, ctx.device)
        # what is validated and saved as the model: the trained weights, or their moving average
        self.average = WeightAverage(self.raw, cfg.ema) if cfg.ema > 0 else None
        self.evaluated = self.average.model if self.average is not None else self.raw
        self.scaler = torch.amp.GradScaler("cuda", enabled=dtype == "fp16")
        self.gens = {"shuffle": torch.Generator().manual_seed(cfg.seed + 1),  # batch order
                     "mask": torch.Generator().manual_seed(cfg.seed + 2)}  # batch rates and masks
        self.select_rates = (cfg.rate,) if cfg.strategy == "fixed" else tuple(cfg.select_rates)
        self.start, self.best_score, self.best_epoch, self.history = 0, -math.inf, -1, []
        self.best_file = None  # the file known to hold the weights of best_epoch
        self.resumed_from = None
        self.last_good = None  # the newest checkpoint a divergence leaves intact
        self.steps = 0
        self.longest = max(len(c["labels"]) for c in splits.train)
        self.share = -(-cfg.batch_size // ctx.world)  # a rank's rows of a full global batch
        self.valid_part = ctx.shard(splits.valid.conversations) if ctx.parallel else None

    def restore(self, ckpt: dict, path: str, best_file: str | None) -> None:
        """Continue from the checkpoint ``ckpt`` read from ``path``: weights, optimiser, scaler,
        every generator, the epoch and the best so far; ``best_file``: the file holding the best
        epoch's weights in this run's folder (:meth:`agree_best`), or None."""
        data = ckpt.get("data") or {}
        if list(data.get("input_dims", self.splits.input_dims)) != list(self.splits.input_dims):
            raise ValueError(f"{path}: trained on features of dims {data['input_dims']}, but the data now has "
                             f"{list(self.splits.input_dims)}")
        if self.average is not None:
            require_keys(ckpt, path, ("trained_model",), "resume a run that averages its weights (ema)")
            load_weights(self.raw, ckpt["trained_model"], path)
            load_weights(self.average.model, ckpt["model"], path)
        else:
            load_weights(self.raw, ckpt["model"], path)
        self.optim.load_state_dict(ckpt["optimizer"])
        if "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        ctx = self.ctx
        own = ckpt.get("rng_ranks") or []
        set_rng_state(own[ctx.rank] if len(own) == ctx.world else ckpt["rng"], self.gens)
        if ctx.parallel and len(own) != ctx.world:
            self.log(f"note: {path} was written by {len(own) or 1} process(es), this job has {ctx.world}: the data "
                     "order and masks continue exactly, dropout draws do not")
        self.start, self.best_score, self.best_epoch = ckpt["epoch"] + 1, ckpt["best_score"], ckpt["best_epoch"]
        self.history = list(ckpt["history"])
        self.log(f"resumed from {path} at epoch {self.start + 1}")
        self.best_file = best_file
        self.resumed_from = self.last_good = path

    @staticmethod
    def agree_best(resume: str, ckpt: dict, best_path: str, log) -> str | None:
        """The file holding the weights of the best epoch that ``ckpt`` (read from ``resume``)
        records, in the folder of ``best_path``, made to agree with it; None when there is none.

        The ``best.pt`` next to ``resume`` is used (copied when the run moves to another folder)
        if it holds that epoch. If not, and ``resume`` itself holds it (a run stopped between
        writing ``last.pt`` and ``best.pt`` of one epoch), ``best.pt`` is repaired from it. A
        ``best.pt`` of another epoch in the run's own folder that cannot be repaired is refused
        (a :class:`~iteach_fast.training.checkpoint.CheckpointError`): it would be evaluated as
        the best. ``log`` None: another rank, which computes the answer and writes nothing."""
        best_epoch = ckpt["best_epoch"]
        if best_epoch < 0:
            return None
        src = os.path.join(os.path.dirname(os.path.abspath(resume)), "best.pt")
        same = os.path.abspath(src) == os.path.abspath(best_path)
        held = load_checkpoint(src).get("epoch") if os.path.isfile(src) else None
        if held == best_epoch:
            if not same and log is not None:
                with open(src, "rb") as f:
                    atomic_write(best_path, f.read())
                log(f"best.pt of epoch {best_epoch + 1} copied from {src}")
            return best_path
        if ckpt["epoch"] == best_epoch:
            if log is not None:
                with open(resume, "rb") as f:
                    atomic_write(best_path, f.read())
                found = f"held epoch {held + 1}" if held is not None else "was missing"
                log(f"note: {src} {found}, but {resume} records epoch {best_epoch + 1} as the best and holds it (the "
                    f"run stopped between writing the two): best.pt repaired from it")
            return best_path
        if same and held is not None:
            raise CheckpointError(
                f"{src}: holds epoch {held + 1}, but {resume} records epoch {best_epoch + 1} as the best (and holds "
                f"epoch {ckpt['epoch'] + 1}): the run folder's files disagree; remove {src} to resume without a best "
                "checkpoint (the next improving epoch writes one), or put back the best.pt of that run")
        return None

    def resume_hint(self) -> str:
        """How to continue this run from its newest checkpoint (after an interruption)."""
        last = self.last_good
        if last is None:
            return f"no epoch finished in {self.cfg.out_dir}, nothing to resume: run the same command again"
        flags = [f"--resume {last}"]
        if os.path.abspath(os.path.dirname(os.path.abspath(last))) != os.path.abspath(self.cfg.out_dir):
            flags.append(f"--out-dir {self.cfg.out_dir}")
        if last == self.resumed_from:  # the checkpoint resumed from records its own epochs
            flags.append(f"--epochs {self.cfg.epochs}")
        return f"{last} holds the last finished epoch; continue with: iteach-fast train {' '.join(flags)}"

    def describe(self) -> str:
        """The data, the model and the settings, for the log."""
        cfg, raw, ctx = self.cfg, self.raw, self.ctx
        n_params = sum(p.numel() for p in raw.parameters())
        shape = (f"one {raw.student.num_layers}x{raw.student.mixer.upper()} model" if raw.teacher is raw.student else
                 f"teacher {raw.teacher.num_layers}x{raw.teacher.mixer.upper()}, student "
                 f"{raw.student.num_layers}x{raw.student.mixer.upper()}")
        return (f"{self.splits.summary()}\nITEACH-Net {cfg.model.framework}: {shape}, "
                f"{n_params / 1e6:.2f}M parameters, dim {cfg.model.dim}, ecce {cfg.model.ecce}"
                + "".join(f", {o}" for o in cfg.model.options())
                + f"; strategy {cfg.strategy}; device {ctx.device}, dtype {self.dtype}"
                + (f", {ctx.world} processes" if ctx.parallel else "")
                + (", compiled" if cfg.compile else "") + (", CUDA graphs" if cfg.cuda_graphs else "")
                + f"; selection: valid WAF averaged over rates {list(self.select_rates)}"
                + (f", of the weights' moving average (ema {cfg.ema})" if cfg.ema > 0 else ""))

    def train_epoch(self, epoch: int, step: Step, max_steps: int | None) -> EpochStats:
        """One epoch of optimiser steps (fewer once ``max_steps`` steps are done in all); a
        non-finite loss or gradient stops the run, a lost peer is named as such."""
        cfg, ctx, train_set = self.cfg, self.ctx, self.splits.train
        t0 = time.time()
        self.raw.train()
        sums, count, rates, samples = dict.fromkeys(TERMS, 0.0), 0, [], 0
        batches = BatchSampler(RandomSampler(train_set, generator=self.gens["shuffle"]), cfg.batch_size,
                               drop_last=False)
        bar = batches
        if cfg.progress and ctx.is_main:
            from tqdm import tqdm  # the progress bar: only where one is shown

            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr,
                       dynamic_ncols=True, disable=None)  # None: no bar when stderr is not a terminal (a log file)
        for idx in bar:
            rate = rate_for(cfg, epoch, self.gens["mask"])
            rates.append(rate)
            shape = None
            if cfg.cuda_graphs:
                shape = (self.share, self.longest)
            elif cfg.compile:
                shape = (self.share, length_bucket(max(len(train_set[i]["labels"]) for i in idx), self.longest))
            try:
                vals = step(make_batch(train_set, idx, rate, self.gens["mask"], ctx, self.raw.loss_counts, shape,
                                       cfg.outage_prob))
            except RuntimeError as err:
                if not (ctx.parallel and _lost_peer(err)):
                    raise
                raise DistributedError(f"another process of this job stopped (a collective at epoch {epoch + 1}, "
                                       f"step {self.steps + 1} failed: {str(err).splitlines()[0][:200]}); its own "
                                       "message, and torchrun's summary, name it") from None
            self.steps += 1
            if not all(map(math.isfinite, vals)):
                raise TrainingDiverged(_diverged(vals, epoch, self.steps, self.raw, self.optim, self.last_good))
            if self.average is not None:
                self.average.update()
            for k, v in zip(TERMS, vals):
                sums[k] += v
            count += 1
            samples += len(idx)
            if cfg.progress and ctx.is_main:
                bar.set_postfix(loss=f"{sums['total'] / count:.4f}", rate=f"{rate:.2f}")
            if max_steps is not None and self.steps >= max_steps:
                break
        return EpochStats({k: v / max(count, 1) for k, v in sums.items()}, rates, samples, t0, time.time() - t0)

    def select_and_save(self, epoch: int, stats: EpochStats) -> None:
        """The student's validation WAF over the selection rates; ``last.pt``, and ``best.pt``
        when it improves on the best so far (rank 0 writes them); the epoch's log line."""
        cfg, ctx = self.cfg, self.ctx
        scores = evaluate_rates(self.evaluated, self.splits.valid, self.select_rates, cfg.eval_seed, cfg.batch_size,
                                ctx.device, self.dtype, part=self.valid_part,
                                gather=ctx.gather_predictions if ctx.parallel else None)
        score = float(np.mean([r["waf"] for r in scores]))
        if not math.isfinite(score):
            raise ValueError(f"epoch {epoch + 1}: the validation WAF is {score} at rates {list(self.select_rates)} "
                             f"({[r['waf'] for r in scores]}): model selection needs a finite score (a regression "
                             "split whose labels are all 0 has no polarity to score)")
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch = score, epoch
        rates = stats.rates
        rate_desc = (f"rate {rates[0]:.2f}" if cfg.strategy != "random" else
                     f"rates {min(rates):.2f}-{max(rates):.2f}") if rates else "no batches"
        self.history.append({"epoch": epoch + 1, **{k: stats.means[k] for k in ("total", "emo", "rec")},
                             "valid_waf": score, "seconds": time.time() - stats.started,
                             "train_seconds": stats.seconds, "train_conversations": stats.conversations,
                             "processes": ctx.world})
        rngs = ctx.gather(rng_state(self.gens))
        if ctx.is_main:
            save_checkpoint(self.paths["last"], **self.payload(epoch, rngs))
            if improved:
                save_checkpoint(self.paths["best"], **self.payload(epoch, rngs))
        if improved:
            self.best_file = self.paths["best"]
        self.last_good = self.paths["last"]
        self.log(_log_line(epoch, cfg.epochs, stats.means, score, self.best_score, time.time() - stats.started,
                           rate_desc, stats.conversations / max(stats.seconds, 1e-9)))

    def save_initial(self) -> None:
        """Nothing trained (epochs 0): still leave loadable checkpoints of the initial weights."""
        self.best_file, rngs = self.paths["best"], self.ctx.gather(rng_state(self.gens))
        if self.ctx.is_main:
            save_checkpoint(self.paths["best"], **self.payload(self.start - 1, rngs))
            save_checkpoint(self.paths["last"], **self.payload(self.start - 1, rngs))
        self.log("no epoch trained: best.pt and last.pt hold the initial weights")

    def payload(self, epoch: int, rngs: list) -> dict:
        """The checkpoint of ``epoch`` (rank 0 writes it); ``rngs``: every rank's generators."""
        splits = self.splits
        out = dict(model=self.evaluated.state_dict(), optimizer=self.optim.state_dict(),
                   scaler=self.scaler.state_dict(), config=self.cfg.to_dict(), epoch=epoch,
                   best_score=self.best_score, best_epoch=self.best_epoch, history=self.history, rng=rngs[0],
                   world=self.ctx.world,
                   data={"name": splits.train.name, "input_dims": list(splits.input_dims),
                         "num_classes": splits.num_classes, "class_names": list(splits.class_names)})
        if self.average is not None:  # "model" holds the average (what is evaluated), this what is trained
            out["trained_model"] = self.raw.state_dict()
        if self.ctx.parallel:
            out["rng_ranks"] = rngs  # each rank's dropout stream continues exactly on resume
        return out

    def summary(self) -> dict:
        """What :func:`train` returns; logs the best epoch and where its weights are."""
        if self.best_epoch >= 0:
            where = self.best_file or (f"not available: no epoch of this run improved on it, and no best.pt of "
                                       f"epoch {self.best_epoch + 1} was found next to {self.resumed_from}")
            self.log(f"best epoch {self.best_epoch + 1} (valid WAF {self.best_score:.2f}); best: {where}; "
                     f"last: {self.paths['last']}")
        return {**self.paths, "best": self.best_file, "best_score": self.best_score,
                "best_epoch": self.best_epoch + 1, "history": self.history, "config": self.cfg,
                "rank": self.ctx.rank}


def _run(cfg, ctx, splits, dtype, ckpt, resume, best_file, paths, log, max_steps) -> dict:
    for note in splits.notes:
        log(f"note: {note}")
    run = TrainingRun(cfg, ctx, splits, dtype, paths, log)
    if ckpt is not None:
        run.restore(ckpt, resume, best_file)
    step = (GraphedStep if cfg.cuda_graphs else Step)(ctx.wrap(run.raw), run.raw, run.optim, run.scaler, cfg, ctx,
                                                      dtype)
    log(run.describe())
    try:
        for epoch in range(run.start, cfg.epochs):
            run.select_and_save(epoch, run.train_epoch(epoch, step, max_steps))
            if max_steps is not None and run.steps >= max_steps:
                break
    except KeyboardInterrupt:
        raise Interrupted(run.resume_hint()) from None
    if not run.history and run.best_epoch < 0:
        run.save_initial()
    ctx.barrier()  # the files are complete before any rank returns
    return run.summary()
