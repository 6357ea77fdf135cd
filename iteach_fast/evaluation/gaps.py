"""The data's gaps: how much context and each modality are worth on a dataset, measured
with a per-utterance logistic regression (and its log-probabilities summed over a window of
neighbours), beside a trained model tested with the same modalities.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..training.validation import compute_metrics, predict

__all__ = ["MODALITY_SUBSETS", "data_gaps"]


MODALITY_SUBSETS = (("text", "audio", "visual"), ("text", "audio"), ("text", "visual"), ("audio", "visual"),
                    ("text",), ("audio",), ("visual",))


def _labels(dataset) -> np.ndarray:
    return np.concatenate([np.asarray(c["labels"]) for c in dataset])


def _utterance_features(dataset, modalities):
    """``(X, y, conversation sizes)`` over all utterances, the chosen modalities' features concatenated."""
    xs = [np.concatenate([np.asarray(c[m], dtype=np.float64) for m in modalities], axis=1) for c in dataset]
    return np.concatenate(xs), _labels(dataset), [len(c["labels"]) for c in dataset]


def _window_sum(v: np.ndarray, k: int) -> np.ndarray:
    """``out[i] = sum of v[i-k .. i+k]`` within one conversation."""
    n = len(v)
    csum = np.concatenate([np.zeros((1,) + v.shape[1:]), np.cumsum(v, 0)])
    idx = np.arange(n)
    return csum[np.clip(idx + k + 1, 0, n)] - csum[np.clip(idx - k, 0, n)]


def _only(dataset, modalities) -> dict:
    """A fixed mask table keeping only ``modalities`` in every utterance."""
    keep = torch.tensor([m in modalities for m in ("text", "audio", "visual")])
    return {c["id"]: keep.expand(len(c["labels"]), 3).clone() for c in dataset}


def data_gaps(splits, net=None, split: str = "test", context_windows=(1, 2, 3), device="cpu",
              batch_size: int = 32, log=print) -> dict:
    """How much context and each modality are worth on a dataset (classification).

    * ``context``: a per-utterance logistic regression (no context) against the same
      classifier whose log-probabilities are summed over a ``±k`` window of the conversation
      (the simplest use of local emotional stability), and, with ``net``, the trained
      student on complete data (a learned context model).
    * ``modalities``: the per-utterance classifier trained and tested on each subset of
      modalities; with ``net``, the student tested with only that subset present.

    Rows ``{"model", "modalities", "waf", "acc"}`` (percent), printed as a table.
    """
    if splits.train.task != "classification":
        raise ValueError("data_gaps: classification datasets only")
    test = getattr(splits, split)
    rows, ctx_rows = [], []

    def fit(mods):
        xtr, ytr, _ = _utterance_features(splits.train, mods)
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(xtr, ytr)

    for mods in MODALITY_SUBSETS:
        clf = fit(mods)
        xte, yte, sizes = _utterance_features(test, mods)
        rows.append({"model": "per-utterance logreg (no context)", "modalities": "+".join(m[0] for m in mods),
                     **compute_metrics(yte, clf.predict(xte))})
        if len(mods) == 3:
            logp = np.split(clf.predict_log_proba(xte), np.cumsum(sizes)[:-1])
            for k in context_windows:
                pred = np.concatenate([clf.classes_[_window_sum(lp, k).argmax(1)] for lp in logp])
                ctx_rows.append({"model": f"logreg, log-probs summed over ±{k} utterances",
                                 "modalities": "t+a+v", **compute_metrics(yte, pred)})
    rows += ctx_rows
    if net is not None:
        for mods in MODALITY_SUBSETS:
            y, p, _ = predict(net, test, _only(test, mods), batch_size, device)
            rows.append({"model": "ITEACH student (context)", "modalities": "+".join(m[0] for m in mods),
                         **compute_metrics(y, p)})
    prior = np.bincount(_labels(splits.train).astype(np.int64), minlength=splits.num_classes)
    y_test = _labels(test)
    rows.append({"model": "majority class (chance)", "modalities": "-",
                 **compute_metrics(y_test, np.full_like(y_test, int(prior.argmax())))})
    head = f"{'model':46s} {'mods':>6s} {'WAF':>7s} {'Acc':>7s}"
    lines = [f"data gaps on {test.name} [{split}]", head, "-" * len(head)]
    lines += [f"{r['model']:46s} {r['modalities']:>6s} {r['waf']:7.2f} {r['acc']:7.2f}" for r in rows]
    table = "\n".join(lines)
    log(table)
    return {"rows": rows, "table": table}
