"""Datasets: synthetic generator, collate/padding, the GCNet-layout loader on a fake tree."""
import os
import pickle

import numpy as np
import pytest
import torch

from iteach_fast.data.dataset import DataError, collate
from iteach_fast.data.gcnet import load_gcnet
from iteach_fast.data.sources import load_dataset
from iteach_fast.data.synthetic import SyntheticSpec, make_synthetic

TINY = dict(num_conversations=12, min_len=3, max_len=9, dims=(6, 4, 5))


def test_synthetic_shapes_and_determinism():
    s = make_synthetic(SyntheticSpec(seed=3, **TINY))
    assert len(s.train) + len(s.valid) + len(s.test) == 12
    assert s.input_dims == (6, 4, 5) and s.num_classes == 4 and s.task == "classification"
    c = s.train[0]
    n = len(c["labels"])
    assert 3 <= n <= 9 and c["text"].shape == (n, 6) and c["audio"].shape == (n, 4) and c["visual"].shape == (n, 5)
    assert c["labels"].dtype == np.int64 and set(np.unique(c["labels"])) <= set(range(4))
    assert set(np.unique(c["speakers"])) <= {0, 1}
    again = make_synthetic(SyntheticSpec(seed=3, **TINY))
    assert [x["id"] for x in again.train] == [x["id"] for x in s.train]
    np.testing.assert_array_equal(again.test[0]["text"], s.test[0]["text"])
    other = make_synthetic(SyntheticSpec(seed=4, **TINY))
    assert not np.array_equal(other.test[0]["text"][:3], s.test[0]["text"][:3])


def test_synthetic_labels_are_locally_stable():
    s = make_synthetic(SyntheticSpec(seed=0, num_conversations=20, dims=(4, 4, 4)))
    changes = np.mean([np.mean(c["labels"][1:] != c["labels"][:-1]) for c in s.train])
    assert 0.05 < changes < 0.2  # runs of one emotion, shifting now and then


def test_synthetic_six_class_and_regression():
    six = make_synthetic(SyntheticSpec(num_classes=6, **TINY))
    assert six.num_classes == 6 and len(six.class_names) == 6
    reg = make_synthetic(SyntheticSpec(num_classes=1, **TINY))
    y = np.concatenate([c["labels"] for c in reg.train])
    assert reg.task == "regression" and y.dtype == np.float32 and y.min() >= -3 and y.max() <= 3


def test_collate_pads_with_zeros():
    s = make_synthetic(SyntheticSpec(seed=1, **TINY))
    convs = sorted(s.train.conversations, key=lambda c: len(c["labels"]))[:3]
    b = collate(convs)
    lens = [len(c["labels"]) for c in convs]
    L = max(lens)
    assert b["text"].shape == (3, L, 6) and b["audio"].shape == (3, L, 4) and b["visual"].shape == (3, L, 5)
    assert b["labels"].shape == (3, L) and b["labels"].dtype == torch.int64
    assert b["speakers"].dtype == torch.int64 and b["lengths"].tolist() == lens
    assert b["ids"] == [c["id"] for c in convs]
    for i, n in enumerate(lens):
        assert torch.equal(b["text"][i, :n], torch.from_numpy(convs[i]["text"]))
        for k in ("text", "audio", "visual"):
            assert b[k][i, n:].abs().sum() == 0
        assert b["labels"][i, n:].abs().sum() == 0
    reg = collate(make_synthetic(SyntheticSpec(num_classes=1, **TINY)).train.conversations[:2])
    assert reg["labels"].dtype == torch.float32


# ------------------------------------------------------------------ GCNet layout

def _fake_iemocap(root, faces="both"):
    """Two dialogues per session 1..5, 3 utterances each; text/audio .npy, visual face folders."""
    rng = np.random.default_rng(0)
    ids, labels, spk, sents = {}, {}, {}, {}
    for s in range(1, 6):
        for k in range(2):
            vid = f"Ses0{s}F_impro0{k}"
            ids[vid] = [f"{vid}_F00{i}" if i % 2 == 0 else f"{vid}_M00{i}" for i in range(3)]
            labels[vid] = [i % 4 for i in range(3)]
            spk[vid] = ["F", "M", "F"]
            sents[vid] = ["hi"] * 3
    vids = sorted(ids)
    with open(os.path.join(root, "IEMOCAP_features_raw_4way.pkl"), "wb") as f:
        pickle.dump((ids, labels, spk, sents, set(vids[:8]), set(vids[8:])), f)
    feat = os.path.join(root, "features")
    for name, _d in (("deberta-large-4-UTT", 5), ("wav2vec-large-c-UTT", 3), ("manet_UTT", 4)):
        os.makedirs(os.path.join(feat, name))
    for vid in vids:
        for uid in ids[vid]:
            np.save(os.path.join(feat, "deberta-large-4-UTT", uid + ".npy"), rng.standard_normal(5).astype("f4"))
            np.save(os.path.join(feat, "wav2vec-large-c-UTT", uid + ".npy"), rng.standard_normal((7, 3)).astype("f4"))
            face_dir = os.path.join(feat, "manet_UTT", uid)
            os.makedirs(face_dir)
            if faces in ("both", "F"):
                np.save(os.path.join(face_dir, "face_F_001.npy"), np.ones(4, "f4"))
            if faces == "both":
                np.save(os.path.join(face_dir, "face_M_001.npy"), 3 * np.ones(4, "f4"))
    return ids


