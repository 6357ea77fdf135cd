"""The one case list of the benchmarks: every entry, the cases it yields on a device, the presets.

An entry (``bench/op_bench.py``, ``bench/model_bench.py``, ``bench/system_bench.py``) declares
what to measure; :func:`build_cases` enumerates its cases and :func:`groups` gathers the
providers of one comparison (same op, mode, dtype and size) so ``bench.run`` prepares their
inputs once and times them interleaved. Nothing else enumerates cases.
"""
from __future__ import annotations

import itertools

import torch

from iteach_fast.ops import backends

from .cases import Case, Entry, Size, Skip, size_kind
from .model_bench import MODEL_ENTRY
from .op_bench import OP_ENTRIES
from .system_bench import DDP_ENTRY, STREAM_ENTRY

__all__ = ["ENTRIES", "ALL_OPS", "DEFAULT_OPS", "KERNEL_OPS", "PRESETS", "Case", "Skip", "entry", "build_cases",
           "groups", "baselines", "describe", "is_headline"]

ENTRIES: dict[str, Entry] = {e.op: e for e in (*OP_ENTRIES, MODEL_ENTRY, STREAM_ENTRY, DDP_ENTRY)}
ALL_OPS = tuple(ENTRIES)
KERNEL_OPS = tuple(e.op for e in OP_ENTRIES)
DEFAULT_OPS = tuple(op for op, e in ENTRIES.items() if not e.on_request)

#: what ``--preset`` selects among the sizes tagged "headline": (op, modes, peers) — every provider
#: of this package's own (the registry's backends, the model's variants) and the peers named.
#: The issue's headline rows: K1 fp32/bf16 fwd+bwd vs FlexAttention and the eager reference at
#: L = 2048, Dh = 64; K2 at 64M elements; the training step at the paper's size, every provider.
PRESETS = {
    "headline": (("ecce_attention", ("fwd+bwd",), ("flex-attention",)),
                 ("routed_mixture", ("fwd", "fwd+bwd"), ()),
                 ("iteach_net", ("train_step",), ())),
}


def entry(op: str) -> Entry:
    if op not in ENTRIES:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(ALL_OPS)}")
    return ENTRIES[op]


def is_headline(case: Case, size: Size, preset: str) -> bool:
    if "headline" not in size.tags:
        return False
    ours = ENTRIES[case.op].is_ours(case.provider)
    return any(case.op == op and case.mode in modes and (ours or case.provider in peers)
               for op, modes, peers in PRESETS[preset])


def build_cases(device: torch.device, quick: bool = False, smoke: bool = False, ops_=None, providers_=None,
                dtypes=None, modes=None, sizes=None, preset: str | None = None) -> list[Case]:
    """The cases to run, in order: entry by entry (the kernel ops, the model, the system
    paths), then by length, size, dtype and mode; one case per provider, the baseline first.
    ``sizes``: ``(B, L)`` pairs replacing every entry's own (at its default D, H)."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    kind = size_kind(device, quick, smoke)
    wanted_ops = ops_ or (tuple(op for op, _, _ in PRESETS[preset]) if preset else DEFAULT_OPS)
    cases = []
    for op in wanted_ops:
        e = entry(op)
        own = e.size_list(kind)
        chosen = [Size(B, L) for B, L in sizes] if sizes else sorted(own, key=lambda s: s.L)  # stable
        if sizes and preset:  # a preset at given sizes: they stand for the headline ones
            chosen = [Size(s.B, s.L, tags=frozenset({"headline"})) for s in chosen]
        providers = sorted((p for p in e.providers() if e.runs_on(p, device.type)), key=lambda p: p != e.baseline)
        for size, dtype in itertools.product(chosen, dtypes or e.dtype_list(device.type)):
            for mode, provider in itertools.product(size.modes or e.modes, providers):
                case = Case(op, provider, mode, dtype, size.B, size.L, size.D, size.H)
                if mode not in e.modes or (modes is not None and mode not in modes):
                    continue
                if providers_ is not None and provider not in providers_:
                    continue
                if preset is not None and not is_headline(case, size, preset):
                    continue
                cases.append(case)
    return cases


def groups(cases: list[Case], compiled_last: bool = False) -> list[list[Case]]:
    """The cases gathered by comparison (same op, mode, dtype, size), in first-seen order. With
    ``compiled_last``, the compiled providers form groups of their own after all the others (on
    a GPU: a cold compile is slow, and a peer's compiler bug must not cost the eager rows)."""
    def split(c: Case) -> bool:
        return compiled_last and ENTRIES[c.op].is_compiled(c.provider)

    ordered: dict[tuple, list[Case]] = {}
    for case in cases:
        ordered.setdefault((split(case), case.group), []).append(case)
    keys = sorted(ordered, key=lambda k: k[0])  # stable: first-seen order within each part
    return [ordered[k] for k in keys]


def baselines() -> dict[str, str]:
    return {op: e.baseline for op, e in ENTRIES.items()}


def describe() -> dict[str, str]:
    """Every provider's one-line description (the registry's backends, then each entry's own)."""
    out = {"reference": "the pure-PyTorch reference (iteach_fast.ops.reference), the oracle",
           "triton": "K1, this package's Triton kernels (kernels/); CUDA only (the CPU interpreter is a "
                     "correctness tool)",
           "cpp": "K2, this package's C++/CUDA extension (csrc/), CPU and CUDA"}
    for op in KERNEL_OPS:  # a backend registered later is described by where its code lives
        for impl in backends.implementations(op):
            out.setdefault(impl.backend, f"this package's {impl.backend!r} backend ({impl.target})")
    for e in ENTRIES.values():
        out.update(e.describe())
    return out
