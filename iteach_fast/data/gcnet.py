"""GCNet's feature files (``iemocap4``, ``iemocap6``, ``cmumosi``, ``cmumosei``).

``<data_root>/<label pickle>`` holding ``(videoIDs, videoLabels, videoSpeakers,
videoSentences, trainVid, testVid)`` (MOSI/MOSEI: ``..., trainVids, valVids, testVids``)
and one feature folder per modality holding ``<utterance-id>*.npy`` (``[D]`` or ``[T, D]``,
averaged over time) or, for faces, a folder per utterance with one ``.npy`` per face (for
IEMOCAP the faces whose file name contains the speaker's letter F/M; none gives zeros),
as GCNet's ``dataloader_iemocap.py`` / ``dataloader_cmumosi.py`` read them.

The label pickle comes from a user's folder: it is read with :class:`LabelUnpickler`, which
builds only the plain types GCNet's label files hold (dicts, lists, tuples, sets, strings,
numbers, numpy arrays and scalars) and refuses anything else (a pickle can name any function
to call while loading). Before any feature file is read, the pickle's tables are checked:
each dialogue in its split lists once (MOSI / MOSEI: in one split only), with consistent
entries, at least one utterance, labels as the task needs, and every utterance id in one
dialogue only (an id names a feature file: two dialogues sharing one would share features, a
train/test leak). Every feature array is checked after its cast to float32 (empty, NaN, ±inf:
:func:`~iteach_fast.data.dataset.checked_features`).
"""
from __future__ import annotations

import glob
import os
import pickle

import numpy as np

from ..checks import check_fold
from ..choices import MODALITIES
from .dataset import CLASS_NAMES, ConversationDataset, DataError, DataSplits, checked_features

__all__ = ["GCNET_DATASETS", "GCNET_FEATURES", "load_gcnet", "LabelUnpickler",
           "check_split_lists", "check_utterance_ids"]


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


def _given(root: str, given: str, exists, what: str) -> str:
    """A path the user named, relative to ``root`` unless absolute; a ``DataError`` saying
    ``what`` was expected when ``exists`` (os.path.isfile / isdir) says it is not there."""
    path = given if os.path.isabs(given) else os.path.join(root, given)
    if not exists(path):
        raise DataError(f"{path}: {what}")
    return path


def find_label_file(root: str, name: str, label_file: str | None) -> str:
    if label_file:
        return _given(root, label_file, os.path.isfile,
                      f"label pickle not found (expected GCNet's label file for {name})")
    for cand in GCNET_DATASETS[name][2]:
        if os.path.isfile(os.path.join(root, cand)):
            return os.path.join(root, cand)
    pkls = sorted(glob.glob(os.path.join(root, "*.pkl")))
    if len(pkls) == 1:
        return pkls[0]
    raise DataError(
        f"{root}: expected one label pickle for {name} (one of {', '.join(GCNET_DATASETS[name][2])}, "
        f"or pass --label-file); found {len(pkls)} .pkl files")


def find_feature_root(root: str, modality: str, given: str | None) -> str:
    if given:
        return _given(root, given, os.path.isdir, f"{modality} feature folder not found")
    tried = []
    for name in GCNET_FEATURES[modality]:
        for path in (os.path.join(root, "features", name), os.path.join(root, name)):
            if os.path.isdir(path):
                return path
            tried.append(path)
    raise DataError(f"{modality} feature folder not found; tried {', '.join(tried)} "
                    f"(or pass --{modality}-root)")


def _load_vector(path: str, uid: str = "") -> np.ndarray:
    """One ``.npy`` as a float32 ``[D]`` vector (``[T, D]`` is averaged over time); ``uid`` names
    the utterance in errors. The array is checked after its cast to float32 (a float64 1e300
    becomes inf there), and again after the averaging: what the model will see."""
    of = f"; utterance {uid!r}" if uid else ""
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - numpy raises several kinds
        raise DataError(f"{path}: cannot read as a .npy array ({err}){of}") from err
    if a.dtype.kind not in "biuf":
        raise DataError(f"{path}: expected a numeric [D] or [T, D] feature array, got dtype {a.dtype}{of}")
    # checked before averaging over time, which would hide nothing but blur where
    a = checked_features(a, path, suffix=f"{of}; re-extract these features").squeeze()
    if a.ndim == 2:
        a = checked_features(a.mean(axis=0, dtype=np.float64), f"{path}: the average over time",
                             suffix=f"{of}; re-extract these features")
    if a.ndim != 1:
        raise DataError(f"{path}: expected a [D] or [T, D] feature array, got shape {np.shape(a)}{of}")
    return a


def utterance_feature(feature_root: str, uid: str, speaker: str) -> np.ndarray | None:
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
    vectors = [_load_vector(os.path.join(folder, f), uid) for f in faces]
    if len({v.shape for v in vectors}) > 1:
        raise DataError(f"{folder}: the faces of utterance {uid!r} have different feature dims "
                        f"{sorted({v.shape[0] for v in vectors})}")
    return checked_features(np.mean(vectors, axis=0, dtype=np.float64), f"{folder}: the average over its faces",
                            suffix=f"; utterance {uid!r}")


def dialogue_labels(path: str, vid, raw, uids, num_classes: int) -> np.ndarray:
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


def check_disjoint(path: str, splits: dict) -> None:
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
    feats = [utterance_feature(feature_root, u, s) for u, s in zip(uids, speakers)]
    dims = {f.shape[0] for f in feats if f is not None}
    if not dims:
        raise DataError(f"{feature_root}: no {modality} features found for any utterance")
    if len(dims) > 1:
        raise DataError(f"{feature_root}: {modality} features have different dimensions {sorted(dims)}")
    d = dims.pop()
    return [f if f is not None else np.zeros(d, dtype=np.float32) for f in feats]


