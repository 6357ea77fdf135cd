"""Evaluation primitives: a checkpoint's model and data, its predictions on a split at
fixed-seed masks, the metrics per missing rate, and the data's gaps.

* :func:`load_for_eval` — ``(net, cfg, splits, ckpt)`` from a checkpoint.
* :func:`predict` — the student's predictions on a split with given masks (or complete
  data), or the teacher's on complete data (``model="teacher"``, as the paper's Table 1).
* :func:`evaluate_rates` — the student on a split at several missing rates, each with a
  fixed-seed mask (:func:`iteach_fast.masking.fixed_masks`): every model sees the same masks;
  or the teacher on complete data (rate 0.0 only).
* :func:`hidden_features` — the teacher's ``H_1`` on complete data and the student's
  ``H'_1`` on masked data per valid utterance (the distance of Fig. 6, the t-SNE of Fig. 9).
* :func:`data_gaps` — how much context and each modality are worth on a dataset.

The protocols built from these (UME, IME, the demo) live in :mod:`iteach_fast.protocols`.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

from .checkpoint import load_checkpoint, load_weights
from .choices import EVAL_MODELS, MODALITIES, check_choice
from .config import TrainConfig
from .data import collate, splits_for
from .masking import EVAL_RATES, apply_mask, fixed_masks, missing_rate, present_for_batch
from .metrics import compute_metrics
from .model import ITEACHNet
from .padding import valid_mask
from .runtime import autocast, resolve_device

__all__ = ["load_for_eval", "predict", "evaluate_rates", "hidden_features", "data_gaps", "EVAL_MODELS"]


def load_for_eval(path: str, device: str = "auto", backend: str | None = None):
    """``(net, cfg, splits, ckpt)``: the checkpoint's model in eval mode on ``device`` and its data."""
    ckpt = load_checkpoint(path)
    cfg = TrainConfig.from_dict(ckpt["config"], source=path)
    if backend:
        cfg = cfg.replace(backend=backend)
    splits = splits_for(cfg)
    net = ITEACHNet.from_config(cfg.model, splits.input_dims, splits.num_classes)
    load_weights(net, ckpt["model"], path)  # the config vs the weights: one message naming what differs
    net.to(resolve_device(device)).eval()
    return net, cfg, splits, ckpt


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
def predict(net, dataset, masks: dict | None, batch_size: int = 32, device="cpu", dtype: str = "fp32",
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
    ``(y_true, y_pred, realised rate)`` (:meth:`iteach_fast.distributed.Context.gather_predictions`)."""
    check_choice("model", model, EVAL_MODELS)
    if model == "teacher" and any(float(r) != 0.0 for r in rates):
        raise ValueError(f"rates {list(rates)}: the teacher is evaluated on complete data only (rate 0.0), "
                         "as the paper's Table 1 does; evaluate the student at missing rates")
    task = "regression" if net.regression else "classification"
    rows = []
    for rate in rates:
        masks = None if model == "teacher" else fixed_masks(dataset, rate, seed)
        y, p, realised = predict(net, dataset if part is None else part, masks, batch_size, device, dtype, model=model)
        if gather is not None:
            y, p, realised = gather(y, p, realised)
        row = {"rate": float(rate), "realised_rate": round(realised, 4), **compute_metrics(y, p, task), "n": len(y)}
        if keep_predictions:
            row["_y"], row["_p"] = y, p
        rows.append(row)
    return rows


# ------------------------------------------------------------------ the data's gaps

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
