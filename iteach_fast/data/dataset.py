"""Conversations as the package holds them, and their batches.

Every dataset (the synthetic generator, :mod:`.synthetic`; GCNet's feature files,
:mod:`.gcnet`) yields conversations as dicts of numpy arrays::

    {"id": str, "text": (n, d_t), "audio": (n, d_a), "visual": (n, d_v) float32,
     "labels": (n,) int64 (classification) or float32 (regression), "speakers": (n,) int64}

and :func:`collate` pads a list of them into a batch (see its docstring).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from ..choices import MODALITIES

CLASS_NAMES = {
    4: ("happy", "sad", "neutral", "angry"),
    6: ("happy", "sad", "neutral", "angry", "excited", "frustrated"),
}
# utterance counts of GCNet's IEMOCAP label files (docs/data.md, "Dataset facts"): the synthetic class frequencies
CLASS_COUNTS = {4: (1636, 1084, 1708, 1103), 6: (648, 1084, 1708, 1103, 1041, 1849)}

SYNTHETIC_DIMS = {"small": (64, 32, 48), "iemocap": (1024, 512, 1024)}


class DataError(ValueError):
    """A data file is missing or malformed; the message names the path and what was expected."""


def checked_features(x, where: str, dtype=np.float32, row: str | None = None, suffix: str = "") -> np.ndarray:
    """``x`` cast to the compute dtype ``dtype``, then checked: not empty, every value finite. The
    check comes after the cast, where it matters: a float64 1e300 is finite, its float32 is inf.
    A ``DataError`` starting with ``where`` otherwise; ``row`` (e.g. ``"utterance"``) names the
    first bad row of a 2-D array, ``suffix`` ends the message."""
    src = np.asarray(x)
    if src.dtype.kind not in "biuf":
        raise DataError(f"{where}: expected a numeric feature array, got dtype {src.dtype}{suffix}")
    with np.errstate(over="ignore", invalid="ignore"):
        a = src.astype(dtype, copy=False)
    if a.size == 0:
        raise DataError(f"{where}: the feature array is empty (shape {a.shape}); expected at least one value"
                        f"{suffix}")
    bad = ~np.isfinite(a)
    if bad.any():
        overflow = int((bad & np.isfinite(src)).sum()) if src.dtype.kind == "f" else int(bad.sum())
        dt = np.dtype(dtype).name
        as_dt = f" as {dt}" if overflow else ""
        over = (f"{overflow} of them finite as {src.dtype} but beyond {dt}'s range ±{float(np.finfo(dtype).max):.3g}"
                if overflow else "")
        if row and a.ndim == 2:
            first = int(np.flatnonzero(bad.any(axis=1))[0])
            raise DataError(f"{where}: {row} {first} holds NaN or infinite values{as_dt} ({int(bad.sum())} of {a.size} "
                            f"in all{'; ' + over if over else ''}){suffix}")
        raise DataError(f"{where}: {int(bad.sum())} of {a.size} feature values are NaN or infinite{as_dt}"
                        f"{' (' + over + ')' if over else ''}{suffix}")
    return a


class ConversationDataset(Dataset):
    """A list of conversations plus what a model needs to know about them."""

    def __init__(self, conversations: list[dict], input_dims, num_classes: int, class_names=(), name=""):
        self.conversations = conversations
        self.input_dims = tuple(int(d) for d in input_dims)
        self.num_classes = int(num_classes)  # 1 = regression
        self.class_names = tuple(class_names)
        self.name = name

    @property
    def task(self) -> str:
        return "regression" if self.num_classes == 1 else "classification"

    def __len__(self):
        return len(self.conversations)

    def __getitem__(self, i):
        return self.conversations[i]

    def num_utterances(self) -> int:
        return sum(len(c["labels"]) for c in self.conversations)


@dataclass
class DataSplits:
    train: ConversationDataset
    valid: ConversationDataset
    test: ConversationDataset
    input_dims: tuple
    num_classes: int
    class_names: tuple = ()
    notes: list = field(default_factory=list)  # protocol remarks to print (e.g. selection on test)

    @property
    def task(self) -> str:
        return "regression" if self.num_classes == 1 else "classification"

    def check_dtype(self, dtype) -> None:
        """Every feature array of every split checked after its cast to ``dtype`` (e.g. float16,
        the compute dtype of an fp16 run: values beyond ±65504 become inf there)."""
        for part, data in (("train", self.train), ("valid", self.valid), ("test", self.test)):
            for conv in data:
                for m in MODALITIES:
                    checked_features(conv[m], f"{data.name} {part} conversation {conv['id']!r}, {m}", dtype,
                                     row="utterance")

    def summary(self) -> str:
        parts = [f"{k}: {len(d)} conversations / {d.num_utterances()} utterances"
                 for k, d in (("train", self.train), ("valid", self.valid), ("test", self.test))]
        return f"{self.train.name}: " + "; ".join(parts) + f"; dims (t, a, v) = {self.input_dims}"


def collate(conversations: list[dict]) -> dict:
    """Pad a list of conversations to the longest one.

    Returns ``{"text", "audio", "visual"}`` float32 ``(B, L, d_m)``, ``"labels"`` ``(B, L)``
    (int64, or float32 for regression), ``"speakers"`` ``(B, L)`` int64, ``"lengths"``
    ``(B,)`` int64 and ``"ids"`` (list of str). Padded positions are 0 everywhere; ``lengths``
    says which positions are real (losses and metrics must use it).
    """
    B = len(conversations)
    lengths = torch.tensor([len(c["labels"]) for c in conversations], dtype=torch.int64)
    L = int(lengths.max()) if B else 0
    batch = {}
    for m in MODALITIES:
        d = conversations[0][m].shape[1] if B else 0
        x = torch.zeros(B, L, d, dtype=torch.float32)
        for b, c in enumerate(conversations):
            x[b, : len(c[m])] = torch.from_numpy(np.ascontiguousarray(c[m], dtype=np.float32))
        batch[m] = x
    regression = B > 0 and np.asarray(conversations[0]["labels"]).dtype.kind == "f"
    labels = torch.zeros(B, L, dtype=torch.float32 if regression else torch.int64)
    speakers = torch.zeros(B, L, dtype=torch.int64)
    for b, c in enumerate(conversations):
        n = len(c["labels"])
        labels[b, :n] = torch.as_tensor(np.asarray(c["labels"]), dtype=labels.dtype)
        speakers[b, :n] = torch.as_tensor(np.asarray(c["speakers"]), dtype=torch.int64)
    batch.update(labels=labels, speakers=speakers, lengths=lengths, ids=[c["id"] for c in conversations])
    return batch


# ----------------------------------------------------------------------------------------
# synthetic conversations
# ----------------------------------------------------------------------------------------
