"""Real data you can trust before a long run.

* :func:`export_synthetic` — the synthetic conversations written in GCNet's file layout (the
  label pickle's tuple, one feature folder per modality with ``<utterance-id>.npy``), so the
  real-data loader, IEMOCAP's folds and ``--select-on test`` can run end to end without the
  real features. IEMOCAP: dialogue ids ``Ses0{k}{F|M}_impro{j}`` over five sessions (the
  pickle's ``trainVid`` sessions 1-4, ``testVid`` session 5, sets as in GCNet's files, whose
  reader takes their union), utterances ``<dialogue>_{F|M}{i:03d}``, and the visual features
  as the real releases hold faces: a folder per utterance with one ``.npy`` per face, named
  after its speaker (``F00.npy``, ``M00.npy``; the speaker's faces hold the utterance's
  feature, the listener's another); CMU-MOSI / MOSEI: the synthetic train / valid / test split as
  ``trainVids`` / ``valVids`` / ``testVids``, labels in [-3, 3]. What it writes passes
  :func:`check_data`: too few conversations for the layout (IEMOCAP: one per session; MOSI /
  MOSEI: one per split) is refused before anything is written, and ``overwrite`` replaces
  only a folder that holds a previous export (nothing else is deleted).
* :func:`check_data` — a GCNet-layout folder checked file by file with the loader's own
  readers and label checks (:mod:`iteach_fast.data.dataset`), every problem listed rather than the
  first: missing or unreadable feature files, feature dims per modality, NaN / inf, empty
  conversations, labels out of range, a dialogue in two MOSI splits or listed twice, an
  utterance id used by two dialogues, IEMOCAP sessions without a dialogue, an empty MOSI
  split; files that match no utterance are named as warnings (GCNet's IEMOCAP feature
  folders also hold the six-class set's utterances), and the class balance of each session /
  split is summarised.
"""
from __future__ import annotations

import dataclasses
import io
import os
import pickle
import shutil
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..choices import LAYOUTS, MODALITIES
from ..files import OutputError, atomic_write, check_output
from .dataset import CLASS_NAMES, DataError
from .gcnet import (
    GCNET_DATASETS,
    GCNET_FEATURES,
    check_disjoint,
    check_split_lists,
    check_utterance_ids,
    dialogue_labels,
    find_feature_root,
    find_label_file,
    load_label_pickle,
    utterance_feature,
)
from .synthetic import SyntheticSpec, make_synthetic

__all__ = ["export_synthetic", "check_data", "DataReport", "LAYOUTS"]

SESSIONS = (1, 2, 3, 4, 5)
_LAYOUT = {"iemocap": "(videoIDs, videoLabels, videoSpeakers, videoSentences, trainVid, testVid)",
           "mosi": "(videoIDs, videoLabels, videoSpeakers, videoSentences, trainVids, valVids, testVids)"}
_SPEAKERS = ("F", "M")  # the synthetic speakers 0 / 1 as IEMOCAP's letters (the loader maps them back)


# ----------------------------------------------------------------------------- export

