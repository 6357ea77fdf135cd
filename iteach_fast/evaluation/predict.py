"""A trained checkpoint on new data: one prediction per utterance (``iteach-fast predict``).

    iteach-fast predict runs/train/best.pt new.npz --out predictions.csv
    iteach-fast predict runs/causal/best.pt new.pt --stream --out live.json

Every argument is checked before anything is read: ``--batch-size`` (>= 1), the output file
(not the checkpoint, not the input, not a folder, writable: :func:`iteach_fast.files.check_output`);
then the checkpoint (its weights finite); then every conversation's arrays, before anything
runs: the feature dims against the model's, shapes, and every value finite after the cast to
float32 (:func:`iteach_fast.data.dataset.checked_features`). An utterance with no modality present
is predicted from its context alone, with one :class:`~iteach_fast.nn.streaming.NoModalityWarning`
per input.

Inputs:

- ``.npz``: per-conversation arrays under ``<conversation>/text`` ``(L, d_t)``,
  ``<conversation>/audio``, ``<conversation>/visual`` and optionally ``<conversation>/present``
  ``(L, 3)`` bool (a missing modality's features are zeroed, GCNet's convention); or the
  bare keys ``text``, ``audio``, ... for one conversation named after the file.
- ``.pt``: ``{conversation: {"text": ..., "audio": ..., "visual": ..., "present": ...}}``
  (tensors or arrays; loaded with ``weights_only``).
- a folder in GCNet's layout (label pickle + feature folders, docs/data.md), read by the
  package's own loader (:func:`iteach_fast.data.gcnet.load_gcnet`); its labels (checked by that
  loader) are reported alongside the predictions. Other keys of a file are ignored.

Output: one row per utterance — ``conversation``, ``utterance`` (its index), the predicted
class (``prediction``, ``class_id``) and one ``p_<class>`` column per class, or the
``score`` of a regressor (CMU-MOSI / MOSEI) — as CSV or JSON.

``stream=True`` replays each conversation utterance by utterance through a causal model
(:class:`~iteach_fast.nn.streaming.StreamingSession`): each row is what the model said when
that utterance arrived, knowing only the utterances before it (``known`` of them, and the
push's ``latency_ms``). A bidirectional model cannot do that: its prediction for an utterance
depends on what is said after it.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
import warnings

import numpy as np
import torch

from ..choices import EVAL_MODELS, FORMATS, MODALITIES, check_choice
from ..data.dataset import DataError, checked_features
from ..data.gcnet import load_gcnet
from ..files import atomic_write, check_output
from ..nn.model import ITEACHNet
from ..nn.streaming import NoModalityWarning
from ..training.checkpoint import load_model
from ..training.config import TrainConfig
from ..training.runtime import resolve_device

__all__ = ["load_conversations", "predict_rows", "write_predictions", "predict_file", "replay", "FORMATS"]


# ------------------------------------------------------------------ inputs

def _as_array(value, where: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: not an array ({err})") from None


def _check_conversation(cid: str, fields: dict, input_dims, max_len: int, source: str) -> dict:
    """One conversation's arrays, checked and converted: float32 features, bool ``present``."""
    conv = {"id": str(cid)}
    length = None
    for m, d in zip(MODALITIES, input_dims):
        where = f"{source}: conversation {cid!r}, {m}"
        if m not in fields:
            raise DataError(f"{where}: missing (every conversation needs text, audio and visual arrays)")
        x = _as_array(fields[m], where)
        if x.dtype.kind not in "fiu" or x.ndim != 2:
            raise DataError(f"{where}: expected a numeric (utterances, {d}) array, got {x.dtype} {x.shape}")
        if x.shape[1] != d:
            raise DataError(f"{where}: feature dim {x.shape[1]}, but the model was trained on {m} features of "
                            f"dim {d} (input dims text, audio, visual = {tuple(input_dims)})")
        if length is None:
            length = x.shape[0]
        elif x.shape[0] != length:
            raise DataError(f"{where}: {x.shape[0]} utterances, but text has {length}")
        conv[m] = x
    if length == 0:
        raise DataError(f"{source}: conversation {cid!r} has no utterances")
    for m in MODALITIES:  # checked as the model computes with them: float32 (a float64 1e300 is inf there)
        conv[m] = checked_features(conv[m], f"{source}: conversation {cid!r}, {m}", np.float32, row="utterance")
    if length > max_len:
        raise DataError(f"{source}: conversation {cid!r} has {length} utterances; the model was built for at most "
                        f"max_len={max_len}")
    present = fields.get("present")
    if present is not None:
        p = _as_array(present, f"{source}: conversation {cid!r}, present")
        if p.shape != (length, 3) or p.dtype.kind not in "biu" or not np.isin(p, (0, 1)).all():
            raise DataError(f"{source}: conversation {cid!r}, present: expected a bool ({length}, 3) array "
                            f"(text, audio, visual present), got {p.dtype} {p.shape}")
        conv["present"] = p.astype(bool)
    return conv


