"""The baselines (iteach_fast.evaluation.baselines) and the like-for-like gaps report: same
masks as the model, causal when asked, padding-free, chosen on validation."""
import dataclasses

import numpy as np
import pytest
import torch

from iteach_fast.data.masking import fixed_masks
from iteach_fast.data.synthetic import SyntheticSpec, make_synthetic
from iteach_fast.evaluation import baselines as bl
from iteach_fast.evaluation.gaps import MODALITY_SUBSETS, data_gaps
from iteach_fast.nn.model import ITEACHNet
from iteach_fast.training.validation import evaluate_rates

RATES = (0.0, 0.4, 0.7)
FAST = bl.BaselineConfig(epochs=2, hidden=8, copies=2, windows=(1, 2), seed=3)


@pytest.fixture(scope="module")
def splits():
    return make_synthetic(SyntheticSpec(num_conversations=24, min_len=3, max_len=14, dims=(6, 5, 4), seed=11))


def test_rows_read_the_models_masks(splits):
    out = bl.baseline_rows(splits, FAST, RATES, mask_seed=5)
    net = ITEACHNet(splits.input_dims, 4, dim=8, heads=2, max_len=14, teacher_layers=1, student_layers=1)
    model_rows = evaluate_rates(net, splits.test, RATES, seed=5)
    for name in ("majority", "logreg", "logreg_context", "gru"):
        rows = out[name]
        assert [r["rate"] for r in rows] == list(RATES)
        for r, m in zip(rows, model_rows):
            assert r["realised_rate"] == m["realised_rate"] and r["n"] == m["n"]  # the same cells missing
            assert 0 <= r["waf"] <= 100 and 0 <= r["acc"] <= 100
    assert out["logreg_context_k"] in FAST.windows
    counts = np.bincount(np.concatenate([c["labels"] for c in splits.train]))
    y = np.concatenate([c["labels"] for c in splits.test])
    assert out["majority"][0]["acc"] == pytest.approx(100 * np.mean(y == counts.argmax()))


def _gru_outputs(model, convs, keep):
    L = max(len(c["labels"]) for c in convs)
    present = torch.zeros(len(convs), L, 3, dtype=torch.bool)
    for b, c in enumerate(convs):
        present[b, :len(c["labels"])] = keep
    x, batch = bl.gru_inputs(convs, present)
    return model(x, batch["lengths"])


