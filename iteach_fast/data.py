"""Conversations: a synthetic generator (the default) and a loader for GCNet's feature files.

Every dataset yields conversations as dicts of numpy arrays::

    {"id": str, "text": (n, d_t), "audio": (n, d_a), "visual": (n, d_v) float32,
     "labels": (n,) int64 (classification) or float32 (regression), "speakers": (n,) int64}

and :func:`collate` pads a list of them into a batch (see its docstring).

Synthetic conversations (``synthetic``; docs/data.md "Dataset facts" are what they mimic)
-----------------------------------------------------------------------------------------
* 10-110 utterances, two alternating speakers (one for regression, like CMU-MOSI).
* Labels follow *local emotional stability*: a sticky Markov chain — runs of one emotion
  that change at context shifts (probability ``shift_prob`` per utterance), the new emotion
  drawn from IEMOCAP-like class frequencies.
* Each modality sees the label through a latent class prototype plus noise, mapped by a
  fixed random matrix into ``d_m`` dimensions. Modalities differ in reliability (text >
  audio > visual) and each merges particular class pairs (audio: arousal — happy/angry and
  sad/neutral; visual: neutral/sad, happy/excited; text: mild ones), so modalities are
  complementary and dropping one costs accuracy.
* Context matters: a fraction ``ambiguous`` of utterances carry only a weak signal in every
  modality (the label is still the run's emotion), and each conversation and speaker adds
  its own offset to the features; a model that looks at the neighbours resolves both, a
  per-utterance classifier cannot.

GCNet layout (``iemocap4``, ``iemocap6``, ``cmumosi``, ``cmumosei``)
--------------------------------------------------------------------
``<data_root>/<label pickle>`` holding ``(videoIDs, videoLabels, videoSpeakers,
videoSentences, trainVid, testVid)`` (MOSI/MOSEI: ``..., trainVids, valVids, testVids``)
and one feature folder per modality holding ``<utterance-id>*.npy`` (``[D]`` or ``[T, D]``,
averaged over time) or, for faces, a folder per utterance with one ``.npy`` per face (for
IEMOCAP the faces whose file name contains the speaker's letter F/M; none gives zeros),
as GCNet's ``dataloader_iemocap.py`` / ``dataloader_cmumosi.py`` read them.
"""
from __future__ import annotations

import glob
import os
import pickle
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from .choices import MODALITIES

CLASS_NAMES = {
    4: ("happy", "sad", "neutral", "angry"),
    6: ("happy", "sad", "neutral", "angry", "excited", "frustrated"),
}
# utterance counts of GCNet's IEMOCAP label files (docs/data.md, "Dataset facts"): the synthetic class frequencies
CLASS_COUNTS = {4: (1636, 1084, 1708, 1103), 6: (648, 1084, 1708, 1103, 1041, 1849)}

SYNTHETIC_DIMS = {"small": (64, 32, 48), "iemocap": (1024, 512, 1024)}


class DataError(ValueError):
    """A data file is missing or malformed; the message names the path and what was expected."""


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

# which class groups each modality (text, audio, visual) can barely tell apart
_CONFUSIONS = {
    4: ([(2, 1)], [(0, 3), (1, 2)], [(2, 1), (0, 3)]),
    6: ([(0, 4), (3, 5)], [(0, 3, 4), (1, 2, 5)], [(2, 5, 1), (0, 4)]),
}
_RELIABILITY = (1.0, 0.8, 0.6)  # latent signal scale of text, audio, visual


@dataclass
class SyntheticSpec:
    num_conversations: int = 120
    min_len: int = 10
    max_len: int = 110
    num_classes: int = 4  # 4 or 6 emotions, or 1 = regression in [-3, 3]
    dims: tuple = SYNTHETIC_DIMS["small"]  # (text, audio, visual)
    seed: int = 0
    shift_prob: float = 0.12  # P(context shift) before each utterance
    ambiguous: float = 0.3  # fraction of utterances whose signal is weak in every modality
    signal: float = 2.4  # latent signal scale (noise has unit variance)
    latent: int = 8  # latent dimension per modality
    split: tuple = (0.7, 0.1, 0.2)


def _prototypes(rng, num_classes, latent, groups):
    """Unit class prototypes in which the classes of each group sit close together."""
    protos = rng.standard_normal((max(num_classes, 2), latent))
    for g in groups:
        centre = rng.standard_normal(latent)
        for c in g:  # mostly the shared centre, a little of their own direction
            protos[c] = 0.92 * centre / np.linalg.norm(centre) + 0.39 * protos[c] / np.linalg.norm(protos[c])
    return protos / np.linalg.norm(protos, axis=1, keepdims=True)