def export_synthetic(out_dir: str, dataset: str = "iemocap4", spec: SyntheticSpec | None = None,
                     layout: str = "gcnet", overwrite: bool = False) -> dict:
    """Write the synthetic conversations of ``spec`` (:func:`~iteach_fast.data.sources.synthetic_spec`
    gives a run config's; the classes follow ``dataset``: 4, 6, or regression for MOSI / MOSEI) under ``out_dir`` in
    GCNet's layout for ``dataset``. Returns ``{"label_file", "feature_roots", "dialogues",
    "utterances", "splits"}``."""
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if dataset not in GCNET_DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(GCNET_DATASETS)}, got {dataset!r}")
    kind, num_classes, label_files = GCNET_DATASETS[dataset]
    spec = dataclasses.replace(spec or SyntheticSpec(), num_classes=num_classes)
    _check_export_size(dataset, kind, spec)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputError(f"DIR {out_dir}: is a file; expected a folder to write the dataset into")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise OutputError(f"DIR {out_dir}: the folder is not empty; pass --overwrite to replace a previous export")
        foreign = _not_exported(out_dir)
        if foreign:
            raise OutputError(f"DIR {out_dir}: holds files export-synthetic does not write ({', '.join(foreign[:3])}"
                              f"{' ...' if len(foreign) > 3 else ''}); --overwrite replaces a previous export only: "
                              "choose an empty or new folder")
        check_output(out_dir, "DIR", folder=True)
        shutil.rmtree(out_dir)
    check_output(out_dir, "DIR", folder=True)
    splits = make_synthetic(spec)
    ids, labels, speakers, sentences, utterances = {}, {}, {}, {}, {}
    if kind == "iemocap":
        convs = sorted((c for part in (splits.train, splits.valid, splits.test) for c in part), key=lambda c: c["id"])
        per_session = Counter()
        members = {s: [] for s in SESSIONS}
        for i, conv in enumerate(convs):
            session = SESSIONS[i % len(SESSIONS)]
            j = per_session[session]
            per_session[session] += 1
            vid = f"Ses0{session}{_SPEAKERS[j % 2]}_impro{j:02d}"
            members[session].append(vid)
            spk = [_SPEAKERS[int(s)] for s in conv["speakers"]]
            ids[vid] = [f"{vid}_{s}{k:03d}" for k, s in enumerate(spk)]
            speakers[vid] = spk
            labels[vid] = [int(x) for x in conv["labels"]]
            utterances[vid] = conv
        train_v = [v for s in SESSIONS[:-1] for v in members[s]]
        groups = (set(train_v), set(members[SESSIONS[-1]]))  # sets, as GCNet's files (its reader: trainVid | testVid)
        split_names = {f"Session {s}": members[s] for s in SESSIONS}
    else:
        groups = []
        for part in (splits.train, splits.valid, splits.test):
            vids = []
            for conv in part:
                vid = conv["id"]
                ids[vid] = [f"{vid}_{k + 1}" for k in range(len(conv["labels"]))]
                speakers[vid] = [""] * len(conv["labels"])  # one speaker per video
                labels[vid] = [float(x) for x in conv["labels"]]
                utterances[vid] = conv
                vids.append(vid)
            groups.append(sorted(vids))
        split_names = dict(zip(("train", "valid", "test"), groups))
    for vid in ids:
        sentences[vid] = [f"utterance {k + 1} of {vid}" for k in range(len(ids[vid]))]
    label_file = os.path.join(out_dir, label_files[0])
    buffer = io.BytesIO()
    pickle.dump((ids, labels, speakers, sentences, *groups), buffer)
    atomic_write(label_file, buffer.getvalue())
    roots = {}
    for m in MODALITIES:
        roots[m] = os.path.join(out_dir, "features", GCNET_FEATURES[m][0])
        os.makedirs(roots[m], exist_ok=True)
        for vid, conv in utterances.items():
            for uid, speaker, x in zip(ids[vid], speakers[vid], conv[m]):
                x = np.asarray(x, dtype=np.float32)
                if m == "visual" and kind == "iemocap":
                    _write_faces(os.path.join(roots[m], uid), speaker, x)
                else:
                    np.save(os.path.join(roots[m], uid + ".npy"), x)
    return {"label_file": label_file, "feature_roots": roots, "dialogues": len(ids),
            "utterances": sum(len(v) for v in ids.values()),
            "splits": {k: len(v) for k, v in split_names.items()}}


