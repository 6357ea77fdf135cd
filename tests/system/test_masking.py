"""Missing-modality masks (docs/maths.md, "Missing modalities, training strategies, evaluation"):
realised rate, at-least-one rule, determinism, padding."""
import pytest
import torch

from iteach_fast.data.dataset import collate
from iteach_fast.data.masking import (
    EVAL_RATES,
    apply_mask,
    fixed_masks,
    missing_rate,
    present_for_batch,
    sample_present,
)
from iteach_fast.data.synthetic import SyntheticSpec, make_synthetic


@pytest.mark.parametrize("rate", EVAL_RATES + (0.05, 0.66, 0.9))
def test_realised_rate_and_at_least_one(rate):
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([37, 5, 0, 64])
    present = sample_present(lengths, 64, rate, g)
    assert present.shape == (4, 64, 3) and present.dtype == torch.bool
    valid = torch.arange(64)[None] < lengths[:, None]
    n = int(valid.sum())
    assert present[valid].any(-1).all()  # every utterance keeps >= 1 modality
    assert not present[~valid].any()  # padding: nothing present
    expected = min(rate, 2 / 3)  # at >= 2/3 each keeps exactly one
    assert abs(missing_rate(present, lengths) - expected) <= 1 / (3 * n) + 1e-9
    if rate >= 2 / 3:
        assert (present[valid].sum(-1) == 1).all()
    if rate == 0:
        assert present[valid].all()


def test_uniform_choice_and_expected_k():
    g = torch.Generator().manual_seed(1)
    p = sample_present(torch.tensor([3000]), 3000, 0.4, g)[0]
    k = (~p).sum(-1).float()
    assert abs(k.mean() - 1.2) < 0.01  # E[k] = 3p
    per_modality = (~p).float().mean(0)
    assert torch.allclose(per_modality, torch.full((3,), 0.4), atol=0.03)


def test_determinism_of_generators_and_fixed_masks():
    lengths = torch.tensor([10, 7])
    a = sample_present(lengths, 10, 0.3, torch.Generator().manual_seed(5))
    b = sample_present(lengths, 10, 0.3, torch.Generator().manual_seed(5))
    c = sample_present(lengths, 10, 0.3, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    data = make_synthetic(SyntheticSpec(num_conversations=10, min_len=3, max_len=8, dims=(3, 3, 3))).test
    m1, m2 = fixed_masks(data, 0.5, seed=0), fixed_masks(data, 0.5, seed=0)
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert any(not torch.equal(m1[k], fixed_masks(data, 0.5, seed=1)[k]) for k in m1)
    # batching does not matter: one batch or two give the same present per conversation
    convs = list(data)
    whole = present_for_batch(collate(convs), m1)
    first = present_for_batch(collate(convs[:1]), m1)
    n0 = len(convs[0]["labels"])
    assert torch.equal(whole[0, :n0], first[0, :n0])


def test_apply_mask_zeroes_missing_and_keeps_original():
    data = make_synthetic(SyntheticSpec(num_conversations=4, min_len=3, max_len=8, dims=(3, 2, 4))).train
    batch = collate(list(data))
    present = sample_present(batch["lengths"], batch["labels"].shape[1], 0.5, torch.Generator().manual_seed(0))
    out = apply_mask(batch, present)
    for m, k in enumerate(("text", "audio", "visual")):
        assert (out[k][~present[..., m]] == 0).all()
        assert torch.equal(out[k][present[..., m]], batch[k][present[..., m]])
    assert batch["text"].abs().sum() > out["text"].abs().sum()  # original untouched
    assert out["present"] is present