def make_synthetic(spec: SyntheticSpec) -> DataSplits:
    """Train/valid/test conversations, all from ``spec.seed`` (no download)."""
    if spec.num_classes not in (1, 4, 6):
        raise ValueError(f"synthetic num_classes must be 4, 6 or 1 (regression), got {spec.num_classes}")
    if not 1 <= spec.min_len <= spec.max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {spec.min_len}, {spec.max_len}")
    rng = np.random.default_rng(spec.seed)
    C = spec.num_classes
    regression = C == 1
    r = spec.latent
    if regression:
        # direction 0: valence (sign), 1: intensity; audio hears intensity better than sign
        mix = ((1.0, 0.3), (0.35, 1.0), (0.7, 0.5))
        basis = [rng.standard_normal((2, r)) for _ in MODALITIES]
        basis = [b / np.linalg.norm(b, axis=1, keepdims=True) for b in basis]
    else:
        protos = [_prototypes(rng, C, r, g) for g in _CONFUSIONS[C]]
        prior = np.asarray(CLASS_COUNTS[C], dtype=float)
        prior /= prior.sum()
    # fixed random maps latent -> feature space, scaled so features have O(1) entries
    maps = [rng.standard_normal((r, d)) / np.sqrt(r) for d in spec.dims]

    conversations = []
    for ci in range(spec.num_conversations):
        n = int(rng.integers(spec.min_len, spec.max_len + 1))
        # sticky chain: a shift before utterance i starts a new run with a new emotion
        shifts = rng.random(n) < spec.shift_prob
        shifts[0] = True
        if regression:
            seg = np.where(shifts, rng.uniform(-3, 3, n), 0.0)
            run_value = seg[np.maximum.accumulate(np.where(shifts, np.arange(n), 0))]
            labels = np.clip(np.round((run_value + 0.4 * rng.standard_normal(n)) * 3) / 3, -3, 3)
            labels = labels.astype(np.float32)
            speakers = np.zeros(n, dtype=np.int64)
        else:
            labels = np.empty(n, dtype=np.int64)
            cur = -1
            for i in range(n):
                if shifts[i]:
                    p = prior.copy()
                    if cur >= 0:
                        p[cur] = 0.0
                    cur = int(rng.choice(C, p=p / p.sum()))
                labels[i] = cur
            # alternating turns, sometimes a speaker holds the floor
            turns = rng.random(n) < 0.8
            turns[0] = bool(rng.integers(2))
            speakers = (np.cumsum(turns) % 2).astype(np.int64)
        strength = np.where(rng.random(n) < spec.ambiguous, 0.15, 1.0) * spec.signal
        conv = {"id": f"syn{ci:04d}", "labels": labels, "speakers": speakers}
        for m, name in enumerate(MODALITIES):
            if regression:
                y = labels / 3.0
                signal = np.outer(mix[m][0] * y, basis[m][0]) + np.outer(mix[m][1] * np.abs(y), basis[m][1])
            else:
                signal = protos[m][labels]
            z = _RELIABILITY[m] * strength[:, None] * signal
            z = z + 0.6 * rng.standard_normal(r)  # conversation offset (recording conditions)
            z = z + 0.4 * rng.standard_normal((2, r))[speakers]  # speaker offset
            z = z + rng.standard_normal((n, r))
            x = z @ maps[m] + 0.3 * rng.standard_normal((n, spec.dims[m]))
            conv[name] = x.astype(np.float32)
        conversations.append(conv)

    order = rng.permutation(spec.num_conversations)
    n_train = int(round(spec.split[0] * len(order)))
    n_valid = int(round(spec.split[1] * len(order)))
    parts = np.split(order, [n_train, n_train + n_valid])
    names = CLASS_NAMES.get(C, ())
    tag = f"synthetic-{'regression' if regression else f'{C}class'}"
    ds = [ConversationDataset([conversations[i] for i in idx], spec.dims, C, names, f"{tag}/{s}")
          for idx, s in zip(parts, ("train", "valid", "test"))]
    for d in ds:
        d.name = tag
    return DataSplits(*ds, input_dims=tuple(spec.dims), num_classes=C, class_names=names)


# ----------------------------------------------------------------------------------------
# GCNet feature files
# ----------------------------------------------------------------------------------------

