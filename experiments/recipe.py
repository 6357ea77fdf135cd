"""The recipe search on the synthetic data: named variants of the demo's recipe, trained over
seeds, measured on the validation split (where settings are chosen) and on the test split
(reported), beside the baselines trained on the same data with the same masks.

    python experiments/recipe.py run    --out DIR [--variants a,b,...] [--seeds 0,1,2]
    python experiments/recipe.py report --out DIR [--variants a,b,...]      # markdown on stdout
    python experiments/recipe.py masks  --out DIR --variants a [--mask-seeds 5]  # evaluation noise

``run`` trains what is missing (a finished run is kept: re-running continues), one thread per
process; ``report`` tabulates every finished run. A run measures, from its ``best.pt`` (the
epoch chosen on validation): the student at UME's rates 0.0..0.7 on the validation and the
test split, the teacher on complete validation and test data, and its fit on the training
split (teacher complete, student at 0.0 and 0.7) to tell under- from over-fitting.

Two validation columns: the student's score at the epoch chosen on validation (the maximum
over the run's epochs, so the noisier a run's epoch-to-epoch score, the more it is flattered:
the winner's curse), and its level, the selection score averaged over the last 20 epochs,
which no epoch was chosen on; ``epoch sd`` is the spread of that score from epoch to epoch.

``masks`` asks how much of the seed-to-seed spread is the test masks': every finished run and
its baselines (the same models as ``run``'s) scored on the test split with mask seeds
``0 .. N-1`` at each rate, paired by seed after averaging over the masks, and at the highest
rate split by the one modality each utterance kept (cached per run as ``masks.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from iteach_fast.choices import MODALITIES
from iteach_fast.data.masking import EVAL_RATES, fixed_masks
from iteach_fast.evaluation.baselines import (
    BaselineConfig,
    baselines_for_run,
    fit_linear,
    gru_predictions,
    linear_predictions,
    train_gru,
)
from iteach_fast.files import atomic_write
from iteach_fast.training.checkpoint import load_for_eval
from iteach_fast.training.config import TrainConfig
from iteach_fast.training.loop import train
from iteach_fast.training.validation import compute_metrics, evaluate_rates, predictions

#: the demo's recipe before this search (the paper's model, 10 epochs): every variant changes it
BASE = dict(syn_conversations=120, syn_max_len=60, dim=32, heads=4, max_len=60, epochs=10, batch_size=8, lr=1e-3,
            router_lr=1e-2, dropout=0.1, dist=30, cross_ecce=False, strategy="random", framework="its",
            select_rates=(0.0, 0.3, 0.5, 0.7))
#: the chosen recipe's changes (README "What the demo shows"); the variants after it change one thing each
CHOSEN = {"epochs": 40, "dist": 3, "early_fusion": "all", "cross_ecce": True, "lr": 3e-3, "ema": 0.99,
          "recurrent": True}
VARIANTS = {
    "paper-e10": {},
    "paper-e40": {"epochs": 40},
    "dist3-e40": {"epochs": 40, "dist": 3},
    "dist5-e40": {"epochs": 40, "dist": 5},
    "dist3-rec0.1-e40": {"epochs": 40, "dist": 3, "rec_weight": 0.1},
    "cross-dist30-e40": {"epochs": 40, "cross_ecce": True},
    "cross-dist2-e40": {"epochs": 40, "dist": 2, "cross_ecce": True},
    "cross-dist3-e40": {"epochs": 40, "dist": 3, "cross_ecce": True},
    "cross-dist5-e40": {"epochs": 40, "dist": 5, "cross_ecce": True},
    "cross-dist3-drop0.2-e40": {"epochs": 40, "dist": 3, "cross_ecce": True, "dropout": 0.2},
    "cross-dist3-wd0.1-e40": {"epochs": 40, "dist": 3, "cross_ecce": True, "weight_decay": 0.1},
    "cross-dist3-drop0.2-wd0.1-e40": {"epochs": 40, "dist": 3, "cross_ecce": True, "dropout": 0.2,
                                      "weight_decay": 0.1},
    "cross-dist3-e60": {"epochs": 60, "dist": 3, "cross_ecce": True},
    "cross-dist3-dim64-e40": {"epochs": 40, "dist": 3, "cross_ecce": True, "dim": 64},
    "cross-dist3-drop0.5-e40": {"epochs": 40, "dist": 3, "cross_ecce": True, "dropout": 0.5},
    "cross-dist3-lr3e-4-e40": {"epochs": 40, "dist": 3, "cross_ecce": True, "lr": 3e-4},
    "cross-dist3-lr3e-3-e40": {"epochs": 40, "dist": 3, "cross_ecce": True, "lr": 3e-3},
    "cross-dist3-b4-e40": {"epochs": 40, "dist": 3, "cross_ecce": True, "batch_size": 4},
    "cross-dist3-b16-e40": {"epochs": 40, "dist": 3, "cross_ecce": True, "batch_size": 16},
    "early-dist3-e40": {"epochs": 40, "dist": 3, "early_fusion": "text"},
    "early-cross-dist3-e40": {"epochs": 40, "dist": 3, "early_fusion": "text", "cross_ecce": True},
    "early-cross-dist3-lr3e-3-e40": {"epochs": 40, "dist": 3, "early_fusion": "text", "cross_ecce": True, "lr": 3e-3},
    "early-dist3-lr3e-3-e40": {"epochs": 40, "dist": 3, "early_fusion": "text", "lr": 3e-3},
    "earlyall-dist3-lr3e-3-e40": {"epochs": 40, "dist": 3, "early_fusion": "all", "lr": 3e-3},
    "earlyall-cross-dist3-lr3e-3-e40": {"epochs": 40, "dist": 3, "early_fusion": "all", "cross_ecce": True,
                                        "lr": 3e-3},
    "earlyall-cross-dist3-lr3e-3-ema-e40": {"epochs": 40, "dist": 3, "early_fusion": "all", "cross_ecce": True,
                                            "lr": 3e-3, "ema": 0.98},
    "earlyall-cross-dist3-lr3e-3-ema.99-e40": {"epochs": 40, "dist": 3, "early_fusion": "all", "cross_ecce": True,
                                               "lr": 3e-3, "ema": 0.99},
    "earlyall-cross-dist3-lr3e-3-ema.99-drop0.3-e40": {"epochs": 40, "dist": 3, "early_fusion": "all",
                                                       "cross_ecce": True, "lr": 3e-3, "ema": 0.99, "dropout": 0.3},
    "earlyall-cross-dist3-lr3e-3-ema.99-dim16-e40": {"epochs": 40, "dist": 3, "early_fusion": "all",
                                                     "cross_ecce": True, "lr": 3e-3, "ema": 0.99, "dim": 16},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-e40": CHOSEN,
    "earlyall-cross-dist3-lr3e-3-ema.995-gru-e40": {**CHOSEN, "ema": 0.995},
    "earlyall-cross-dist3-lr1e-3-ema.99-gru-e40": {**CHOSEN, "lr": 1e-3},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-e60": {**CHOSEN, "epochs": 60},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-dim64-e40": {**CHOSEN, "dim": 64},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-flags-e40": {**CHOSEN, "presence": True},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-drop0.2-e40": {**CHOSEN, "dropout": 0.2},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-drop0.3-e40": {**CHOSEN, "dropout": 0.3},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-rec0.1-e40": {**CHOSEN, "rec_weight": 0.1},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-rec3-e40": {**CHOSEN, "rec_weight": 3.0},
    "earlyall-cross-dist5-lr3e-3-ema.99-gru-e40": {**CHOSEN, "dist": 5},
    "earlyall-cross-dist2-lr3e-3-ema.99-gru-e40": {**CHOSEN, "dist": 2},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-heads2-e40": {**CHOSEN, "heads": 2},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-studenttf-e40": {**CHOSEN, "student_mixer": "tf"},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-student2-e40": {**CHOSEN, "student_layers": 2},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-wd0.1-e40": {**CHOSEN, "weight_decay": 0.1},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-wd0.5-e40": {**CHOSEN, "weight_decay": 0.5},
    # two and four times the conversations (baselines trained on the same larger set): a small-data effect?
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-n480-e40": {**CHOSEN, "syn_conversations": 480},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-n240-e40": {**CHOSEN, "syn_conversations": 240},
    # the training rates drawn with a density rising to 0.7 (the baselines train with the same draw)
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-pow2-e40": {**CHOSEN, "rate_power": 2.0},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-pow0.5-e40": {**CHOSEN, "rate_power": 0.5},
    # the optimisation and the masks: clipping, a smaller batch, whole-conversation outages (the baselines see none)
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-clip1-e40": {**CHOSEN, "grad_clip": 1.0},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-b4-e40": {**CHOSEN, "batch_size": 4},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-outage0.1-e40": {**CHOSEN, "outage_prob": 0.1},
    "earlyall-cross-dist3-lr3e-3-gru-e40": {"epochs": 40, "dist": 3, "early_fusion": "all", "cross_ecce": True,
                                            "lr": 3e-3, "recurrent": True},
    "dist3-ema.99-gru-e40": {"epochs": 40, "dist": 3, "ema": 0.99, "recurrent": True},
    "dist3-gru-e40": {"epochs": 40, "dist": 3, "recurrent": True},
    "early-cross-dist3-lr3e-3-ema-e40": {"epochs": 40, "dist": 3, "early_fusion": "text", "cross_ecce": True,
                                         "lr": 3e-3, "ema": 0.98},
    "early-cross-dist3-lr3e-3-drop0.3-e40": {"epochs": 40, "dist": 3, "early_fusion": "text", "cross_ecce": True,
                                             "lr": 3e-3, "dropout": 0.3},
    "cross-dist3-dim16-e40": {"epochs": 40, "dist": 3, "cross_ecce": True, "dim": 16},
    "cross-dist3-layers2-e40": {"epochs": 40, "dist": 3, "cross_ecce": True, "teacher_layers": 2,
                                "student_layers": 2},
}


def config(variant: str, seed: int, folder: str) -> TrainConfig:
    return TrainConfig().replace(**{**BASE, **VARIANTS[variant], "seed": seed, "threads": 1,
                                    "progress": False, "out_dir": folder})


def run_one(out: str, variant: str, seed: int) -> dict:
    folder = os.path.join(out, "runs", f"{variant}-s{seed}")
    path = os.path.join(folder, "result.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    cfg = config(variant, seed, folder)
    t0 = time.time()
    last = os.path.join(folder, "last.pt")
    summary = train(cfg, resume=last if os.path.isfile(last) else None, log=lambda *a, **k: None)
    seconds = time.time() - t0
    net, _, splits, _ = load_for_eval(summary["best"], device="cpu")
    result = {"variant": variant, "seed": seed, "changes": VARIANTS[variant], "seconds": round(seconds, 1),
              "best_epoch": summary["best_epoch"], "history": summary["history"]}
    for split in ("valid", "test"):
        ds = getattr(splits, split)
        result[f"student_{split}"] = [r["waf"] for r in evaluate_rates(net, ds, EVAL_RATES, 0, 32, "cpu")]
        result[f"teacher_{split}"] = evaluate_rates(net, ds, (0.0,), 0, 32, "cpu", model="teacher")[0]["waf"]
    result["teacher_train"] = evaluate_rates(net, splits.train, (0.0,), 0, 32, "cpu", model="teacher")[0]["waf"]
    result["student_train"] = [r["waf"] for r in evaluate_rates(net, splits.train, (0.0, 0.7), 0, 32, "cpu")]
    with open(path, "w") as f:
        json.dump(result, f)
    return result


def baselines(out: str, seed: int, variant: str = "paper-e10") -> dict:
    """The baselines of ``variant``'s data at ``seed``, trained with its missing-rate draw, valid and
    test (one cached set for every variant that changes neither: ``syn_*`` or ``rate_power``)."""
    cfg = config(variant, seed, out)
    from iteach_fast.data.sources import splits_for

    splits = splits_for(cfg)
    return {split: baselines_for_run(cfg, splits, EVAL_RATES, split, 0, folder=os.path.join(out, "baselines"))
            for split in ("valid", "test")}


def report(out: str, variants) -> str:
    runs = _finished(out)
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    base = {s: baselines(out, s) for s in seeds}
    own = {name: {r["seed"]: baselines(out, r["seed"], name) for r in rs} for name, rs in runs.items()
           if name in variants}

    def brow(split, name, among=seeds, bases=base):  # mean over seeds of a baseline's per-rate WAF
        return np.mean([[r["waf"] for r in bases[s][split]["rows"][name]] for s in among], 0)

    def best(split, among=seeds, bases=base):  # the better of the two context baselines at each rate
        return np.maximum(brow(split, "logreg_context", among, bases), brow(split, "gru", among, bases))

    lines = [f"seeds {', '.join(map(str, seeds))}; WAF % (mean over seeds); student: UME average over rates "
             "0.0..0.7; teacher: complete data", "",
             "| variant | runs | student valid | valid level (last 20 epochs) | epoch sd | student test | test @0.0 | "
             "test @0.7 | teacher valid | teacher test | train fit (teacher / student @0) | best epoch | s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in [v for v in variants if v in runs]:
        rs = runs[name]
        sv, st = (np.mean([r[f"student_{s}"] for r in rs], 0) for s in ("valid", "test"))
        curves = [[h["valid_waf"] for h in r["history"]] for r in rs]
        level = np.mean([np.mean(c[-20:]) for c in curves])
        spread = np.mean([np.std(np.diff(c[-20:])) for c in curves])
        lines.append(f"| {name} | {len(rs)} | {sv.mean():.2f} | {level:.2f} | {spread:.2f} | {st.mean():.2f} | "
                     f"{st[0]:.2f} | {st[-1]:.2f} | "
                     f"{np.mean([r['teacher_valid'] for r in rs]):.2f} | {np.mean([r['teacher_test'] for r in rs]):.2f}"
                     f" | {np.mean([r['teacher_train'] for r in rs]):.1f} / "
                     f"{np.mean([r['student_train'][0] for r in rs]):.1f} | "
                     f"{', '.join(str(r['best_epoch']) for r in rs)} | {np.mean([r['seconds'] for r in rs]):.0f} |")
    lines += ["", "baselines (same data, random missing rates in training, the same test masks):", "",
              "| baseline | valid | test | test @0.0 | test @0.7 |", "|---|---|---|---|---|"]
    for name in ("majority", "logreg", "logreg_context", "gru"):
        v, t = brow("valid", name), brow("test", name)
        lines.append(f"| {name} | {v.mean():.2f} | {t.mean():.2f} | {t[0]:.2f} | {t[-1]:.2f} |")
    lines += ["", "per rate, test split (the best baseline: the higher of logreg_context and gru at each rate, "
              "over the same seeds as the row):", "",
              "| | seeds | " + " | ".join(f"{r:.1f}" for r in EVAL_RATES) + " |",
              "|---|---|" + "---|" * len(EVAL_RATES)]
    lines.append(f"| best baseline | {', '.join(map(str, seeds))} | " + " | ".join(f"{x:.2f}" for x in best("test"))
                 + " |")
    for name in [v for v in variants if v in runs]:
        among = sorted(r["seed"] for r in runs[name])
        st = np.mean([r["student_test"] for r in runs[name]], 0)
        theirs = best("test", among, own[name])
        if not np.allclose(theirs, best("test", among)):  # the variant changes the data or the baselines' draw
            lines.append(f"| best baseline, {name}'s data and draw | {', '.join(map(str, among))} | "
                         + " | ".join(f"{x:.2f}" for x in theirs) + " |")
        lines.append(f"| {name} | {', '.join(map(str, among))} | " + " | ".join(
            f"{x:.2f}" + ("" if x >= b else "↓") for x, b in zip(st, theirs)) + " |")
    lines.append("")
    lines.append("↓: below the best baseline (on the row's seeds, trained with the row's missing-rate draw) at "
                 "that rate.")
    lines += ["", "paired by seed, test split (mean ± standard error over the seeds; wins: seeds above):", "",
              "| variant | seeds | student UME avg − BiGRU's | wins | teacher − best baseline at 0.0 | wins |",
              "|---|---|---|---|---|---|"]
    for name in [v for v in variants if v in runs]:
        rs = sorted(runs[name], key=lambda r: r["seed"])
        student = np.array([np.mean(r["student_test"]) - np.mean([x["waf"] for x in own[name][r["seed"]]["test"]
                                                                  ["rows"]["gru"]]) for r in rs])
        teacher = np.array([r["teacher_test"] - best("test", [r["seed"]], own[name])[0] for r in rs])
        lines.append(f"| {name} | {len(rs)} | {_paired(student)} | {int((student > 0).sum())}/{len(rs)} | "
                     f"{_paired(teacher)} | {int((teacher > 0).sum())}/{len(rs)} |")
    return "\n".join(lines)


def mask_scores(out: str, variant: str, seed: int, n_masks: int) -> dict:
    """One run's student and its two context baselines on the test split at every rate with
    mask seeds ``0 .. n_masks-1``: ``{"waf": {model: [[WAF per rate] per mask]}, "kept": {model:
    {modality: [WAF per mask]}}}``, ``kept`` at the highest rate over the utterances that kept
    exactly that one modality. Cached in the run's folder."""
    folder = os.path.join(out, "runs", f"{variant}-s{seed}")
    path = os.path.join(folder, "masks.json")
    if os.path.isfile(path):
        with open(path) as f:
            cached = json.load(f)
        if len(cached["waf"]["student"]) >= n_masks:
            return cached
    net, _, splits, _ = load_for_eval(os.path.join(folder, "best.pt"), device="cpu")
    cfg = config(variant, seed, out)
    k = baselines(out, seed, variant)["test"]["logreg_context_k"]  # the window the run's baseline chose
    bcfg = BaselineConfig.from_train_config(cfg)
    linear, (gru, _) = fit_linear(splits, bcfg), train_gru(splits, bcfg)
    data = splits.test
    y = np.concatenate([np.asarray(c["labels"]) for c in data])
    result = {"waf": {m: [] for m in ("student", "gru", "logreg_context")},
              "kept": {m: {name: [] for name in MODALITIES} for m in ("student", "gru", "logreg_context")}}
    waf = lambda sel, p: compute_metrics(y[sel], p[sel])["waf"]  # noqa: E731
    for mask_seed in range(n_masks):
        per_rate = {m: [] for m in result["waf"]}
        for rate in EVAL_RATES:
            masks = fixed_masks(data, rate, mask_seed)
            plain = {cid: m.numpy() for cid, m in masks.items()}
            preds = {"student": predictions(net, data, masks)[1],
                     "gru": np.concatenate([gru_predictions(gru, data, plain, False)[c["id"]] for c in data]),
                     "logreg_context": np.concatenate([linear_predictions(linear, data, plain, k, False)[c["id"]]
                                                       for c in data])}
            for m, p in preds.items():
                per_rate[m].append(waf(slice(None), p))
            if rate == EVAL_RATES[-1]:
                kept = np.concatenate([plain[c["id"]] for c in data])
                for i, name in enumerate(MODALITIES):
                    only = kept[:, i] & (kept.sum(1) == 1)
                    for m, p in preds.items():
                        result["kept"][m][name].append(waf(only, p))
        for m, v in per_rate.items():
            result["waf"][m].append(v)
    atomic_write(path, json.dumps(result))  # a run cut off mid-write leaves no half file behind
    return result


