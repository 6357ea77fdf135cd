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
generators, history), written atomically; ``resume`` continues bit-identically.
"""
from __future__ import annotations

import math
import os
import random
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import TrainConfig
from .data import DataSplits, SyntheticSpec, collate, load_dataset
from .masking import apply_mask, sample_present

__all__ = ["train", "build_data", "build_model", "rate_for", "save_checkpoint", "load_checkpoint",
           "load_for_eval", "resolve_device", "check_dtype"]

CHECKPOINT_VERSION = 1


# ------------------------------------------------------------------ set-up helpers

def resolve_device(device: str = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r} is not a device (use auto, cpu, cuda or cuda:N)") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available (use --device cpu)")
    return dev


def check_dtype(dtype: str, device: torch.device) -> str:
    """fp16 / bf16 mean autocast, which is used on GPU only."""
    if dtype == "fp32":
        return dtype
    if dtype not in ("bf16", "fp16"):
        raise ValueError(f"--dtype must be fp32, bf16 or fp16, got {dtype!r}")
    if device.type != "cuda":
        raise ValueError(f"--dtype {dtype} needs a CUDA device (mixed precision is used on GPU only); "
                         f"this run is on {device}: use --dtype fp32")
    return dtype


def build_data(cfg: TrainConfig) -> DataSplits:
    spec = SyntheticSpec(num_conversations=cfg.syn_conversations, min_len=cfg.syn_min_len,
                         max_len=cfg.syn_max_len, num_classes=cfg.syn_classes, dims=tuple(cfg.syn_dims),
                         seed=cfg.seed)
    roots = {m: getattr(cfg, f"{m}_root") for m in ("text", "audio", "visual") if getattr(cfg, f"{m}_root")}
    kwargs = {} if cfg.dataset == "synthetic" else {"label_file": cfg.label_file, "feature_roots": roots}
    return load_dataset(cfg.dataset, data_root=cfg.data_root, fold=cfg.fold, seed=cfg.seed,
                        select_on=cfg.select_on, synthetic=spec, **kwargs)


def build_model(cfg: TrainConfig, input_dims, num_classes: int):
    from .model import ITEACHNet

    return ITEACHNet(input_dims, num_classes, framework=cfg.framework, teacher_layers=cfg.teacher_layers,
                     student_layers=cfg.student_layers, teacher_mixer=cfg.teacher_mixer,
                     student_mixer=cfg.student_mixer, dim=cfg.dim, heads=cfg.heads, ffn_ratio=cfg.ffn_ratio,
                     max_len=cfg.max_len, dist=cfg.dist, conv_kernel=cfg.conv_kernel, pool_size=cfg.pool_size,
                     ecce=cfg.ecce, dropout=cfg.dropout, backend=cfg.backend)


def rate_for(cfg: TrainConfig, epoch: int, generator: torch.Generator) -> float:
    """The missing rate of one training batch (epoch counted from 0)."""
    if cfg.strategy == "fixed":
        return cfg.rate
    if cfg.strategy == "random":
        return float(torch.rand((), generator=generator)) * cfg.max_rate
    return min(cfg.progressive_step * (epoch // cfg.progressive_every), cfg.max_rate)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------ checkpoints

def _rng_state(gens: dict) -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             # numpy's state as tensors/ints so the checkpoint loads with weights_only=True
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])),
             **{f"gen_{k}": g.get_state() for k, g in gens.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, gens: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    for k, g in gens.items():
        g.set_state(state[f"gen_{k}"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, **payload) -> str:
    """``torch.save`` to a temporary file, then ``os.replace``: never a half-written checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save({"version": CHECKPOINT_VERSION, **payload}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{path}: not an iteach-fast checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not an iteach-fast checkpoint (expected keys model, config)")
    return ckpt


def load_for_eval(path: str, device: str = "auto", backend: str | None = None):
    """``(net, cfg, splits, ckpt)``: the checkpoint's model in eval mode and its data."""
    ckpt = load_checkpoint(path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    if backend:
        cfg = cfg.replace(backend=backend)
    splits = build_data(cfg)
    net = build_model(cfg, splits.input_dims, splits.num_classes)
    net.load_state_dict(ckpt["model"])
    net.to(resolve_device(device)).eval()
    return net, cfg, splits, ckpt


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
    from .evaluate import _autocast, evaluate_rates

    ckpt = load_checkpoint(resume) if resume else None
    if ckpt is not None:
        cfg = TrainConfig.from_dict({**ckpt["config"], "epochs": max(cfg.epochs, ckpt["config"]["epochs"]),
                                     "out_dir": cfg.out_dir, "progress": cfg.progress})
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    dtype = check_dtype(cfg.dtype, device)
    _seed_everything(cfg.seed)
    splits = build_data(cfg)
    for note in splits.notes:
        log(f"note: {note}")
    net = build_model(cfg, splits.input_dims, splits.num_classes).to(device)
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
        _set_rng_state(ckpt["rng"], gens)
        start, best_score, best_epoch = ckpt["epoch"] + 1, ckpt["best_score"], ckpt["best_epoch"]
        history = list(ckpt["history"])
        log(f"resumed from {resume} at epoch {start + 1}")
    os.makedirs(cfg.out_dir, exist_ok=True)
    paths = {"last": os.path.join(cfg.out_dir, "last.pt"), "best": os.path.join(cfg.out_dir, "best.pt")}
    n_params = sum(p.numel() for p in net.parameters())
    log(f"{splits.summary()}\nITEACH-Net {cfg.framework}: teacher {net.teacher.num_layers}x"
        f"{net.teacher.mixer.upper()}, student {net.student.num_layers}x{net.student.mixer.upper()}, "
        f"{n_params / 1e6:.2f}M parameters, dim {cfg.dim}, ecce {cfg.ecce}; strategy {cfg.strategy}; "
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
            from tqdm import tqdm

            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr,
                       dynamic_ncols=True)
        for batch in bar:
            rate = rate_for(cfg, epoch, gens["mask"])
            rates.append(rate)
            present = sample_present(batch["lengths"], batch["labels"].shape[1], rate, gens["mask"])
            inc = apply_mask(batch, present)
            lengths, labels, present = batch["lengths"].to(device), batch["labels"].to(device), present.to(device)
            complete = tuple(batch[m].to(device) for m in ("text", "audio", "visual"))
            incomplete = tuple(inc[m].to(device) for m in ("text", "audio", "visual"))
            with _autocast(device, dtype):
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
                       history=history, rng=_rng_state(gens),
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
                        rng=_rng_state(gens), scaler=scaler.state_dict())
        if not os.path.exists(paths["last"]):
            save_checkpoint(paths["last"], **load_checkpoint(paths["best"]))
    log(f"best epoch {best_epoch + 1} (valid WAF {best_score:.2f}); checkpoints: {paths['best']}, {paths['last']}")
    return {**paths, "best_score": best_score, "best_epoch": best_epoch + 1, "history": history, "config": cfg}
