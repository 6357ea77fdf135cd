"""Inverted Teacher-Student training (paper §3.2, §3.5, §5.4.2; DESIGN §2).

Each step: a batch of complete conversations; a fresh missing-modality mask at the
strategy's rate; the teacher sees the complete batch, the student the masked copy;
``loss = L_emo + L_rec`` (:meth:`ITEACHNet.loss`); AdamW with the router at its own lr.

Strategies: ``fixed`` (one rate, IME), ``random`` (each batch U[0, max_rate]),
``progressive`` (0 %, + ``progressive_step`` every ``progressive_every`` epochs, capped).

Model selection: after each epoch, the student's WAF on the validation split averaged
over ``select_rates`` (default UME's 0.0..0.7; the fixed strategy: its own rate), with
fixed-seed masks; the best epoch is ``best.pt``, the latest ``last.pt``. Both are full
checkpoints (model, optimiser, config, RNG states of torch / numpy / python and the two
generators, history), written atomically (:mod:`iteach_fast.checkpoint`); ``resume``
continues bit-identically.
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .choices import MODALITIES
from .config import TrainConfig
from .data import collate, splits_for
from .evaluate import evaluate_rates
from .masking import apply_mask, sample_present
from .model import ITEACHNet
from .runtime import autocast, check_precision, resolve_device, seed_everything, set_threads

__all__ = ["train", "rate_for"]


def rate_for(cfg: TrainConfig, epoch: int, generator: torch.Generator) -> float:
    """The missing rate of one training batch (epoch counted from 0)."""
    if cfg.strategy == "fixed":
        return cfg.rate
    if cfg.strategy == "random":
        return float(torch.rand((), generator=generator)) * cfg.max_rate
    return min(cfg.progressive_step * (epoch // cfg.progressive_every), cfg.max_rate)


# ------------------------------------------------------------------ the loop

def _log_line(epoch, epochs, stats, score, best, secs, rate_desc):
    return (f"epoch {epoch + 1:3d}/{epochs}  loss {stats['total']:.4f} (emo {stats['emo']:.4f}, "
            f"rec {stats['rec']:.4f})  {rate_desc}  valid WAF {score:6.2f}  best {best:6.2f}  {secs:5.1f}s")


def train(cfg: TrainConfig, resume: str | None = None, log=print, max_steps: int | None = None) -> dict:
    """Train per ``cfg``; returns ``{"best", "last", "best_score", "best_epoch", "history"}``.

    ``resume``: a ``last.pt`` (or ``best.pt``) to continue from — the config stored in it is
    used (``epochs`` may be raised by ``cfg``). ``max_steps`` stops after that many
    optimiser steps (tests).
    """
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt is not None:
        stored = TrainConfig.from_dict(ckpt["config"], source=resume)
        cfg = stored.replace(epochs=max(cfg.epochs, stored.epochs), out_dir=cfg.out_dir, progress=cfg.progress)
    cfg.validate()
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    dtype = check_precision(cfg.dtype, device)
    seed_everything(cfg.seed)
    splits = splits_for(cfg)
    for note in splits.notes:
        log(f"note: {note}")
    net = ITEACHNet.from_config(cfg.model, splits.input_dims, splits.num_classes).to(device)
    optim = torch.optim.AdamW(net.parameter_groups(cfg.lr, cfg.router_lr, cfg.weight_decay))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == "fp16")
    gens = {"shuffle": torch.Generator().manual_seed(cfg.seed + 1),  # batch order
            "mask": torch.Generator().manual_seed(cfg.seed + 2)}  # batch rates and masks
    select_rates = (cfg.rate,) if cfg.strategy == "fixed" else tuple(cfg.select_rates)
    start, best_score, best_epoch, history = 0, -math.inf, -1, []
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optim.load_state_dict(ckpt["optimizer"])
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"], gens)
        start, best_score, best_epoch = ckpt["epoch"] + 1, ckpt["best_score"], ckpt["best_epoch"]
        history = list(ckpt["history"])
        log(f"resumed from {resume} at epoch {start + 1}")
    os.makedirs(cfg.out_dir, exist_ok=True)
    paths = {"last": os.path.join(cfg.out_dir, "last.pt"), "best": os.path.join(cfg.out_dir, "best.pt")}
    n_params = sum(p.numel() for p in net.parameters())
    log(f"{splits.summary()}\nITEACH-Net {cfg.model.framework}: teacher {net.teacher.num_layers}x"
        f"{net.teacher.mixer.upper()}, student {net.student.num_layers}x{net.student.mixer.upper()}, "
        f"{n_params / 1e6:.2f}M parameters, dim {cfg.model.dim}, ecce {cfg.model.ecce}; strategy {cfg.strategy}; "
        f"device {device}, dtype {dtype}; selection: valid WAF averaged over rates {list(select_rates)}")
    loader = DataLoader(splits.train, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate,
                        generator=gens["shuffle"])
    steps = 0
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        net.train()
        sums, count, rates = {"total": 0.0, "emo": 0.0, "rec": 0.0}, 0, []
        bar = loader
        if cfg.progress:
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr,
                       dynamic_ncols=True)
        for batch in bar:
            rate = rate_for(cfg, epoch, gens["mask"])
            rates.append(rate)
            present = sample_present(batch["lengths"], batch["labels"].shape[1], rate, gens["mask"])
            inc = apply_mask(batch, present)
            lengths, labels, present = batch["lengths"].to(device), batch["labels"].to(device), present.to(device)
            complete = tuple(batch[m].to(device) for m in MODALITIES)
            incomplete = tuple(inc[m].to(device) for m in MODALITIES)
            with autocast(device, dtype):
                t_out, s_out = net(complete, incomplete, lengths, present)
                losses = net.loss(t_out, s_out, labels, lengths, present)
            optim.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optim)
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            scaler.step(optim)
            scaler.update()
            for k in sums:
                sums[k] += float(losses[k].detach())
            count += 1
            steps += 1
            if cfg.progress:
                bar.set_postfix(loss=f"{sums['total'] / count:.4f}", rate=f"{rate:.2f}")
            if max_steps is not None and steps >= max_steps:
                break
        stats = {k: v / max(count, 1) for k, v in sums.items()}
        rows = evaluate_rates(net, splits.valid, select_rates, cfg.eval_seed, cfg.batch_size, device, dtype)
        score = float(np.nanmean([r["waf"] for r in rows]))
        improved = score > best_score
        if improved:
            best_score, best_epoch = score, epoch
        rate_desc = (f"rate {rates[0]:.2f}" if cfg.strategy != "random" else
                     f"rates {min(rates):.2f}-{max(rates):.2f}") if rates else "no batches"
        history.append({"epoch": epoch + 1, **stats, "valid_waf": score, "seconds": time.time() - t0})
        payload = dict(model=net.state_dict(), optimizer=optim.state_dict(), scaler=scaler.state_dict(),
                       config=cfg.to_dict(), epoch=epoch, best_score=best_score, best_epoch=best_epoch,
                       history=history, rng=rng_state(gens),
                       data={"name": splits.train.name, "input_dims": list(splits.input_dims),
                             "num_classes": splits.num_classes, "class_names": list(splits.class_names)})
        save_checkpoint(paths["last"], **payload)
        if improved:
            save_checkpoint(paths["best"], **payload)
        log(_log_line(epoch, cfg.epochs, stats, score, best_score, time.time() - t0, rate_desc))
        if max_steps is not None and steps >= max_steps:
            break
    if cfg.epochs == 0 or not os.path.exists(paths["best"]):
        # nothing trained (epochs 0): still leave a loadable checkpoint
        save_checkpoint(paths["best"], model=net.state_dict(), optimizer=optim.state_dict(), config=cfg.to_dict(),
                        epoch=start - 1, best_score=best_score, best_epoch=best_epoch, history=history,
                        rng=rng_state(gens), scaler=scaler.state_dict())
        if not os.path.exists(paths["last"]):
            save_checkpoint(paths["last"], **load_checkpoint(paths["best"]))
    log(f"best epoch {best_epoch + 1} (valid WAF {best_score:.2f}); checkpoints: {paths['best']}, {paths['last']}")
    return {**paths, "best_score": best_score, "best_epoch": best_epoch + 1, "history": history, "config": cfg}