def _write_faces(folder: str, speaker: str, x: np.ndarray) -> None:
    """One utterance's faces as IEMOCAP's releases hold them: a folder of per-face ``.npy`` files
    whose names carry their speaker's letter. The speaker's two faces hold ``x`` (their mean is
    ``x``), the listener's one face ``-x``: a reader that kept the listener's face, or averaged
    every face, would not load ``x`` back."""
    os.makedirs(folder, exist_ok=True)
    listener = _SPEAKERS[1 - _SPEAKERS.index(speaker)]
    for name, value in ((f"{speaker}00", x), (f"{speaker}01", x), (f"{listener}00", -x)):
        np.save(os.path.join(folder, name + ".npy"), value)


def _synthetic_split_sizes(spec: SyntheticSpec, n: int) -> tuple[int, int, int]:
    """The train / valid / test sizes :func:`~iteach_fast.data.synthetic.make_synthetic` gives ``n`` conversations."""
    n_train, n_valid = int(round(spec.split[0] * n)), int(round(spec.split[1] * n))
    return n_train, n_valid, n - n_train - n_valid


def _check_export_size(dataset: str, kind: str, spec: SyntheticSpec) -> None:
    """Enough conversations for the layout, so that :func:`check_data` accepts the export:
    IEMOCAP one per session (fold k tests on Session k), MOSI / MOSEI one per split."""
    n = spec.num_conversations
    if kind == "iemocap":
        if n < len(SESSIONS):
            raise ValueError(f"--syn-conversations {n}: {dataset}'s layout needs at least {len(SESSIONS)} "
                             f"conversations (one per session Ses01..Ses05: fold k tests on Session k)")
        return
    sizes = _synthetic_split_sizes(spec, n)
    if min(sizes) < 1:
        least = next(k for k in range(n + 1, 10 * n + 100) if min(_synthetic_split_sizes(spec, k)) >= 1)
        raise ValueError(f"--syn-conversations {n}: {dataset}'s layout needs a dialogue in each of its train, valid "
                         f"and test splits; {n} conversations split as {sizes[0]} / {sizes[1]} / {sizes[2]}: use "
                         f"{least} or more")


def _not_exported(folder: str) -> list:
    """The entries of ``folder`` that :func:`export_synthetic` does not write (any dataset)."""
    labels = {f for _, _, files in GCNET_DATASETS.values() for f in files}
    features = {names[0] for names in GCNET_FEATURES.values()}
    foreign = [name for name in sorted(os.listdir(folder)) if name not in labels | {"features"}]
    sub = os.path.join(folder, "features")
    if os.path.isdir(sub):
        foreign += [os.path.join("features", n) for n in sorted(os.listdir(sub)) if n not in features]
    elif os.path.exists(sub):
        foreign.append("features")
    return foreign


# ----------------------------------------------------------------------------- check

@dataclass
class DataReport:
    """What :func:`check_data` found: ``problems`` (the loader would fail or the data is
    wrong: exit non-zero), ``warnings`` (worth a look) and the summary lines."""
    dataset: str
    data_root: str
    problems: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    summary: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self, max_listed: int = 20) -> str:
        lines = [f"check-data {self.dataset} {self.data_root}"] + self.summary
        for title, items in (("problems", self.problems), ("warnings", self.warnings)):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  - {x}" for x in items[:max_listed]]
                if len(items) > max_listed:
                    lines.append(f"  ... and {len(items) - max_listed} more")
        lines.append(f"result: {len(self.problems)} problem(s): fix them before training" if self.problems
                     else f"result: OK ({len(self.warnings)} warning(s))")
        return "\n".join(lines)


