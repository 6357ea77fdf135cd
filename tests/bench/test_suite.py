"""The case list: every registered op has an entry, a newly registered backend gets rows with
no edit in bench/, the headline preset holds the issue's rows, and a group's providers share
everything but the provider."""
import warnings

import pytest
import torch

from bench import suite
from bench.cases import Prepared, Skip
from iteach_fast.ops import backends

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device type is enough to enumerate cases


def test_every_registered_op_has_an_entry_whose_providers_start_with_the_registry():
    assert set(backends.OPS) <= set(suite.ENTRIES)
    for op in backends.OPS:
        registered = {impl.backend for impl in backends.implementations(op)}
        providers = suite.entry(op).providers()
        assert set(providers[:len(registered)]) == registered and providers[0] == "reference"


def test_case_ids_are_unique_and_groups_differ_only_in_the_provider():
    for device in (CPU, CUDA):
        cases = suite.build_cases(device)
        assert len({c.id for c in cases}) == len(cases)
        for group in suite.groups(cases, compiled_last=True):
            assert len({c.group for c in group}) == 1 and len({c.provider for c in group}) == len(group)


def test_compiled_last_puts_every_compiled_provider_after_the_rest():
    order = [c for g in suite.groups(suite.build_cases(CUDA), compiled_last=True) for c in g]
    compiled = [suite.entry(c.op).is_compiled(c.provider) for c in order]
    assert any(compiled) and compiled == sorted(compiled)


def test_headline_preset_holds_the_issue_rows():
    cases = suite.build_cases(CUDA, preset="headline")
    attention = {(c.provider, c.dtype) for c in cases if c.op == "ecce_attention"}
    assert attention == {(p, d) for p in ("reference", "triton", "flex-attention") for d in ("float32", "bfloat16")}
    assert all((c.mode, c.L, c.Dh) == ("fwd+bwd", 2048, 64) for c in cases if c.op == "ecce_attention")
    mixture = [c for c in cases if c.op == "routed_mixture"]
    assert mixture and all(c.B * c.L * c.D == 64 * 2**20 for c in mixture)
    assert {c.provider for c in mixture} == {i.backend for i in backends.implementations("routed_mixture")}
    model = {c.provider for c in cases if c.op == "iteach_net"}
    assert model == set(suite.entry("iteach_net").providers())
    assert all((c.B, c.L, c.mode) == (32, 110, "train_step") for c in cases if c.op == "iteach_net")


def test_a_newly_registered_backend_gets_benchmark_rows(monkeypatch):
    spec = backends.BackendSpec("fake", rank=-1, probe=lambda op: None, devices=lambda: None,
                                auto_devices=lambda: None)
    monkeypatch.setitem(backends.BACKEND_SPECS, "fake", spec)
    monkeypatch.setitem(backends.REGISTRY["routed_mixture"], "fake",
                        backends.Implementation("routed_mixture", "fake", "iteach_fast.ops.reference:routed_mixture"))
    backends.refresh()
    try:
        cases = suite.build_cases(CPU, smoke=True, ops_=("routed_mixture",), modes=("fwd+bwd",))
        assert "fake" in {c.provider for c in cases}
        group = [c for c in cases if c.provider in ("reference", "fake")]
        prepared = suite.entry("routed_mixture").prepare(group, CPU)
        for case in group:
            assert isinstance(prepared[case], Prepared), prepared[case]
            prepared[case].fn()  # one forward + backward through the public op with backend="fake"
    finally:
        monkeypatch.undo()
        backends.refresh()


def test_a_provider_that_cannot_run_here_is_a_skip_with_the_reason():
    cases = suite.build_cases(CPU, smoke=True, ops_=("ecce_attention",), modes=("fwd",))
    prepared = suite.entry("ecce_attention").prepare(cases, CPU)
    flex = next(c for c in cases if c.provider == "flex-attention")
    assert isinstance(prepared[flex], Skip) and "CUDA" in str(prepared[flex])


def test_unknown_op_or_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        suite.build_cases(CPU, ops_=("nope",))
    with pytest.raises(ValueError, match="unknown preset"):
        suite.build_cases(CPU, preset="nope")


def test_the_flexattention_peer_computes_ecce_attention(monkeypatch):
    """The FlexAttention peer (compiled on a GPU; eager here, forward only: no CPU backward) gives
    the materialised-bias answer, full and causal, with a padded conversation."""
    from bench import op_bench

    monkeypatch.setattr(op_bench, "_compiled", lambda fn: fn)
    gen = torch.Generator().manual_seed(5)
    B, H, L, Dh = 2, 3, 13, 8
    for causal in (False, True):
        q, k, v = (torch.randn(B, H, L, Dh, generator=gen) for _ in range(3))
        zp, lengths = torch.randn(B, L, H, generator=gen), torch.tensor([13, 7])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eager FlexAttention warns that it is not the fast path
            got = op_bench.flex_ecce_attention(q, k, v, zp, lengths, 4, causal)
        torch.testing.assert_close(got, op_bench.sdpa_float_mask(q, k, v, zp, lengths, 4, causal))