def test_gcnet_iemocap_leave_one_session_out(tmp_path):
    ids = _fake_iemocap(str(tmp_path))
    s = load_gcnet("iemocap4", str(tmp_path), fold=2, seed=0)
    assert s.input_dims == (5, 3, 4) and s.num_classes == 4
    assert {c["id"] for c in s.test} == {"Ses02F_impro00", "Ses02F_impro01"}
    assert len(s.valid) == 1 and not any(c["id"].startswith("Ses02") for c in list(s.train) + list(s.valid))
    c = next(x for x in s.test if x["id"] == "Ses02F_impro00")
    uid = ids["Ses02F_impro00"][0]
    t = np.load(os.path.join(tmp_path, "features", "deberta-large-4-UTT", uid + ".npy"))
    np.testing.assert_allclose(c["text"][0], t)
    a = np.load(os.path.join(tmp_path, "features", "wav2vec-large-c-UTT", uid + ".npy"))
    np.testing.assert_allclose(c["audio"][0], a.mean(0), rtol=1e-6)  # [T, D] averaged over time
    np.testing.assert_allclose(c["visual"][:, 0], [1, 3, 1])  # the speaker's own face (F, M, F)
    assert c["speakers"].tolist() == [0, 1, 0]
    paper = load_gcnet("iemocap4", str(tmp_path), fold=2, select_on="test")
    assert [x["id"] for x in paper.valid] == [x["id"] for x in paper.test] and paper.notes


def test_gcnet_no_face_of_the_speaker_gives_zeros(tmp_path):
    _fake_iemocap(str(tmp_path), faces="F")
    c = load_gcnet("iemocap4", str(tmp_path), fold=1).test[0]
    np.testing.assert_allclose(c["visual"][:, 0], [1, 0, 1])  # as GCNet: zeros where no face of the speaker


def test_gcnet_no_face_at_all_is_an_error(tmp_path):
    _fake_iemocap(str(tmp_path), faces="none")
    with pytest.raises(DataError, match="manet_UTT.*no visual features"):
        load_gcnet("iemocap4", str(tmp_path))


def test_gcnet_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="label pickle"):
        load_gcnet("iemocap4", str(tmp_path))
    ids = _fake_iemocap(str(tmp_path))
    uid = ids["Ses01F_impro00"][1]
    os.remove(os.path.join(tmp_path, "features", "deberta-large-4-UTT", uid + ".npy"))
    with pytest.raises(DataError, match=f"deberta-large-4-UTT/{uid}.*expected exactly one"):
        load_gcnet("iemocap4", str(tmp_path))
    with open(os.path.join(tmp_path, "features", "deberta-large-4-UTT", uid + ".npy"), "w") as f:
        f.write("not numpy")
    with pytest.raises(DataError, match=f"{uid}.npy: cannot read"):
        load_gcnet("iemocap4", str(tmp_path))
    with open(os.path.join(tmp_path, "IEMOCAP_features_raw_4way.pkl"), "wb") as f:
        pickle.dump(("only", "three", "items"), f)
    with pytest.raises(DataError, match="IEMOCAP_features_raw_4way.pkl: expected a tuple"):
        load_gcnet("iemocap4", str(tmp_path))


def test_gcnet_mosi_splits_and_prefix_ids(tmp_path):
    root = str(tmp_path)
    # "v_1" and "v_10" share a prefix: the loader must not confuse them
    ids = {"v": ["v_1", "v_10"], "w": ["w_1"], "x": ["x_1", "x_2"]}
    labels = {"v": [1.2, -0.4], "w": [0.0], "x": [2.0, -3.0]}
    spk = {k: [""] * len(v) for k, v in ids.items()}
    with open(os.path.join(root, "label.pkl"), "wb") as f:
        pickle.dump((ids, labels, spk, {}, ["v"], ["w"], ["x"]), f)
    for m, d in (("text", 2), ("audio", 3), ("visual", 4)):
        os.makedirs(os.path.join(root, m))
        for _k, uids in ids.items():
            for j, u in enumerate(uids):
                np.save(os.path.join(root, m, u + ".npy"), np.full(d, float(len(u) + j), "f4"))
    s = load_dataset("cmumosi", data_root=root)
    assert s.task == "regression" and s.input_dims == (2, 3, 4)
    assert [c["id"] for c in s.train] == ["v"] and [c["id"] for c in s.valid] == ["w"]
    v = s.train[0]
    assert v["labels"].dtype == np.float32 and v["text"][:, 0].tolist() == [3.0, 5.0]
