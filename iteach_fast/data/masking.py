"""Missing-modality masks (docs/maths.md "Missing modalities, training strategies,
evaluation"; GCNet's ``random_mask``).

At rate ``p`` over ``N`` valid utterances (``3N`` cells):

* every utterance keeps one modality chosen uniformly;
* of the other ``2N`` cells exactly ``K = round(3N(1 - p)) - N`` (clipped to ``[0, 2N]``)
  are kept, chosen uniformly without replacement.

So the realised fraction of missing cells is ``p`` (up to rounding), no utterance loses all
three, an utterance loses ``k ∈ {0, 1, 2}`` with ``E[k] = 3p``, which modalities go is
uniform, and at ``p ≥ 2/3`` every utterance keeps exactly one (``p = 0.7`` realises 2/3,
GCNet's cap). GCNet reaches the same marginals by rejection sampling; drawing the count
exactly makes the rate hold per batch.

``present`` is ``(B, L, 3)`` bool in the order (text, audio, visual); padded positions are
False. Training draws a fresh mask per batch from a ``torch.Generator``; evaluation uses
:func:`fixed_masks`, one mask per conversation id drawn once per (rate, seed) over the
whole split, so every model and batch size sees the same test masks.

:func:`add_outages` is a robustness option the paper's sampler never produces: a channel
down for a whole conversation (every utterance loses the same one or two modalities).
"""
from __future__ import annotations

import zlib

import torch

from ..choices import EVAL_RATES, MAX_RATE, MODALITIES

__all__ = ["random_rate", "sample_present", "add_outages", "OUTAGE_SUBSETS", "apply_mask", "fixed_masks",
           "present_for_batch", "missing_rate", "EVAL_RATES", "MAX_RATE"]

# EVAL_RATES (UME's test rates) and MAX_RATE are defined in iteach_fast.choices (no torch: the
# command line's help reads them) and re-exported here


def random_rate(max_rate: float, power: float = 1.0, generator: torch.Generator | None = None) -> float:
    """The random strategy's missing rate for one training batch: ``max_rate * U ** (1 / power)``,
    ``U`` uniform in [0, 1). ``power`` 1 is the paper's uniform draw in [0, max_rate] (§5.4.2);
    2 makes the density rise linearly towards ``max_rate`` (more batches at the highest rates)."""
    u = float(torch.rand((), generator=generator))
    return max_rate * (u if power == 1.0 else u ** (1.0 / power))


def _draw(n: int, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """``(n, 3)`` bool: which of the three modalities each of ``n`` utterances keeps."""
    if not 0.0 <= rate <= MAX_RATE:
        raise ValueError(f"missing rate must lie in [0, {MAX_RATE}], got {rate}")
    keep = torch.zeros(n, 3, dtype=torch.bool)
    if n == 0:
        return keep
    first = torch.randint(0, 3, (n,), generator=generator)
    keep[torch.arange(n), first] = True
    extra = min(max(int(round(3 * n * (1.0 - rate))) - n, 0), 2 * n)
    if extra:
        others = (~keep).nonzero()  # the 2n cells not yet kept, row-major
        pick = torch.randperm(2 * n, generator=generator)[:extra]
        keep[others[pick, 0], others[pick, 1]] = True
    return keep


def sample_present(lengths: torch.Tensor, L: int, rate: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh ``present (B, L, 3)`` for one batch at missing rate ``rate`` (training)."""
    lengths = torch.as_tensor(lengths, dtype=torch.int64).cpu()
    B = lengths.shape[0]
    valid = torch.arange(L)[None, :] < lengths[:, None]
    present = torch.zeros(B, L, 3, dtype=torch.bool)
    present[valid] = _draw(int(valid.sum()), rate, generator)
    return present


#: what a conversation keeps in an outage: every non-empty proper subset of the modalities
OUTAGE_SUBSETS = torch.tensor([[True, True, False], [True, False, True], [False, True, True],
                               [True, False, False], [False, True, False], [False, False, True]])


def add_outages(present: torch.Tensor, lengths: torch.Tensor, prob: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``present`` with, in each conversation independently with probability ``prob``, one or
    two modalities gone for every utterance (what it keeps: uniform over :data:`OUTAGE_SUBSETS`).
    An utterance whose kept modalities were all lost keeps one of the conversation's survivors
    (uniform), so no utterance loses all three."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"outage probability must lie in [0, 1], got {prob}")
    B, L, _ = present.shape
    hit = torch.rand(B, generator=generator) < prob
    subset = OUTAGE_SUBSETS[torch.randint(0, len(OUTAGE_SUBSETS), (B,), generator=generator)]  # (B, 3)
    # a survivor per utterance: the kept modality with the largest random key
    keys = torch.rand(B, L, 3, generator=generator).masked_fill(~subset[:, None, :], -1.0)
    fallback = torch.zeros(B, L, 3, dtype=torch.bool).scatter_(2, keys.argmax(-1, keepdim=True), True)
    out = present & subset[:, None, :]
    valid = torch.arange(L)[None, :] < torch.as_tensor(lengths).cpu()[:, None]
    out = torch.where((~out.any(-1, keepdim=True)) & valid[..., None], fallback, out)
    return torch.where(hit[:, None, None], out, present)


def apply_mask(batch: dict, present: torch.Tensor) -> dict:
    """A copy of ``batch`` whose missing (utterance, modality) features are zero (GCNet's
    convention), with ``present`` added; the original batch is left complete."""
    out = dict(batch)
    for m, name in enumerate(MODALITIES):
        x = batch[name]
        out[name] = x * present[..., m : m + 1].to(device=x.device, dtype=x.dtype)
    out["present"] = present
    return out


def _seed_for(seed: int, rate: float) -> int:
    # stable across processes (str hash() is salted); distinct per rate
    return zlib.crc32(f"{seed}:{rate:.4f}".encode())


def fixed_masks(dataset, rate: float, seed: int = 0) -> dict:
    """``{conversation id: (n, 3) bool}`` for a whole split, from ``(seed, rate)`` only.

    Drawn over all the split's utterances at once (in dataset order), so the realised rate is
    ``rate`` over the split and a mask never depends on how conversations are batched.
    """
    g = torch.Generator().manual_seed(_seed_for(seed, rate))
    sizes = [len(c["labels"]) for c in dataset]
    keep = _draw(sum(sizes), rate, g)
    return {c["id"]: part for c, part in zip(dataset, torch.split(keep, sizes))}


def present_for_batch(batch: dict, masks: dict) -> torch.Tensor:
    """The ``(B, L, 3)`` present mask of a collated batch from :func:`fixed_masks`' table."""
    B, L = batch["labels"].shape
    present = torch.zeros(B, L, 3, dtype=torch.bool)
    for b, cid in enumerate(batch["ids"]):
        keep = masks[cid]
        present[b, : keep.shape[0]] = keep
    return present


def missing_rate(present: torch.Tensor, lengths: torch.Tensor) -> float:
    """The realised fraction of missing cells over the valid utterances."""
    L = present.shape[1]
    valid = torch.arange(L)[None, :] < torch.as_tensor(lengths).cpu()[:, None]
    cells = present[valid]
    return float((~cells).sum()) / max(cells.numel(), 1)