GCNET_DATASETS = {
    # name: (kind, num_classes, label pickles GCNet ships, feature folder names GCNet uses)
    "iemocap4": ("iemocap", 4, ("IEMOCAP_features_raw_4way.pkl", "label_4way.pkl")),
    "iemocap6": ("iemocap", 6, ("IEMOCAP_features_raw_6way.pkl", "label_6way.pkl")),
    "cmumosi": ("mosi", 1, ("CMUMOSI_features_raw_2way.pkl", "label.pkl")),
    "cmumosei": ("mosi", 1, ("CMUMOSEI_features_raw_2way.pkl", "label.pkl")),
}
# default feature folders (GCNet's --text-feature / --audio-feature / --video-feature names)
GCNET_FEATURES = {
    "text": ("deberta-large-4-UTT", "text"),
    "audio": ("wav2vec-large-c-UTT", "audio"),
    "visual": ("manet_UTT", "visual"),
}


def _find_label_file(root: str, name: str, label_file: str | None) -> str:
    if label_file:
        path = label_file if os.path.isabs(label_file) else os.path.join(root, label_file)
        if not os.path.isfile(path):
            raise DataError(f"{path}: label pickle not found (expected GCNet's label file for {name})")
        return path
    for cand in GCNET_DATASETS[name][2]:
        if os.path.isfile(os.path.join(root, cand)):
            return os.path.join(root, cand)
    pkls = sorted(glob.glob(os.path.join(root, "*.pkl")))
    if len(pkls) == 1:
        return pkls[0]
    raise DataError(
        f"{root}: expected one label pickle for {name} (one of {', '.join(GCNET_DATASETS[name][2])}, "
        f"or pass --label-file); found {len(pkls)} .pkl files")


def _find_feature_root(root: str, modality: str, given: str | None) -> str:
    if given:
        path = given if os.path.isabs(given) else os.path.join(root, given)
        if not os.path.isdir(path):
            raise DataError(f"{path}: {modality} feature folder not found")
        return path
    tried = []
    for name in GCNET_FEATURES[modality]:
        for path in (os.path.join(root, "features", name), os.path.join(root, name)):
            if os.path.isdir(path):
                return path
            tried.append(path)
    raise DataError(f"{modality} feature folder not found; tried {', '.join(tried)} "
                    f"(or pass --{modality}-root)")


def _load_vector(path: str, uid: str = "") -> np.ndarray:
    """One ``.npy`` as a ``[D]`` vector (``[T, D]`` is averaged over time); ``uid`` names the
    utterance in errors."""
    of = f"; utterance {uid!r}" if uid else ""
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - numpy raises several kinds
        raise DataError(f"{path}: cannot read as a .npy array ({err}){of}") from err
    try:
        a = np.asarray(a, dtype=np.float32).squeeze()
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: expected a numeric [D] or [T, D] feature array ({err}){of}") from None
    bad = int((~np.isfinite(a)).sum())
    if bad:  # checked before averaging over time, which would hide nothing but blur where
        raise DataError(f"{path}: {bad} of {a.size} feature values are NaN or infinite{of}; "
                        "re-extract these features")
    if a.ndim == 2:
        a = a.mean(axis=0)
    if a.ndim != 1 or a.size == 0:
        raise DataError(f"{path}: expected a [D] or [T, D] feature array, got shape {np.shape(a)}{of}")
    return a


def _utterance_feature(feature_root: str, uid: str, speaker: str) -> np.ndarray | None:
    """The feature of one utterance, or None for a face folder with no face of its speaker."""
    exact = os.path.join(feature_root, uid + ".npy")
    if os.path.isfile(exact):
        return _load_vector(exact, uid)
    folder = os.path.join(feature_root, uid)
    if not os.path.isdir(folder):
        # GCNet globs "<uid>*"; accept a suffix that does not continue the id (uid_1 vs uid_10)
        hits = [h for h in glob.glob(glob.escape(os.path.join(feature_root, uid)) + "*")
                if not os.path.basename(h)[len(uid):][:1].isalnum()]
        if len(hits) != 1:
            raise DataError(f"{os.path.join(feature_root, uid)}*: expected exactly one <utterance-id>*.npy "
                            f"file or a folder of per-face .npy files for utterance {uid!r}, found {len(hits)}")
        if os.path.isfile(hits[0]):
            return _load_vector(hits[0], uid)
        folder = hits[0]
    faces = sorted(f for f in os.listdir(folder) if f.endswith(".npy"))
    if speaker in ("F", "M"):  # IEMOCAP: faces are named after their speaker (F first, as GCNet)
        faces = [f for f in faces if ("F" in f) == (speaker == "F") and ("F" in f or "M" in f)]
    if not faces:
        return None
    return np.mean([_load_vector(os.path.join(folder, f), uid) for f in faces], axis=0)


