"""Tests of `iteach-fast predict` (iteach_fast.evaluation.predict): a checkpoint on new conversations
from .npz, .pt and GCNet-layout folders, CSV / JSON rows that equal the model's own output,
--stream through a causal checkpoint, and one clear error for each bad input."""
import csv
import json

import numpy as np
import pytest
import torch

from iteach_fast.cli import main
from iteach_fast.data.check import export_synthetic
from iteach_fast.data.dataset import CLASS_NAMES, DataError
from iteach_fast.data.sources import synthetic_spec
from iteach_fast.evaluation.predict import load_conversations, predict_file
from iteach_fast.nn.model import ITEACHNet
from iteach_fast.training.checkpoint import load_model, save_checkpoint
from iteach_fast.training.config import TrainConfig

DIMS = (12, 8, 10)
MODEL = dict(dim=16, heads=4, max_len=24, dist=5, conv_kernel=3, teacher_layers=1, student_layers=2)


def _checkpoint(path, causal=False, classes=4):
    cfg = TrainConfig(syn_dims=DIMS, syn_classes=classes).replace(causal=causal, **MODEL)
    net = ITEACHNet.from_config(cfg.model, DIMS, classes)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    save_checkpoint(str(path), model=net.state_dict(), config=cfg.to_dict(),
                    data={"name": "test", "input_dims": list(DIMS), "num_classes": classes,
                          "class_names": list(CLASS_NAMES.get(classes, ()))})
    return str(path), net.eval()


def _conversations(lengths=(7, 3, 11)):
    return {f"dlg{i}": {"text": np.random.randn(n, DIMS[0]).astype(np.float32),
                        "audio": np.random.randn(n, DIMS[1]).astype(np.float32),
                        "visual": np.random.randn(n, DIMS[2]).astype(np.float32)} for i, n in enumerate(lengths)}


def _npz(path, convs):
    np.savez(path, **{f"{c}/{k}": v for c, fields in convs.items() for k, v in fields.items()})
    return str(path)


def _expected(net, conv, model="student"):
    """The model's own probabilities for one conversation, (L, C)."""
    m = getattr(net, model)
    xs = [torch.from_numpy(conv[k])[None] for k in ("text", "audio", "visual")]
    if "present" in conv:
        p = torch.from_numpy(conv["present"])
        xs = [x * p[None, :, i:i + 1] for i, x in enumerate(xs)]
    with torch.no_grad():
        return torch.softmax(m(*xs, torch.tensor([xs[0].shape[1]])).logits[0], -1)


def test_predict_npz_to_csv_matches_the_model(tmp_path):
    ckpt, net = _checkpoint(tmp_path / "best.pt")
    convs = _conversations()
    out = tmp_path / "pred.csv"
    assert main(["predict", ckpt, _npz(tmp_path / "new.npz", convs), "--out", str(out), "--device", "cpu"]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(c["text"]) for c in convs.values())
    names = CLASS_NAMES[4]
    assert list(rows[0]) == ["conversation", "utterance", "prediction", "class_id"] + [f"p_{c}" for c in names]
    for cid, conv in convs.items():
        got = [r for r in rows if r["conversation"] == cid]
        assert [int(r["utterance"]) for r in got] == list(range(len(conv["text"])))
        probs = torch.tensor([[float(r[f"p_{c}"]) for c in names] for r in got])
        expected = _expected(net, conv)
        torch.testing.assert_close(probs, expected, atol=2e-6, rtol=0)  # rounded to 6 digits
        assert [int(r["class_id"]) for r in got] == expected.argmax(-1).tolist()
        assert [r["prediction"] for r in got] == [names[i] for i in expected.argmax(-1).tolist()]


def test_predict_pt_with_present_to_json(tmp_path):
    """A .pt of per-conversation tensors; present marks missing modalities (their features are
    zeroed, whatever the file holds); the teacher can be asked too."""
    ckpt, net = _checkpoint(tmp_path / "best.pt")
    convs = _conversations((5, 9))
    for conv in convs.values():
        conv["present"] = np.random.rand(len(conv["text"]), 3) > 0.4
        conv["present"][:, 0] |= ~conv["present"].any(1)
    torch.save({c: {k: torch.from_numpy(np.asarray(v)) for k, v in f.items()} for c, f in convs.items()},
               tmp_path / "new.pt")
    for model in ("student", "teacher"):
        res = predict_file(ckpt, str(tmp_path / "new.pt"), out=str(tmp_path / f"{model}.json"), device="cpu",
                           model=model)
        doc = json.loads((tmp_path / f"{model}.json").read_text())
        assert doc["meta"]["utterances"] == 14 and doc["meta"]["model"] == model and doc["rows"] == res["rows"]
        for cid, conv in convs.items():
            probs = torch.tensor([[r[f"p_{c}"] for c in CLASS_NAMES[4]] for r in doc["rows"]
                                  if r["conversation"] == cid])
            torch.testing.assert_close(probs, _expected(net, conv, model), atol=2e-6, rtol=0)


