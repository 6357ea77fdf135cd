"""Is the student's output as smooth as a window sum would make it? Its log-probabilities
summed over ±k neighbouring utterances (the context baseline's trick applied to the model),
k chosen on the validation split, the test split reported.

    python experiments/smoothing.py CHECKPOINT [CHECKPOINT ...]

k = 0 is the model as trained. A gain here would mean the model leaves local emotional
stability unused; none means its context is already at least as local as a window sum's.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import torch

from iteach_fast.data.masking import EVAL_RATES, fixed_masks
from iteach_fast.evaluation.baselines import window_sum
from iteach_fast.training.checkpoint import load_for_eval
from iteach_fast.training.validation import _batches, compute_metrics

WINDOWS = (0, 1, 2, 3, 4)


@torch.no_grad()
def log_probs(net, dataset, masks) -> tuple[list, list]:
    """Per conversation: its labels and the student's log-probabilities ``(n, C)`` under ``masks``."""
    net.eval()
    labels, scores = [], []
    for batch, present, inc, _ in _batches(dataset, masks, 32):
        out = net.predict((inc["text"], inc["audio"], inc["visual"]), batch["lengths"], present)
        lp = torch.log_softmax(out.float(), -1)
        for b, n in enumerate(batch["lengths"].tolist()):
            labels.append(batch["labels"][b, :n].numpy())
            scores.append(lp[b, :n].numpy())
    return labels, scores


def smoothed(path: str) -> dict:
    net, _, splits, _ = load_for_eval(path, device="cpu")
    waf = {}
    for split in ("valid", "test"):
        dataset = getattr(splits, split)
        waf[split] = {k: [] for k in WINDOWS}
        for rate in EVAL_RATES:
            labels, scores = log_probs(net, dataset, fixed_masks(dataset, rate, 0))
            y = np.concatenate(labels)
            for k in WINDOWS:
                p = np.concatenate([window_sum(s, k).argmax(-1) for s in scores])
                waf[split][k].append(compute_metrics(y, p)["waf"])
    k = max(WINDOWS, key=lambda w: np.mean(waf["valid"][w]))
    return {"k": k, "valid": {w: round(float(np.mean(v)), 2) for w, v in waf["valid"].items()},
            "test": {w: round(float(np.mean(v)), 2) for w, v in waf["test"].items()},
            "test_by_rate_at_k": [round(x, 2) for x in waf["test"][k]]}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for checkpoint in sys.argv[1:]:
        print(checkpoint, json.dumps(smoothed(checkpoint)), flush=True)