def _dialogue_labels(path: str, vid, raw, uids, num_classes: int) -> np.ndarray:
    """One dialogue's labels, checked: finite numbers; for classification whole class ids in
    ``[0, num_classes - 1]`` (2.7 is an error, not class 2). Errors name the utterance."""
    try:
        lab = np.asarray(raw, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: dialogue {vid!r}: labels must be numbers ({err})") from None

    def fail(bad, what):
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: dialogue {vid!r}, utterance {uids[i]!r}: label {raw[i]!r} {what}")

    if not np.isfinite(lab).all():
        fail(~np.isfinite(lab), "is not a finite number")
    if num_classes == 1:
        return lab.astype(np.float32)
    if (lab != np.round(lab)).any():
        fail(lab != np.round(lab), f"is not a class id (expected an integer in 0..{num_classes - 1})")
    if ((lab < 0) | (lab >= num_classes)).any():
        fail((lab < 0) | (lab >= num_classes), f"lies outside the class ids 0..{num_classes - 1}")
    return lab.astype(np.int64)


def _check_disjoint(path: str, splits: dict) -> None:
    """No dialogue in two of ``splits`` (``{name: ids}``): a test dialogue seen in training
    would inflate every result."""
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = sorted(set(splits[a]) & set(splits[b]), key=str)
            if both:
                raise DataError(f"{path}: {len(both)} dialogue(s) are in both the {a} and the {b} split "
                                f"(e.g. {', '.join(map(repr, both[:3]))}); each dialogue must be in one split")


def _read_modality(feature_root: str, uids, speakers, modality: str) -> list[np.ndarray]:
    feats = [_utterance_feature(feature_root, u, s) for u, s in zip(uids, speakers)]
    dims = {f.shape[0] for f in feats if f is not None}
    if not dims:
        raise DataError(f"{feature_root}: no {modality} features found for any utterance")
    if len(dims) > 1:
        raise DataError(f"{feature_root}: {modality} features have different dimensions {sorted(dims)}")
    d = dims.pop()
    return [f if f is not None else np.zeros(d, dtype=np.float32) for f in feats]


def _load_pickle(path: str, expected: int, layout: str):
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path}: cannot unpickle ({err}); expected a tuple {layout}") from err
    if not isinstance(obj, (tuple, list)) or len(obj) != expected:
        got = f"a {type(obj).__name__} of length {len(obj)}" if isinstance(obj, (tuple, list)) else type(obj).__name__
        raise DataError(f"{path}: expected a tuple {layout}, got {got}")
    return obj


# the loader's steps, public so that a folder can be checked file by file (iteach_fast.datacheck)
find_label_file = _find_label_file
find_feature_root = _find_feature_root
load_label_pickle = _load_pickle
utterance_feature = _utterance_feature
dialogue_labels = _dialogue_labels
check_disjoint = _check_disjoint