class LabelUnpickler(pickle.Unpickler):
    """An unpickler that builds only the plain types GCNet's label files hold: dicts, lists,
    tuples, sets, strings, bytes, numbers, ordered dicts, numpy arrays and scalars. Anything
    else a pickle names (a function to call, a class to build) is refused before it is looked
    up, so loading a hostile file runs nothing."""

    ALLOWED = frozenset({
        *((mod, name) for mod in ("builtins", "__builtin__")
          for name in ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
                       "complex", "bool", "unicode", "long")),
        ("collections", "OrderedDict"), ("_codecs", "encode"),  # protocol 2 writes bytes through _codecs.encode
        ("numpy", "ndarray"), ("numpy", "dtype"),
        *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
        *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),  # protocol 5 arrays
    })

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is not a plain type of a label file "
                                         "(refused: loading it could run code)")
        return super().find_class(module, name)


def load_label_pickle(path: str, expected: int, layout: str):
    """GCNet's label tuple from ``path``, read with :class:`LabelUnpickler`; a ``DataError``
    naming the file for anything else."""
    try:
        with open(path, "rb") as f:
            obj = LabelUnpickler(f, encoding="latin1").load()
    except Exception as err:  # noqa: BLE001 - a broken pickle raises many kinds
        raise DataError(f"{path}: cannot unpickle ({err}); expected a tuple {layout} of plain types") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != expected:
        got = f"a {type(obj).__name__} of length {len(obj)}" if isinstance(obj, (tuple, list)) else type(obj).__name__
        raise DataError(f"{path}: expected a tuple {layout}, got {got}")
    names = layout.strip("()").split(", ")
    for i, (value, name) in enumerate(zip(obj, names)):
        want = dict if i < 4 else (list, tuple, set, frozenset, np.ndarray)
        if not isinstance(value, want):
            raise DataError(f"{path}: {name} (item {i + 1} of {layout}) is a {type(value).__name__}; expected "
                            f"{'a dict by dialogue id' if i < 4 else 'a list of dialogue ids'}")
    return obj


def check_split_lists(path: str, splits: dict) -> None:
    """Each dialogue listed once in each of ``splits`` (``{name: ids}``): a dialogue listed twice
    is trained on (or tested) twice."""
    for name, ids in splits.items():
        counts = {}
        for v in ids:
            counts[v] = counts.get(v, 0) + 1
        twice = sorted((v for v, n in counts.items() if n > 1), key=str)
        if twice:
            raise DataError(f"{path}: {len(twice)} dialogue(s) are listed more than once in the {name} split (e.g. "
                            f"{', '.join(f'{v!r} {counts[v]} times' for v in twice[:3])}); list each dialogue once")


def check_utterance_ids(path: str, ids: dict, vids) -> None:
    """Every utterance id of the dialogues ``vids`` in one dialogue, once: an id names a feature
    file, so two utterances with one id read the same features (across splits: a leak)."""
    owner, repeated = {}, []
    for vid in vids:
        for uid in ids[vid]:
            if uid in owner:
                repeated.append((uid, owner[uid], vid))
            else:
                owner[uid] = vid
    if repeated:
        eg = "; ".join(f"{u!r} in dialogue {a!r} and {b!r}" if a != b else f"{u!r} twice in dialogue {a!r}"
                       for u, a, b in repeated[:3])
        raise DataError(f"{path}: {len(repeated)} utterance id(s) are used more than once ({eg}); an utterance id "
                        "names its feature files, so each must be unique across the dialogues")


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
    check_fold(name, fold)
    kind, C, _ = GCNET_DATASETS[name]
    label_path = find_label_file(data_root, name, label_file)
    if kind == "iemocap":
        layout = "(videoIDs, videoLabels, videoSpeakers, videoSentences, trainVid, testVid)"
        ids, labels, spk, _sent, train_v, test_v = load_label_pickle(label_path, 6, layout)
        check_split_lists(label_path, {"train": train_v, "test": test_v})
        vids = sorted(set(train_v) | set(test_v))
    else:
        layout = "(videoIDs, videoLabels, videoSpeakers, videoSentences, trainVids, valVids, testVids)"
        ids, labels, spk, _sent, train_v, val_v, test_v = load_label_pickle(label_path, 7, layout)
        check_split_lists(label_path, {"train": train_v, "valid": val_v, "test": test_v})
        check_disjoint(label_path, {"train": train_v, "valid": val_v, "test": test_v})
        vids = sorted(set(train_v) | set(val_v) | set(test_v))
    checked = {}  # labels and ids checked before any feature file is read
    for vid in vids:
        complete = vid in ids and vid in labels and vid in spk
        if not complete or not len(ids[vid]) == len(labels[vid]) == len(spk[vid]):
            raise DataError(f"{label_path}: dialogue {vid!r} needs videoIDs, videoLabels and videoSpeakers "
                            "entries of equal length")
        if len(ids[vid]) == 0:
            raise DataError(f"{label_path}: dialogue {vid!r} is empty (no utterances); remove it from the split "
                            "lists or give it its utterances")
        checked[vid] = dialogue_labels(label_path, vid, labels[vid], ids[vid], C)
    check_utterance_ids(label_path, ids, vids)
    roots = {m: find_feature_root(data_root, m, (feature_roots or {}).get(m)) for m in MODALITIES}
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