def mask_report(out: str, variant: str, n_masks: int) -> str:
    """Per rate: the student minus the best baseline, paired by seed, with one mask (``run``'s)
    and averaged over ``n_masks``; the spread over seeds and over masks; the kept modalities."""
    seeds = sorted(r["seed"] for r in _finished(out).get(variant, []))
    if not seeds:
        raise SystemExit(f"masks: no finished run of {variant} in {os.path.join(out, 'runs')} (train it with `run`)")
    scores = [mask_scores(out, variant, s, n_masks) for s in seeds]
    arr = {m: np.array([sc["waf"][m][:n_masks] for sc in scores]) for m in ("student", "gru", "logreg_context")}
    diff = arr["student"] - np.maximum(arr["gru"], arr["logreg_context"])  # (seeds, masks, rates)
    rates = " | ".join(f"{r:.1f}" for r in EVAL_RATES)
    lines = [f"{variant}: {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}), {n_masks} test masks per rate; WAF %", "",
             f"| | {rates} |", "|---|" + "---|" * len(EVAL_RATES)]
    rows = [("student, mean over seeds and masks", arr["student"].mean((0, 1))),
            ("BiGRU", arr["gru"].mean((0, 1))), ("logreg ± k", arr["logreg_context"].mean((0, 1)))]
    lines += [f"| {name} | " + " | ".join(f"{x:.2f}" for x in v) + " |" for name, v in rows]
    lines.append("| student − best baseline, mask 0 (`run`'s) | "
                 + " | ".join(_paired(diff[:, 0, i]) for i in range(len(EVAL_RATES))) + " |")
    lines.append(f"| student − best baseline, mean of {n_masks} masks | "
                 + " | ".join(_paired(diff.mean(1)[:, i]) for i in range(len(EVAL_RATES))) + " |")
    lines.append("| its sd over seeds, mask 0 / mean of masks | " + " | ".join(
        f"{diff[:, 0, i].std(ddof=1):.2f} / {diff.mean(1)[:, i].std(ddof=1):.2f}" for i in range(len(EVAL_RATES)))
                 + " |")
    lines.append("| its sd over masks within a seed | " + " | ".join(
        f"{diff[:, :, i].std(1, ddof=1).mean():.2f}" if n_masks > 1 else "" for i in range(len(EVAL_RATES))) + " |")
    lines += ["", f"at rate {EVAL_RATES[-1]}, the utterances that kept one modality only (mean of masks; paired by "
              "seed):", "", "| kept | student | BiGRU | student − BiGRU |", "|---|---|---|---|"]
    for name in MODALITIES:
        s_, g_ = (np.array([np.mean(sc["kept"][m][name][:n_masks]) for sc in scores]) for m in ("student", "gru"))
        lines.append(f"| {name} | {s_.mean():.2f} | {g_.mean():.2f} | {_paired(s_ - g_)} |")
    return "\n".join(lines)