def load_gcnet(name: str, data_root: str, fold: int = 1, seed: int = 0, select_on: str = "valid",
               valid_fraction: float = 0.1, label_file: str | None = None,
               feature_roots: dict | None = None) -> DataSplits:
    """GCNet's features and labels as train/valid/test splits.

    IEMOCAP: leave-one-session-out, fold ``k`` tests on Session ``k`` (dialogue ids starting
    with ``Ses0k``) whatever the pickle's train/test split says; validation is a seeded
    ``valid_fraction`` of the remaining dialogues, or, with ``select_on="test"``, the test
    session itself (the paper's and GCNet's protocol). MOSI / MOSEI: the pickle's splits.
    """
    if name not in GCNET_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(GCNET_DATASETS)} or 'synthetic'")
    if select_on not in ("valid", "test"):
        raise ValueError(f"select_on must be 'valid' or 'test', got {select_on!r}")
    if not data_root or not os.path.isdir(data_root):
        raise DataError(f"{data_root}: --data-root must be a folder holding {name}'s label pickle and features")
    kind, C, _ = GCNET_DATASETS[name]
    label_path = _find_label_file(data_root, name, label_file)
    if kind == "iemocap":
        layout = "(videoIDs, videoLabels, videoSpeakers, videoSentences, trainVid, testVid)"
        ids, labels, spk, _sent, train_v, test_v = _load_pickle(label_path, 6, layout)
        vids = sorted(set(train_v) | set(test_v))
    else:
        layout = "(videoIDs, videoLabels, videoSpeakers, videoSentences, trainVids, valVids, testVids)"
        ids, labels, spk, _sent, train_v, val_v, test_v = _load_pickle(label_path, 7, layout)
        _check_disjoint(label_path, {"train": train_v, "valid": val_v, "test": test_v})
        vids = sorted(set(train_v) | set(val_v) | set(test_v))
    checked = {}  # labels checked before any feature file is read
    for vid in vids:
        complete = vid in ids and vid in labels and vid in spk
        if not complete or not len(ids[vid]) == len(labels[vid]) == len(spk[vid]):
            raise DataError(f"{label_path}: dialogue {vid!r} needs videoIDs, videoLabels and videoSpeakers "
                            "entries of equal length")
        checked[vid] = _dialogue_labels(label_path, vid, labels[vid], ids[vid], C)
    roots = {m: _find_feature_root(data_root, m, (feature_roots or {}).get(m)) for m in MODALITIES}
    all_uids = [u for v in vids for u in ids[v]]
    all_spk = [str(s) for v in vids for s in spk[v]]
    feats = {m: dict(zip(all_uids, _read_modality(roots[m], all_uids, all_spk, m))) for m in MODALITIES}
    dims = tuple(next(iter(feats[m].values())).shape[0] for m in MODALITIES)
    spk_map = {"F": 0, "M": 1}
    convs = {}
    for vid in vids:
        convs[vid] = {"id": str(vid), "labels": checked[vid],
                      "speakers": np.asarray([spk_map.get(str(s), 0) for s in spk[vid]], dtype=np.int64),
                      **{m: np.stack([feats[m][u] for u in ids[vid]]).astype(np.float32) for m in MODALITIES}}
    notes = []
    if kind == "iemocap":
        if fold not in range(1, 6):
            raise ValueError(f"IEMOCAP fold must be 1..5 (the held-out session), got {fold}")
        test = [v for v in vids if str(v).startswith(f"Ses0{fold}")]
        rest = [v for v in vids if not str(v).startswith(f"Ses0{fold}")]
        if not test:
            raise DataError(f"{label_path}: no dialogue id starts with 'Ses0{fold}' "
                            f"(fold {fold} holds out Session {fold})")
        if select_on == "test":
            train, valid = rest, test
            notes.append(f"model selection on the test session (Session {fold}), as GCNet and the paper do; "
                         "the reported numbers are optimistic")
        else:
            perm = np.random.default_rng(seed).permutation(len(rest))
            n_valid = max(1, int(round(valid_fraction * len(rest))))
            valid = [rest[i] for i in sorted(perm[:n_valid])]
            train = [rest[i] for i in sorted(perm[n_valid:])]
    else:
        train, valid, test = sorted(train_v), sorted(val_v), sorted(test_v)
        if select_on == "test":
            valid = test
            notes.append("model selection on the test split (--select-on test); numbers are optimistic")
    names = CLASS_NAMES.get(C, ())
    make = lambda vs: ConversationDataset([convs[v] for v in vs], dims, C, names, name)  # noqa: E731
    return DataSplits(make(train), make(valid), make(test), input_dims=dims, num_classes=C,
                      class_names=names, notes=notes)


def load_dataset(name: str = "synthetic", data_root: str | None = None, fold: int = 1, seed: int = 0,
                 select_on: str = "valid", synthetic: SyntheticSpec | None = None, **gcnet_kwargs) -> DataSplits:
    """``synthetic`` (from ``synthetic`` spec, default seed ``seed``) or a GCNet dataset under ``data_root``."""
    if name == "synthetic":
        splits = make_synthetic(synthetic or SyntheticSpec(seed=seed))
        if select_on == "test":
            splits.valid = splits.test
            splits.notes.append("model selection on the test split (--select-on test)")
        return splits
    return load_gcnet(name, data_root, fold=fold, seed=seed, select_on=select_on, **gcnet_kwargs)


def splits_for(cfg) -> DataSplits:
    """The splits a :class:`~iteach_fast.config.TrainConfig` names (synthetic or GCNet)."""
    spec = SyntheticSpec(num_conversations=cfg.syn_conversations, min_len=cfg.syn_min_len,
                         max_len=cfg.syn_max_len, num_classes=cfg.syn_classes, dims=tuple(cfg.syn_dims),
                         seed=cfg.seed)
    roots = {m: getattr(cfg, f"{m}_root") for m in MODALITIES if getattr(cfg, f"{m}_root")}
    kwargs = {} if cfg.dataset == "synthetic" else {"label_file": cfg.label_file, "feature_roots": roots}
    return load_dataset(cfg.dataset, data_root=cfg.data_root, fold=cfg.fold, seed=cfg.seed,
                        select_on=cfg.select_on, synthetic=spec, **kwargs)