def _read_npz(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as err:  # noqa: BLE001 - numpy raises several kinds
        raise DataError(f"{path}: cannot read as .npz ({err})") from err
    if set(MODALITIES) <= set(arrays):  # one conversation, bare keys
        return {os.path.splitext(os.path.basename(path))[0]: arrays}
    convs: dict = {}
    for key, value in arrays.items():
        cid, sep, name = key.rpartition("/")
        if not sep:
            raise DataError(f"{path}: key {key!r}: expected <conversation>/<text|audio|visual|present> keys "
                            "(or text, audio, visual for one conversation)")
        convs.setdefault(cid, {})[name] = value
    return convs


def _read_pt(path: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many kinds
        raise DataError(f"{path}: cannot read as a torch file of tensors ({err})") from err
    if isinstance(obj, dict) and set(MODALITIES) <= set(obj):
        obj = {os.path.splitext(os.path.basename(path))[0]: obj}
    if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
        raise DataError(f"{path}: expected {{conversation: {{'text': (L, d_t), 'audio': ..., 'visual': ..., "
                        f"'present': (L, 3) optional}}}}")
    return obj


def _read_gcnet(path: str, dataset: str | None, cfg: TrainConfig) -> dict:
    name = dataset or (cfg.dataset if cfg.dataset != "synthetic" else None)
    if name is None:
        raise ValueError(f"{path}: a GCNet-layout folder needs its dataset name (--dataset iemocap4, iemocap6, "
                         "cmumosi or cmumosei): the checkpoint was trained on synthetic data")
    splits = load_gcnet(name, path, fold=cfg.fold, seed=cfg.seed)
    convs = {}
    for part in (splits.train, splits.valid, splits.test):
        for c in part:
            convs.setdefault(c["id"], {m: c[m] for m in (*MODALITIES, "labels")})
    return dict(sorted(convs.items()))


def load_conversations(path: str, input_dims, max_len: int, dataset: str | None = None,
                       cfg: TrainConfig | None = None) -> list[dict]:
    """The conversations of ``path`` (``.npz``, ``.pt`` or a GCNet-layout folder), checked against
    the model's ``input_dims`` and ``max_len``: ``[{"id", "text", "audio", "visual"[, "present",
    "labels"]}]`` with float32 ``(L, d_m)`` features."""
    if os.path.isdir(path):
        raw = _read_gcnet(path, dataset, cfg or TrainConfig())
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file or folder (expected .npz, .pt or a GCNet-layout folder)")
    elif path.endswith(".npz"):
        raw = _read_npz(path)
    elif path.endswith((".pt", ".pth")):
        raw = _read_pt(path)
    else:
        raise DataError(f"{path}: expected a .npz or .pt file, or a GCNet-layout folder")
    if not raw:
        raise DataError(f"{path}: no conversations found")
    convs = [_check_conversation(cid, fields, input_dims, max_len, path) for cid, fields in raw.items()]
    silent = [(c["id"], int(i)) for c in convs if "present" in c for i in np.flatnonzero(~c["present"].any(axis=1))]
    if silent:
        warnings.warn(f"{path}: {len(silent)} utterance(s) have no modality present (e.g. conversation "
                      f"{silent[0][0]!r}, utterance {silent[0][1]}): their predictions rest on the other utterances "
                      "alone", NoModalityWarning, stacklevel=2)
    if os.path.isdir(path):  # a GCNet folder's labels (checked by its loader) are reported beside the predictions
        for conv in convs:
            conv["labels"] = np.asarray(raw[conv["id"]]["labels"])
    return convs


# ------------------------------------------------------------------ predictions

def _inputs(conv: dict) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``([text, audio, visual] (L, d_m) with absent modalities zeroed, present (L, 3))``."""
    L = len(conv["text"])
    present = torch.from_numpy(conv["present"]) if "present" in conv else torch.ones(L, 3, dtype=torch.bool)
    xs = [torch.from_numpy(conv[m]) * present[:, i:i + 1] for i, m in enumerate(MODALITIES)]
    return xs, present


def _row(conv: dict, i: int, out: torch.Tensor, classes, regression: bool) -> dict:
    row = {"conversation": conv["id"], "utterance": i}
    if regression:
        row["score"] = float(out)
    else:
        probs = out.tolist()
        best = int(np.argmax(probs))
        row["prediction"] = classes[best]
        row["class_id"] = best
        row.update({f"p_{c}": round(p, 6) for c, p in zip(classes, probs)})
    if "labels" in conv:
        label = conv["labels"][i]
        row["label"] = float(label) if regression else classes[int(label)]
    return row


@torch.no_grad()
def predict_rows(net: ITEACHNet, conversations: list[dict], class_names=(), stream: bool = False,
                 batch_size: int = 32, model: str = "student") -> list[dict]:
    """One row per utterance of ``conversations`` (see the module docstring) from ``net``'s
    ``model`` ("student": the incomplete-data model, or "teacher"). ``stream``: each
    conversation replayed one utterance at a time through a causal net."""
    check_choice("model", model, EVAL_MODELS)
    _check_batch_size(batch_size)
    m = getattr(net, model)
    device = next(net.parameters()).device
    regression = net.regression
    classes = list(class_names) if len(class_names) == m.num_classes else [str(c) for c in range(m.num_classes)]
    rows = []
    if stream:
        if not net.causal:
            raise ValueError("--stream needs a causal model (trained with --causal): a bidirectional model's "
                             "prediction for an utterance depends on the utterances after it")
        session = m.stream(batch_size=1)
        with warnings.catch_warnings():  # utterances with no modality: said once per input (load_conversations)
            warnings.simplefilter("ignore", NoModalityWarning)
            for conv in conversations:
                session.reset()
                xs, present = _inputs(conv)
                for i in range(len(present)):
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)  # earlier queued work is not this utterance's latency
                    t0 = time.perf_counter()
                    out = session.push(*(x[i:i + 1].to(device) for x in xs), present[i:i + 1].to(device))
                    probs = out[0].cpu()  # a blocking copy: the latency includes the push's kernels
                    latency = (time.perf_counter() - t0) * 1e3
                    row = _row(conv, i, probs, classes, regression)
                    rows.append({**row, "known": i + 1, "latency_ms": round(latency, 3)})
        return rows
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start:start + batch_size]
        lengths = torch.tensor([len(c["text"]) for c in chunk])
        L = int(lengths.max())
        xs = [torch.zeros(len(chunk), L, d) for d in net.student.input_dims]
        present = torch.zeros(len(chunk), L, 3, dtype=torch.bool)
        for b, conv in enumerate(chunk):
            cx, cp = _inputs(conv)
            n = len(cp)
            for x, c in zip(xs, cx):
                x[b, :n] = c
            present[b, :n] = cp
        out = m(*(x.to(device) for x in xs), lengths, present.to(device)).logits.float().cpu()
        if not regression:
            out = torch.softmax(out, dim=-1)
        rows += [_row(conv, i, out[b, i], classes, regression) for b, conv in enumerate(chunk)
                 for i in range(len(conv["text"]))]
    return rows


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be an integer >= 1 (conversations per batch), got {batch_size!r}")


def write_predictions(rows: list[dict], path: str, fmt: str | None = None, meta: dict | None = None) -> str:
    """Prediction ``rows`` as CSV (one line per utterance) or JSON (``{"meta", "rows"}``), atomically;
    ``fmt`` from ``path``'s extension when None."""
    fmt = fmt or ("json" if path.endswith(".json") else "csv")
    check_choice("format", fmt, FORMATS)
    return atomic_write(path, _predictions_text(rows, fmt, meta))


def _predictions_text(rows: list[dict], fmt: str, meta: dict | None) -> str:
    if fmt == "json":
        return json.dumps({"meta": meta or {}, "rows": rows}, indent=1)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["conversation", "utterance"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def predict_file(checkpoint: str, inputs: str, out: str | None = None, fmt: str | None = None, stream: bool = False,
                 device: str = "auto", backend: str | None = None, batch_size: int = 32, dataset: str | None = None,
                 model: str = "student", log=print) -> dict:
    """The predictions of ``checkpoint`` for the conversations in the file or folder ``inputs``:
    :func:`~iteach_fast.training.checkpoint.load_model` + :func:`load_conversations` +
    :func:`predict_rows`, written to ``out`` (CSV or JSON; None: CSV on ``log``). Returns
    ``{"rows", "path", "meta"}``."""
    if fmt is not None:
        check_choice("--format", fmt, FORMATS)
    check_choice("--model", model, EVAL_MODELS)
    _check_batch_size(batch_size)
    if out:  # before anything is read: never over an input, never after the work
        check_output(out, "--out", inputs=(checkpoint, inputs))
    dev = resolve_device(device)
    net, cfg, ckpt = load_model(checkpoint, dev, backend)
    data = ckpt["data"]
    if stream and not net.causal:  # before reading any data
        raise ValueError(f"{checkpoint}: --stream needs a causal model (trained with --causal); this one is "
                         "bidirectional: its prediction for an utterance depends on the utterances after it")
    convs = load_conversations(inputs, data["input_dims"], net.student.max_len, dataset, cfg)
    rows = predict_rows(net, convs, data.get("class_names", ()), stream, batch_size, model)
    meta = {"checkpoint": os.path.abspath(checkpoint), "inputs": os.path.abspath(inputs), "model": model,
            "stream": stream, "causal": net.causal, "conversations": len(convs), "utterances": len(rows),
            "task": "regression" if net.regression else "classification"}
    path = None
    if out:
        path = write_predictions(rows, out, fmt, meta)
    else:
        log(_predictions_text(rows, fmt or "csv", meta).rstrip("\n"))
    return {"rows": rows, "path": path, "meta": meta}


def replay(net: ITEACHNet, conversation: dict, class_names=(), log=print) -> list[dict]:
    """Replay one conversation live through a causal net's student, printing each utterance's
    prediction as it arrives (``iteach-fast demo --stream``); returns the rows."""
    rows = predict_rows(net, [conversation], class_names, stream=True)
    has_label = "label" in rows[0] if rows else False
    log(f"live replay of conversation {conversation['id']!r} ({len(rows)} utterances), causal student:")
    for r in rows:
        if "score" in r:
            said = f"{r['score']:+.2f}"
        else:
            said = f"{r['prediction']:>10s} (p {r['p_' + r['prediction']]:.2f})"
        truth = f"   label {r['label']}" if has_label else ""
        log(f"  utterance {r['utterance']:3d} arrives -> {said}   [{r['latency_ms']:.1f} ms]{truth}")
    if has_label and "prediction" in rows[0]:
        right = sum(r["prediction"] == r["label"] for r in rows)
        log(f"live predictions right: {right} of {len(rows)} (each made knowing only the utterances so far)")
    return rows

