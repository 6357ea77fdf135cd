"""bench.counters: a known host synchronisation is counted, a sync-free function counts none,
boolean-mask indexing (forward and backward) is caught, and views launch nothing."""
import pytest
import torch

from bench.counters import count_ops, count_syncs


def test_a_scalar_read_is_one_sync():
    t = torch.randn(5)
    assert count_syncs(lambda: int(t.sum())) == {"aten._local_scalar_dense": 1}
    assert count_syncs(lambda: t.sum().item()) == {"aten._local_scalar_dense": 1}


def test_a_sync_free_function_counts_none():
    x = torch.randn(4, 6, requires_grad=True)
    valid = torch.rand(4, 6) > 0.5

    def masked_mean():  # the sync-free way: a masked reduction, no boolean indexing
        loss = torch.where(valid, x ** 2, torch.zeros(())).sum() / valid.sum().clamp_min(1)
        loss.backward()

    assert count_syncs(masked_mean) == {}


def test_boolean_mask_indexing_syncs_forward_and_backward():
    x = torch.randn(4, 6, requires_grad=True)
    valid = torch.rand(4, 6) > 0.5
    counts = count_syncs(lambda: x[valid].sum().backward())
    assert counts == {"aten.index.Tensor (boolean mask)": 1, "aten.index_put (boolean mask)": 1}
    assert count_syncs(lambda: x[torch.tensor([0, 2])].sum()) == {}  # integer indices do not sync
    assert count_syncs(lambda: torch.nonzero(valid)) == {"aten.nonzero": 1}


def test_count_ops_counts_computation_not_views():
    x = torch.randn(10)
    counts = count_ops(lambda: (x.view(2, 5) * 2).t().sum())
    assert counts == {"aten.mul": 1, "aten.sum": 1}
    assert count_ops(lambda: x.view(2, 5), views=True) == {"aten.view": 1}


@pytest.mark.gpu
def test_device_to_host_copies_are_syncs_on_cuda():
    from bench.counters import count_cuda_syncs

    t = torch.randn(8, device="cuda")
    assert count_syncs(lambda: t.cpu()) == {"_to_copy (device to host)": 1}
    assert count_syncs(lambda: t * 2) == {}
    assert count_cuda_syncs(lambda: float(t.sum())) >= 1
    assert count_cuda_syncs(lambda: t * 2) == 0