def check_data(dataset: str, data_root: str, label_file: str | None = None,
               feature_roots: dict | None = None) -> DataReport:
    """Check a GCNet-layout folder for ``dataset`` (see the module's docstring); never raises
    for a problem of the data, it lists it."""
    if dataset not in GCNET_DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(GCNET_DATASETS)}, got {dataset!r}")
    report = DataReport(dataset, data_root)
    if not data_root or not os.path.isdir(data_root):
        report.problems.append(f"{data_root}: --data-root is not a folder")
        return report
    kind, num_classes, _ = GCNET_DATASETS[dataset]
    try:
        path = find_label_file(data_root, dataset, label_file)
        table = load_label_pickle(path, 6 if kind == "iemocap" else 7, _LAYOUT[kind])
    except DataError as err:
        report.problems.append(str(err))
        return report
    ids, labels, speakers = table[0], table[1], table[2]
    split_lists = dict(zip(("train", "test") if kind == "iemocap" else ("train", "valid", "test"), table[4:]))
    vids = _check_dialogues(report, path, ids, labels, speakers, split_lists, num_classes, kind)
    groups = _sessions(report, path, vids) if kind == "iemocap" else {
        name: [v for v in sorted(vs) if v in vids] for name, vs in split_lists.items()}
    n_utt = sum(len(ids[v]) for v in vids)
    report.summary.append(f"label pickle  {path}: {len(vids)} dialogues, {n_utt} utterances "
                          f"({', '.join(f'{k} {len(v)}' for k, v in split_lists.items())} dialogues)")
    uids = {u: str(s) for v in vids for u, s in zip(ids[v], speakers[v])}
    for m in MODALITIES:
        try:
            root = find_feature_root(data_root, m, (feature_roots or {}).get(m))
        except DataError as err:
            report.problems.append(str(err))
            continue
        _check_modality(report, m, root, uids)
    _balance(report, kind, num_classes, groups, labels)
    return report


def _check_dialogues(report, path, ids, labels, speakers, split_lists, num_classes, kind) -> list:
    """The dialogues usable for training (listed in a split, with consistent entries and labels
    as the loader checks them); the rest reported. IEMOCAP's folds ignore the pickle's split,
    MOSI / MOSEI's splits must be disjoint."""
    for check in (check_split_lists, check_disjoint) if kind == "mosi" else (check_split_lists,):
        try:
            check(path, split_lists)
        except DataError as err:
            report.problems.append(str(err))
    if kind == "mosi":
        for name, vs in split_lists.items():
            if not len(vs):
                (report.warnings if name == "valid" else report.problems).append(
                    f"{path}: the {name} split lists no dialogue"
                    + (" (training selects on it: train with --select-on test)" if name == "valid" else ""))
    usable = []
    for vid in sorted({v for vs in split_lists.values() for v in vs}, key=str):
        entries = [t.get(vid) if isinstance(t, dict) else None for t in (ids, labels, speakers)]
        if any(e is None for e in entries):
            report.problems.append(f"{path}: dialogue {vid!r} has no videoIDs / videoLabels / videoSpeakers entry")
            continue
        if not len(entries[0]) == len(entries[1]) == len(entries[2]):
            report.problems.append(f"{path}: dialogue {vid!r} has {len(entries[0])} utterance ids, "
                                   f"{len(entries[1])} labels and {len(entries[2])} speakers (expected equal)")
            continue
        if len(entries[0]) == 0:
            report.problems.append(f"{path}: dialogue {vid!r} is empty (no utterances)")
            continue
        try:
            lab = dialogue_labels(path, vid, entries[1], entries[0], num_classes)
        except DataError as err:
            report.problems.append(str(err))
            continue
        if num_classes == 1 and (np.abs(lab) > 3).any():
            report.warnings.append(f"{path}: dialogue {vid!r} has labels outside [-3, 3]")
        usable.append(vid)
    try:
        check_utterance_ids(path, ids, usable)
    except DataError as err:
        report.problems.append(str(err))
    return usable


def _sessions(report, path, vids) -> dict:
    """IEMOCAP's five sessions (fold k tests on the dialogues whose id starts with Ses0k)."""
    groups = {f"Session {s}": [v for v in vids if str(v).startswith(f"Ses0{s}")] for s in SESSIONS}
    for s in SESSIONS:
        if not groups[f"Session {s}"]:
            report.problems.append(f"{path}: no dialogue id starts with 'Ses0{s}': fold {s} (test on Session {s}) "
                                   "cannot run")
    stray = [v for v in vids if not any(str(v).startswith(f"Ses0{s}") for s in SESSIONS)]
    if stray:
        report.warnings.append(f"{path}: {len(stray)} dialogue(s) belong to no session Ses01..Ses05 and are trained "
                               f"on in every fold: {', '.join(map(str, stray[:5]))}")
    return groups