def test_predict_regression_scores(tmp_path):
    ckpt, net = _checkpoint(tmp_path / "best.pt", classes=1)
    convs = _conversations((4,))
    res = predict_file(ckpt, _npz(tmp_path / "new.npz", convs), device="cpu", log=lambda *a: None)
    conv = convs["dlg0"]
    xs = [torch.from_numpy(conv[k])[None] for k in ("text", "audio", "visual")]
    with torch.no_grad():
        expected = net.student(*xs).logits[0]
    assert [set(r) for r in res["rows"]] == [{"conversation", "utterance", "score"}] * 4
    torch.testing.assert_close(torch.tensor([r["score"] for r in res["rows"]]), expected)


def test_predict_stream_replays_what_was_known(tmp_path):
    """--stream through a causal checkpoint: each utterance's row is the session's output when it
    arrived, equal to the full (causal) forward's; the row says how many utterances were known."""
    ckpt, _ = _checkpoint(tmp_path / "causal.pt", causal=True)
    inputs = _npz(tmp_path / "new.npz", _conversations((6, 4)))
    full = predict_file(ckpt, inputs, out=str(tmp_path / "full.json"), device="cpu")["rows"]
    live = predict_file(ckpt, inputs, out=str(tmp_path / "live.csv"), stream=True, device="cpu")["rows"]
    assert [r["known"] for r in live] == [1, 2, 3, 4, 5, 6, 1, 2, 3, 4]
    assert all(r["latency_ms"] >= 0 for r in live)
    for a, b in zip(live, full):
        assert (a["conversation"], a["utterance"], a["prediction"]) == (b["conversation"], b["utterance"],
                                                                         b["prediction"])
        for c in CLASS_NAMES[4]:
            assert a[f"p_{c}"] == pytest.approx(b[f"p_{c}"], abs=2e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stream_latency_waits_for_the_device(tmp_path, monkeypatch):
    """--stream's latency_ms covers the push's GPU work, not only its launches: a push that
    queues ~50 ms of device time reads at least 10 ms (unsynchronised, it reads microseconds)."""
    from iteach_fast.nn.streaming import StreamingSession

    ckpt, _ = _checkpoint(tmp_path / "causal.pt", causal=True)
    inputs = _npz(tmp_path / "new.npz", _conversations((3,)))
    push = StreamingSession.push

    def slow_push(self, *args, **kwargs):
        torch.cuda._sleep(50_000_000)  # device cycles: tens of ms on any current GPU
        return push(self, *args, **kwargs)

    monkeypatch.setattr(StreamingSession, "push", slow_push)
    rows = predict_file(ckpt, inputs, stream=True, device="cuda")["rows"]
    assert all(r["latency_ms"] >= 10 for r in rows), [r["latency_ms"] for r in rows]


def test_predict_gcnet_folder(tmp_path):
    """A GCNet-layout folder, read by the package's loader; its labels come along."""
    root = tmp_path / "gcnet"
    cfg = TrainConfig(syn_conversations=10, syn_min_len=3, syn_max_len=8, syn_dims=DIMS)
    export_synthetic(str(root), "iemocap4", synthetic_spec(cfg))
    ckpt, _ = _checkpoint(tmp_path / "best.pt")
    res = predict_file(ckpt, str(root), dataset="iemocap4", device="cpu", out=str(tmp_path / "p.csv"))
    assert res["meta"]["conversations"] == 10
    assert all(r["label"] in CLASS_NAMES[4] for r in res["rows"])
    with pytest.raises(ValueError, match="--dataset"):  # trained on synthetic data: which layout?
        predict_file(ckpt, str(root), device="cpu", out=str(tmp_path / "q.csv"))


def test_predict_errors_name_what_is_wrong(tmp_path, capsys):
    ckpt, _ = _checkpoint(tmp_path / "best.pt")
    dims = {"input_dims": DIMS, "max_len": MODEL["max_len"]}

    def load(convs, name="x.npz"):
        return load_conversations(_npz(tmp_path / name, convs), **dims)

    convs = _conversations((5,))
    convs["dlg0"]["audio"] = np.random.randn(5, 9).astype(np.float32)
    with pytest.raises(DataError, match=r"conversation 'dlg0', audio: feature dim 9.*dim 8"):
        load(convs)
    convs = _conversations((5,))
    convs["dlg0"]["visual"][3, 2] = np.nan
    with pytest.raises(DataError, match="'dlg0', visual: utterance 3 holds NaN"):
        load(convs)
    convs = _conversations((5,))
    convs["dlg0"]["text"] = convs["dlg0"]["text"][:4]
    with pytest.raises(DataError, match="audio: 5 utterances, but text has 4"):
        load(convs)
    convs = _conversations((5,))
    convs["dlg0"]["present"] = np.ones((5, 2), dtype=bool)
    with pytest.raises(DataError, match="present"):
        load(convs)
    with pytest.raises(DataError, match="max_len=24"):
        load(_conversations((25,)))
    with pytest.raises(DataError, match="missing"):
        load({"dlg0": {"text": np.zeros((2, 12), np.float32)}})
    # a bidirectional checkpoint with --stream: refused before any data is read
    assert main(["predict", ckpt, str(tmp_path / "absent.npz"), "--stream", "--device", "cpu"]) == 2
    assert "--stream needs a causal model" in capsys.readouterr().err
    assert main(["predict", ckpt, str(tmp_path / "absent.npz"), "--device", "cpu"]) == 2
    assert "absent.npz: no such file" in capsys.readouterr().err
    net, _, stored = load_model(ckpt, device="cpu")
    data = stored["data"]
    assert data["num_classes"] == 4 and not net.training
