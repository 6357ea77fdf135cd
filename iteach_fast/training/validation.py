"""How a model is scored on a split: its predictions at fixed-seed masks and their metrics.
Model selection reads these every epoch; every evaluation (:mod:`iteach_fast.evaluation`)
reports them.

* :func:`compute_metrics` — weighted F1 (WAF) and accuracy over valid utterances (GCNet's
  definitions, via scikit-learn); for regression (CMU-MOSI / MOSEI) predictions and labels
  made binary (``> 0`` / ``< 0``), label-0 utterances excluded, plus the MAE of the raw
  scores. Percent (MAE in label units).
* :func:`predictions` — the student's predictions on a split with given masks (or complete
  data), or the teacher's on complete data (``model="teacher"``, as the paper's Table 1).
* :func:`evaluate_rates` — the student on a split at several missing rates, each with a
  fixed-seed mask (:func:`iteach_fast.data.masking.fixed_masks`): every model sees the same
  masks; or the teacher on complete data (rate 0.0 only).
* :func:`hidden_features` — the teacher's ``H_1`` on complete data and the student's
  ``H'_1`` on masked data per valid utterance (the distance of Fig. 6, the t-SNE of Fig. 9).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..choices import EVAL_MODELS, MODALITIES, check_choice
from ..data.dataset import collate
from ..data.masking import EVAL_RATES, apply_mask, fixed_masks, missing_rate, present_for_batch
from ..ops.padding import valid_mask
from .runtime import autocast

__all__ = ["compute_metrics", "predictions", "evaluate_rates", "hidden_features", "EVAL_MODELS"]


def _batches(dataset, masks: dict | None, batch_size: int):
    """``(batch, present, incomplete, valid)`` per batch of ``dataset`` in order, ``present``
    from the fixed ``masks`` (None: complete data, every valid cell present)."""
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        B, L = batch["labels"].shape
        valid = valid_mask(batch["lengths"], L)
        present = present_for_batch(batch, masks) if masks is not None else valid[..., None].expand(B, L, 3).clone()
        yield batch, present, apply_mask(batch, present), valid


def _check_model(model: str, masks: dict | None) -> None:
    check_choice("model", model, EVAL_MODELS)
    if model == "teacher" and masks is not None:
        raise ValueError("model='teacher' is evaluated on complete data only (masks=None): the teacher is "
                         "trained on complete conversations, as the paper's Table 1 evaluates it")


@torch.no_grad()
def predictions(net, dataset, masks: dict | None, batch_size: int = 32, device="cpu", dtype: str = "fp32",
                model: str = "student"):
    """The student's predictions on ``dataset`` with ``masks`` (None = complete data), or, with
    ``model="teacher"``, the teacher's on complete data (``masks`` must be None).

    Returns ``(y_true, y_pred, realised_rate)`` over valid utterances: ``y_pred`` class ids,
    or raw scores for a regressor.
    """
    _check_model(model, masks)
    device = torch.device(device)
    was_training = net.training
    net.eval()
    ys, ps, cells, lost = [], [], 0, 0
    for batch, present, inc, valid in _batches(dataset, masks, batch_size):
        lengths = batch["lengths"].to(device)
        with autocast(device, dtype):
            if model == "teacher":
                out = net.teacher(*(batch[m].to(device) for m in MODALITIES), lengths, None).logits
            else:
                out = net.predict(tuple(inc[m].to(device) for m in MODALITIES), lengths, present.to(device))
        out = out.float().cpu()
        pred = out if net.regression else out.argmax(-1)
        ys.append(batch["labels"][valid].numpy())
        ps.append(pred[valid].numpy())
        n = int(valid.sum())
        cells += 3 * n
        lost += round(missing_rate(present, batch["lengths"]) * 3 * n)
    net.train(was_training)
    if not ys:
        return np.zeros(0), np.zeros(0), 0.0
    return np.concatenate(ys), np.concatenate(ps), lost / max(cells, 1)


@torch.no_grad()
def hidden_features(net, dataset, masks: dict | None, batch_size: int = 32, device="cpu",
                    dtype: str = "fp32") -> dict:
    """``{"teacher": (N, D), "student": (N, D), "labels": (N,)}`` over the valid utterances of
    ``dataset`` in order: the teacher's last hidden feature ``H_1`` on complete data and the
    student's ``H'_1`` with ``masks`` (None = complete data), float32 numpy arrays."""
    device = torch.device(device)
    was_training = net.training
    net.eval()
    out = {"teacher": [], "student": [], "labels": []}
    for batch, present, inc, valid in _batches(dataset, masks, batch_size):
        lengths = batch["lengths"].to(device)
        with autocast(device, dtype):
            h_t = net.teacher(*(batch[m].to(device) for m in MODALITIES), lengths, None).hidden[0]
            h_s = net.student(*(inc[m].to(device) for m in MODALITIES), lengths, present.to(device)).hidden[0]
        out["teacher"].append(h_t.float().cpu()[valid].numpy())
        out["student"].append(h_s.float().cpu()[valid].numpy())
        out["labels"].append(batch["labels"][valid].numpy())
    net.train(was_training)
    if not out["labels"]:
        D = net.student.dim
        return {"teacher": np.zeros((0, D), np.float32), "student": np.zeros((0, D), np.float32),
                "labels": np.zeros(0)}
    return {k: np.concatenate(v) for k, v in out.items()}


def evaluate_rates(net, dataset, rates=EVAL_RATES, seed: int = 0, batch_size: int = 32, device="cpu",
                   dtype: str = "fp32", keep_predictions: bool = False, model: str = "student", part=None,
                   gather=None) -> list[dict]:
    """One row per rate: ``{"rate", "realised_rate", "waf", "acc", ["mae"], "n"}``.

    ``model="teacher"``: the teacher on complete data, so ``rates`` must be ``(0.0,)``.
    Data-parallel evaluation: ``part`` (default: all of ``dataset``) are the conversations
    this process predicts, with ``dataset``'s masks; ``gather`` combines every process's
    ``(y_true, y_pred, realised rate)`` (:meth:`iteach_fast.training.distributed.Context.gather_predictions`)."""
    check_choice("model", model, EVAL_MODELS)
    if model == "teacher" and any(float(r) != 0.0 for r in rates):
        raise ValueError(f"rates {list(rates)}: the teacher is evaluated on complete data only (rate 0.0), "
                         "as the paper's Table 1 does; evaluate the student at missing rates")
    task = "regression" if net.regression else "classification"
    rows = []
    for rate in rates:
        masks = None if model == "teacher" else fixed_masks(dataset, rate, seed)
        y, p, realised = predictions(net, dataset if part is None else part, masks, batch_size, device, dtype,
                                     model=model)
        if gather is not None:
            y, p, realised = gather(y, p, realised)
        row = {"rate": float(rate), "realised_rate": round(realised, 4), **compute_metrics(y, p, task), "n": len(y)}
        if keep_predictions:
            row["_y"], row["_p"] = y, p
        rows.append(row)
    return rows


# ------------------------------------------------------------------ the data's gaps


def compute_metrics(y_true, y_pred, task: str = "classification") -> dict:
    """``{"waf", "acc"}`` in percent (``+ "mae"`` for regression) over the given utterances.

    Classification: ``y_pred`` are class ids. Regression: ``y_pred`` are raw scores.
    """
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error  # scikit-learn: where used

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if task == "regression":
        out = {"mae": float(mean_absolute_error(y_true, y_pred)) if len(y_true) else float("nan")}
        keep = y_true != 0  # GCNet: label-0 utterances have no polarity
        t, p = y_true[keep] > 0, y_pred[keep] > 0
    else:
        out, t, p = {}, y_true, y_pred
    if len(t) == 0:
        return {"waf": float("nan"), "acc": float("nan"), **out}
    return {"waf": 100.0 * float(f1_score(t, p, average="weighted")),
            "acc": 100.0 * float(accuracy_score(t, p)), **out}
