"""The data's gaps, measured like with like: how much context and each modality are worth,
and whether the trained model uses them as well as the baselines do.

Three sections, every row on the same utterances for every model (the student, the
per-utterance logistic regression, the recurrent baseline; :mod:`.baselines` trains both with
the run's missing-rate strategy):

* **context** — complete data: the per-utterance model, the same with its log-probabilities
  summed over ``±k`` neighbours (``k`` chosen on validation), the recurrent model, the
  student and the teacher. A model that reads context should beat the per-utterance row.
* **kept** — the paper's masks (UME, every rate in ``rates`` pooled): the test utterances
  grouped by which modalities each kept (t+a+v, t+a, ..., v), each model scored on each
  group. This is what the training masks teach: a missing modality here is missing for some
  utterances of a conversation, not all.
* **outage** — a named robustness case the paper's masks never produce: one or two
  modalities down for *every* utterance of a conversation (a channel lost for a whole
  call). Train with ``outage_prob`` > 0 for it.
"""
from __future__ import annotations

import numpy as np
import torch

from ..choices import MODALITIES
from ..data.masking import EVAL_RATES, fixed_masks
from ..training.validation import compute_metrics, predictions
from .baselines import BaselineConfig, fit_linear, gru_predictions, linear_predictions, train_gru

__all__ = ["MODALITY_SUBSETS", "data_gaps"]

MODALITY_SUBSETS = (("text", "audio", "visual"), ("text", "audio"), ("text", "visual"), ("audio", "visual"),
                    ("text",), ("audio",), ("visual",))
MODELS = ("student", "teacher", "logreg", "logreg_context", "gru")


def _subset_name(keep: np.ndarray) -> str:
    return "+".join(m[0] for m, k in zip(MODALITIES, keep) if k)


def _only(dataset, modalities) -> dict:
    """A fixed mask table keeping only ``modalities`` in every utterance."""
    keep = torch.tensor([m in modalities for m in MODALITIES])
    return {c["id"]: keep.expand(len(c["labels"]), 3).clone() for c in dataset}


def data_gaps(splits, net=None, split: str = "test", device="cpu", batch_size: int = 32, log=print,
              config: BaselineConfig | None = None, rates=EVAL_RATES[1:], mask_seed: int = 0) -> dict:
    """Rows ``{"section", "modalities", "model", "waf", "acc", "n"}`` (percent) of the three
    sections above on ``split`` (classification datasets), printed as one table; ``net``
    (a trained ITEACHNet) adds the student's and the teacher's columns."""
    if splits.train.task != "classification":
        raise ValueError("data_gaps: classification datasets only")
    config = config or BaselineConfig()
    test = getattr(splits, split)
    labels = np.concatenate([np.asarray(c["labels"]) for c in test])
    linear = fit_linear(splits, config)
    gru, _ = train_gru(splits, config)
    # the context window, chosen on validation (complete data)
    vmask = {c["id"]: np.ones((len(c["labels"]), 3), bool) for c in splits.valid}
    vlabels = np.concatenate([np.asarray(c["labels"]) for c in splits.valid])
    k = max(config.windows, key=lambda w: compute_metrics(vlabels, np.concatenate(
        list(linear_predictions(linear, splits.valid, vmask, w, False).values())))["waf"])

    def predict_all(masks: dict) -> dict:
        """Every model's predictions over ``test``'s utterances, in order, with ``masks``."""
        np_masks = {cid: np.asarray(m) for cid, m in masks.items()}
        order = lambda d: np.concatenate([d[c["id"]] for c in test])  # noqa: E731
        out = {"logreg": order(linear_predictions(linear, test, np_masks, 0, False)),
               "logreg_context": order(linear_predictions(linear, test, np_masks, k, False)),
               "gru": order(gru_predictions(gru, test, np_masks, False))}
        if net is not None:
            torch_masks = {cid: torch.as_tensor(m) for cid, m in masks.items()}
            out["student"] = predictions(net, test, torch_masks, batch_size, device)[1]
        return out

    rows = []

    def add(section, subset, preds, pick=slice(None)):
        for model, p in preds.items():
            rows.append({"section": section, "modalities": subset, "model": model, "n": int(np.size(labels[pick])),
                         **compute_metrics(labels[pick], p[pick])})

    complete = predict_all(_only(test, MODALITIES))
    if net is not None:
        complete["teacher"] = predictions(net, test, None, batch_size, device, model="teacher")[1]
    add("context", "t+a+v", complete)
    # the paper's masks, pooled over the rates, grouped by what each utterance kept
    pooled, kept = {}, []
    for rate in rates:
        masks = fixed_masks(test, rate, mask_seed)
        for model, p in predict_all(masks).items():
            pooled.setdefault(model, []).append(p)
        kept.append(np.concatenate([masks[c["id"]].numpy() for c in test]))
    pooled = {m: np.concatenate(ps) for m, ps in pooled.items()}
    kept = np.concatenate(kept)
    labels_pooled = np.tile(labels, len(rates))
    for mods in MODALITY_SUBSETS:
        want = np.array([m in mods for m in MODALITIES])
        pick = (kept == want).all(1)
        for model, p in pooled.items():
            rows.append({"section": "kept", "modalities": _subset_name(want), "model": model, "n": int(pick.sum()),
                         **compute_metrics(labels_pooled[pick], p[pick])})
    for mods in MODALITY_SUBSETS[1:]:
        add("outage", "+".join(m[0] for m in mods), predict_all(_only(test, mods)))
    prior = np.bincount(np.concatenate([c["labels"] for c in splits.train]).astype(np.int64))
    rows.append({"section": "chance", "modalities": "-", "model": "majority", "n": len(labels),
                 **compute_metrics(labels, np.full_like(labels, int(prior.argmax())))})
    table = _format(rows, test.name, split, rates, k)
    log(table)
    return {"rows": rows, "table": table, "context_window": k}


def _format(rows: list[dict], name: str, split: str, rates, k: int) -> str:
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    heads = {"student": "student", "teacher": "teacher", "logreg": "logreg", "logreg_context": f"logreg±{k}",
             "gru": "BiGRU"}
    titles = {"context": "context: complete data",
              "kept": f"kept: the paper's masks (rates {', '.join(f'{r:.1f}' for r in rates)} pooled), "
                      "utterances by what they kept",
              "outage": "outage: the other modalities missing for every utterance of every conversation"}
    lines = [f"data gaps on {name} [{split}], WAF %"]
    head = f"{'':10s}{'n':>7s}" + "".join(f"{heads[m]:>11s}" for m in models)
    for section, title in titles.items():
        lines += ["", title, head, "-" * len(head)]
        for subset in dict.fromkeys(r["modalities"] for r in rows if r["section"] == section):
            cells = {r["model"]: r for r in rows if r["section"] == section and r["modalities"] == subset}
            n = next(iter(cells.values()))["n"]
            lines.append(f"{subset:10s}{n:7d}" + "".join(
                f"{cells[m]['waf']:11.2f}" if m in cells else f"{'':11s}" for m in models))
    chance = next(r for r in rows if r["section"] == "chance")
    lines += ["", f"majority class (chance): {chance['waf']:.2f}"]
    return "\n".join(lines)