@pytest.mark.parametrize("causal", [False, True])
def test_gru_is_causal_when_asked_and_ignores_padding(splits, causal):
    torch.manual_seed(0)
    model = bl.GRUBaseline(sum(splits.input_dims) + 3, 4, hidden=8, dropout=0.0, causal=causal).eval()
    conv = dict(splits.test[0])
    n = len(conv["labels"])
    later = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in conv.items()}
    rng = np.random.default_rng(0)
    for m in ("text", "audio", "visual"):
        later[m][n // 2:] = rng.standard_normal(later[m][n // 2:].shape).astype(np.float32)
    with torch.no_grad():
        a = _gru_outputs(model, [conv], True)[0]
        b = _gru_outputs(model, [later], True)[0]
        longer = max(splits.train, key=lambda c: len(c["labels"]))
        padded = _gru_outputs(model, [conv, longer], True)[0, :n]  # the same conversation beside a longer one
    early = slice(0, n // 2)
    assert torch.equal(a[early], b[early]) == causal  # the future reaches the past only when bidirectional
    torch.testing.assert_close(padded, a)


def test_regression_baselines(splits):
    reg = make_synthetic(SyntheticSpec(num_conversations=16, min_len=3, max_len=10, num_classes=1, dims=(5, 4, 3),
                                       seed=2))
    out = bl.baseline_rows(reg, dataclasses.replace(FAST, epochs=1), (0.0, 0.5), which=("majority", "logreg", "gru"))
    assert all("mae" in r and np.isfinite(r["mae"]) for name in ("majority", "logreg", "gru") for r in out[name])


def test_fixed_strategy_trains_at_its_rate():
    cfg = bl.BaselineConfig(strategy="fixed", rate=0.5)
    g = torch.Generator().manual_seed(0)
    assert {cfg.training_rate(g, s, 10) for s in range(10)} == {0.5}
    prog = bl.BaselineConfig(strategy="progressive", max_rate=0.6)
    assert [round(prog.training_rate(g, s, 4), 3) for s in range(4)] == [0.0, 0.2, 0.4, 0.6]


def test_gaps_compare_like_with_like(splits):
    net = ITEACHNet(splits.input_dims, 4, dim=8, heads=2, max_len=14, teacher_layers=1, student_layers=1).eval()
    res = data_gaps(splits, net, config=FAST, rates=(0.3, 0.7), mask_seed=1, log=lambda *_: None)
    rows = res["rows"]
    kept = [r for r in rows if r["section"] == "kept" and r["model"] == "student"]
    assert [r["modalities"] for r in kept] == ["+".join(m[0] for m in s) for s in MODALITY_SUBSETS]
    n_test = sum(len(c["labels"]) for c in splits.test)
    assert sum(r["n"] for r in kept) == 2 * n_test  # every utterance of both rates, in exactly one group
    # the groups are what each utterance kept under the fixed masks the model is scored with
    keep = np.concatenate([fixed_masks(splits.test, 0.7, 1)[c["id"]].numpy() for c in splits.test])
    only_text = int((keep == [True, False, False]).all(1).sum())
    keep3 = np.concatenate([fixed_masks(splits.test, 0.3, 1)[c["id"]].numpy() for c in splits.test])
    assert next(r for r in kept if r["modalities"] == "t")["n"] == only_text + int(
        (keep3 == [True, False, False]).all(1).sum())
    for section, models in (("context", {"student", "teacher", "logreg", "logreg_context", "gru"}),
                            ("outage", {"student", "logreg", "logreg_context", "gru"})):
        assert {r["model"] for r in rows if r["section"] == section} == models
    assert "outage" in res["table"] and "kept" in res["table"]


def test_outages_take_channels_down_for_whole_conversations():
    from iteach_fast.data.masking import add_outages, sample_present

    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([9, 4, 0, 7] * 50)
    present = sample_present(lengths, 9, 0.3, g)
    out = add_outages(present, lengths, 0.5, g)
    valid = torch.arange(9)[None] < lengths[:, None]
    assert not (out & ~valid[..., None]).any()  # the padding stays absent
    assert out[valid].any(-1).all()  # every utterance keeps one modality
    changed = (out != present).any(-1).any(-1)
    assert 0.3 < changed[lengths > 0].float().mean() < 0.7  # about half the conversations
    for b in torch.nonzero(changed).flatten().tolist():
        n = int(lengths[b])
        gone = ~out[b, :n].any(0)  # the modalities no utterance of the conversation kept
        assert 1 <= int(gone.sum()) <= 2
    assert torch.equal(add_outages(present, lengths, 0.0, g), present)
    with pytest.raises(ValueError, match="outage probability"):
        add_outages(present, lengths, 1.5, g)


def test_outage_training_option(tiny_keys, tmp_path):
    """outage_prob reaches the training masks (and 0, the default, draws nothing extra)."""
    from iteach_fast.training.config import TrainConfig
    from iteach_fast.training.distributed import context
    from iteach_fast.training.step import make_batch

    cfg = TrainConfig.from_dict({**tiny_keys, "outage_prob": 1.0, "out_dir": str(tmp_path)}).validate()
    splits = make_synthetic(SyntheticSpec(num_conversations=12, min_len=6, max_len=10, dims=(6, 5, 4), seed=4))
    count = ITEACHNet(splits.input_dims, 4, dim=8, heads=2, max_len=10).loss_counts
    ctx = context("cpu")
    batch = make_batch(splits.train, list(range(8)), 0.0, torch.Generator().manual_seed(0), ctx, count,
                       outage=cfg.outage_prob)
    valid = torch.arange(batch.present.shape[1])[None] < batch.lengths[:, None]
    for b in range(8):  # rate 0 keeps everything; every conversation lost a channel for its whole length
        assert 1 <= int((~batch.present[b][valid[b]].any(0)).sum()) <= 2
    plain = make_batch(splits.train, list(range(8)), 0.0, torch.Generator().manual_seed(0), ctx, count)
    assert plain.present[valid].all()
    with pytest.raises(ValueError, match="outage_prob"):
        TrainConfig.from_dict({**tiny_keys, "outage_prob": 1.5}).validate()
