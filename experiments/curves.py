"""Learning curves: the teacher's and the student's fit on the training split against the
validation split, epoch by epoch, to tell under- from over-fitting.

    python experiments/curves.py --out experiments/results/curves-demo.json [--epochs 40] [--seeds 0,1,2]
                                 [--set dist=3 ...]

Each seed trains the recipe search's base (``recipe.BASE``: the paper's model with the demo's
former 10-epoch settings; any field overridden by ``--set key=value``) one epoch at a time:
training resumes from the previous epoch's ``last.pt``, which continues bit-identically, so
the curve is the one run's. After every epoch it measures, on the training and the
validation split, the teacher on complete data and the student at the fixed masks of rates
0.0, 0.3, 0.5, 0.7 (their mean), each as WAF and as the mean cross-entropy of its
predictions. Writes the JSON and a plot beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from recipe import BASE  # the recipe search's base (this folder is on sys.path when run as a script)

from iteach_fast.choices import MODALITIES
from iteach_fast.data.dataset import collate
from iteach_fast.data.masking import apply_mask, fixed_masks, present_for_batch
from iteach_fast.ops.padding import valid_mask
from iteach_fast.training.checkpoint import load_for_eval
from iteach_fast.training.config import TrainConfig
from iteach_fast.training.loop import train
from iteach_fast.training.validation import compute_metrics

RATES = (0.0, 0.3, 0.5, 0.7)


@torch.no_grad()
def fit(net, dataset, model: str) -> dict:
    """``{"waf", "ce"}`` of the teacher (complete data) or the student (mean over RATES)."""
    out = []
    for rate in (0.0,) if model == "teacher" else RATES:
        masks = None if model == "teacher" else fixed_masks(dataset, rate, 0)
        ys, ps, losses = [], [], []
        for i in range(0, len(dataset), 32):
            batch = collate([dataset[j] for j in range(i, min(i + 32, len(dataset)))])
            B, L = batch["labels"].shape
            valid = valid_mask(batch["lengths"], L)
            xs = tuple(batch[m] for m in MODALITIES)
            if model == "teacher":
                logits = net.teacher(*xs, batch["lengths"]).logits
            else:
                present = present_for_batch(batch, masks)
                inc = apply_mask(batch, present)
                logits = net.predict(tuple(inc[m] for m in MODALITIES), batch["lengths"], present)
            ys.append(batch["labels"][valid])
            ps.append(logits[valid].argmax(-1))
            losses.append(F.cross_entropy(logits[valid], batch["labels"][valid], reduction="sum"))
        y = torch.cat(ys).numpy()
        out.append((compute_metrics(y, torch.cat(ps).numpy())["waf"], float(sum(losses)) / max(len(y), 1)))
    return {"waf": float(np.mean([w for w, _ in out])), "ce": float(np.mean([c for _, c in out]))}


def curve(cfg: TrainConfig, epochs: int, folder: str) -> list[dict]:
    rows, last = [], None
    for epoch in range(1, epochs + 1):
        summary = train(cfg.replace(epochs=epoch, out_dir=folder), resume=last, log=lambda *a, **k: None)
        last = summary["last"]
        net, _, splits, _ = load_for_eval(last, device="cpu")
        row = {"epoch": epoch, "train_loss": summary["history"][-1]["total"]}
        for split in ("train", "valid"):
            for model in ("teacher", "student"):
                m = fit(net, getattr(splits, split), model)
                row[f"{model}_{split}_waf"], row[f"{model}_{split}_ce"] = m["waf"], m["ce"]
        rows.append(row)
        print(f"  epoch {epoch}: teacher train/valid WAF {row['teacher_train_waf']:.1f}/{row['teacher_valid_waf']:.1f}"
              f" CE {row['teacher_train_ce']:.3f}/{row['teacher_valid_ce']:.3f}; student WAF "
              f"{row['student_train_waf']:.1f}/{row['student_valid_waf']:.1f}", file=sys.stderr, flush=True)
    return rows


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for col, model in enumerate(("teacher", "student")):
        for row, (metric, label) in enumerate((("waf", "WAF (%)"), ("ce", "cross-entropy"))):
            ax = axes[row, col]
            for split, style in (("train", "-"), ("valid", "--")):
                curves = np.array([[r[f"{model}_{split}_{metric}"] for r in rows] for rows in result["seeds"].values()])
                x = np.arange(1, curves.shape[1] + 1)
                ax.plot(x, curves.mean(0), style, color="C0" if split == "train" else "C1", label=f"{split} split")
                ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.15, color="C0" if split == "train" else "C1")
            what = "complete data" if model == "teacher" else f"masks at rates {', '.join(map(str, RATES))} (mean)"
            ax.set_title(f"{model}, {what}", fontsize=9)
            ax.set_ylabel(label)
            if row == 1:
                ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="lower right")
    seeds = list(result["seeds"])
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean of seeds {', '.join(seeds)}; band: min-max"
    fig.suptitle(f"learning curves: {result['label']} ({which})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="the result JSON (a PNG is written beside it)")
    p.add_argument("--epochs", type=int, default=40, help="epochs per seed (default: 40)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides of the demo's recipe")
    p.add_argument("--label", default=None, help="the plot's title (default: the overrides)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    changes = dict(kv.split("=", 1) for kv in args.set)
    base = TrainConfig().replace(**{**BASE, **changes, "progress": False, "threads": 1})
    result = {"label": args.label or ("the search's base" + (f" with {', '.join(args.set)}" if args.set else "")),
              "config": base.to_dict(), "epochs": args.epochs, "seeds": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        print(f"seed {seed}", file=sys.stderr)
        with tempfile.TemporaryDirectory() as folder:
            result["seeds"][str(seed)] = curve(base.replace(seed=seed), args.epochs, folder)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    plot(result, os.path.splitext(args.out)[0] + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