def _check_modality(report, modality, root, uids: dict) -> None:
    """Every utterance's feature read as the loader reads it; dims, NaN / inf and extra files."""
    dims, no_face = {}, 0
    for uid, speaker in uids.items():
        exact = os.path.join(root, uid + ".npy")
        try:
            x = utterance_feature(root, uid, speaker)
        except DataError as err:  # names the file: missing, unreadable, NaN / inf, wrong shape
            report.problems.append(str(err))
            continue
        if x is None:
            no_face += 1
            continue
        dims.setdefault(int(x.shape[0]), []).append(exact if os.path.isfile(exact) else os.path.join(root, uid))
    if not dims:
        report.problems.append(f"{root}: no {modality} feature could be read for any utterance")
        return
    dim = max(dims, key=lambda d: len(dims[d]))
    for d, files in sorted(dims.items()):
        if d != dim:
            report.problems += [f"{f}: {modality} feature dim {d}, expected {dim} (as {len(dims[dim])} other files)"
                                for f in files]
    extra = sorted(name for name in os.listdir(root) if not _matches(name, uids))
    if extra:
        report.warnings.append(f"{root}: {len(extra)} file(s) match no utterance of the label pickle: "
                               f"{', '.join(extra[:10])}{' ...' if len(extra) > 10 else ''}")
    read = sum(len(f) for f in dims.values())
    report.summary.append(f"{modality:7s} {root}: {read} of {len(uids)} utterances read, dim {dim}"
                          + (f"; {no_face} with no face of their speaker (zeros, as GCNet)" if no_face else ""))


def _matches(name: str, uids: dict) -> bool:
    """Whether a feature folder entry belongs to an utterance: ``<uid>``, ``<uid>.npy`` or
    ``<uid>`` + a suffix that does not continue the id (the loader's ``<uid>*`` rule)."""
    stem = name[:-4] if name.endswith(".npy") else name
    if stem in uids:
        return True
    return any(stem[:k] in uids for k in range(1, len(stem)) if not stem[k].isalnum())


def _balance(report, kind, num_classes, groups: dict, labels: dict) -> None:
    if num_classes > 1:
        names = CLASS_NAMES.get(num_classes, tuple(map(str, range(num_classes))))
        bins = lambda lab: np.bincount(np.asarray(lab, dtype=np.int64), minlength=num_classes)  # noqa: E731
    else:
        names = ("negative", "zero", "positive")
        bins = lambda lab: np.asarray([(np.asarray(lab) < 0).sum(), (np.asarray(lab) == 0).sum(),  # noqa: E731
                                       (np.asarray(lab) > 0).sum()])
    report.summary.append(f"class balance ({' / '.join(names)}):")
    total = np.zeros(len(names), dtype=np.int64)
    for name, vs in groups.items():
        counts = sum((bins(labels[v]) for v in vs), np.zeros(len(names), dtype=np.int64))
        total += counts
        report.summary.append(f"  {name:10s} {len(vs):4d} dialogues {int(counts.sum()):6d} utterances   "
                              + " / ".join(str(int(c)) for c in counts))
        if num_classes > 1 and vs and (counts == 0).any():
            report.warnings.append(f"{name} has no utterance of class(es) "
                                   f"{', '.join(names[i] for i in np.nonzero(counts == 0)[0])}")
    report.summary.append(f"  {'all':10s} {sum(len(v) for v in groups.values()):4d} dialogues "
                          f"{int(total.sum()):6d} utterances   " + " / ".join(str(int(c)) for c in total))