def _finished(out: str) -> dict:
    """``{variant: [result per finished run]}`` of the runs in ``out``."""
    runs = {}
    for name in os.listdir(os.path.join(out, "runs")):
        path = os.path.join(out, "runs", name, "result.json")
        if os.path.isfile(path):
            with open(path) as f:
                r = json.load(f)
            runs.setdefault(r["variant"], []).append(r)
    return runs


def _paired(d: np.ndarray) -> str:
    """``mean ± standard error`` of per-seed differences (no error from one seed)."""
    if len(d) < 2:
        return f"{d.mean():+.2f}"
    return f"{d.mean():+.2f} ± {d.std(ddof=1) / np.sqrt(len(d)):.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("run", "report", "masks"))
    p.add_argument("--out", required=True, help="the folder of the runs and their results")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--mask-seeds", type=int, default=5, help="masks: test masks per rate (seeds 0..N-1)")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}")
    torch.set_num_threads(1)
    if args.what == "report":
        print(report(args.out, variants))
        return 0
    if args.what == "masks":
        if args.mask_seeds < 1:
            p.error(f"--mask-seeds must be >= 1, got {args.mask_seeds}")
        print("\n\n".join(mask_report(args.out, v, args.mask_seeds) for v in variants))
        return 0
    for seed in [int(s) for s in args.seeds.split(",")]:
        baselines(args.out, seed)
        for variant in variants:
            baselines(args.out, seed, variant)  # the cached set unless the variant changes the data or the draw
            r = run_one(args.out, variant, seed)
            print(f"{variant} seed {seed}: student valid {np.mean(r['student_valid']):.2f} test "
                  f"{np.mean(r['student_test']):.2f}; teacher valid {r['teacher_valid']:.2f} test "
                  f"{r['teacher_test']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
