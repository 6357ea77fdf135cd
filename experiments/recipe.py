"""The recipe search on the synthetic data: named variants of the demo's recipe, trained over
seeds, measured on the validation split (where settings are chosen) and on the test split
(reported), beside the baselines trained on the same data with the same masks.

    python experiments/recipe.py run    --out DIR [--variants a,b,...] [--seeds 0,1,2]
    python experiments/recipe.py report --out DIR [--variants a,b,...]      # markdown on stdout

``run`` trains what is missing (a finished run is kept: re-running continues), one thread per
process; ``report`` tabulates every finished run. A run measures, from its ``best.pt`` (the
epoch chosen on validation): the student at UME's rates 0.0..0.7 on the validation and the
test split, the teacher on complete validation and test data, and its fit on the training
split (teacher complete, student at 0.0 and 0.7) to tell under- from over-fitting.

Two validation columns: the student's score at the epoch chosen on validation (the maximum
over the run's epochs, so the noisier a run's epoch-to-epoch score, the more it is flattered:
the winner's curse), and its level, the selection score averaged over the last 20 epochs,
which no epoch was chosen on; ``epoch sd`` is the spread of that score from epoch to epoch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from iteach_fast.data.masking import EVAL_RATES
from iteach_fast.evaluation.baselines import baselines_for_run
from iteach_fast.training.checkpoint import load_for_eval
from iteach_fast.training.config import TrainConfig
from iteach_fast.training.loop import train
from iteach_fast.training.validation import evaluate_rates

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
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-studenttf-e40": {**CHOSEN, "student_mixer": "tf"},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-student2-e40": {**CHOSEN, "student_layers": 2},
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-wd0.1-e40": {**CHOSEN, "weight_decay": 0.1},
    # four times the conversations (the baselines trained on the same larger set): is the gap a small-data effect?
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-n480-e40": {**CHOSEN, "syn_conversations": 480},
    # the training rates drawn with a density rising to 0.7 (the baselines train with the same draw)
    "earlyall-cross-dist3-lr3e-3-ema.99-gru-pow2-e40": {**CHOSEN, "rate_power": 2.0},
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
    runs = {}
    for name in os.listdir(os.path.join(out, "runs")):
        path = os.path.join(out, "runs", name, "result.json")
        if os.path.isfile(path):
            with open(path) as f:
                r = json.load(f)
            runs.setdefault(r["variant"], []).append(r)
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
        lines.append(f"| {name} | {', '.join(map(str, among))} | " + " | ".join(
            f"{x:.2f}" + ("" if x >= b else "↓") for x, b in zip(st, best("test", among, own[name]))) + " |")
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


def _paired(d: np.ndarray) -> str:
    """``mean ± standard error`` of per-seed differences (no error from one seed)."""
    if len(d) < 2:
        return f"{d.mean():+.2f}"
    return f"{d.mean():+.2f} ± {d.std(ddof=1) / np.sqrt(len(d)):.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("run", "report"))
    p.add_argument("--out", required=True, help="the folder of the runs and their results")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}")
    torch.set_num_threads(1)
    if args.what == "report":
        print(report(args.out, variants))
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
