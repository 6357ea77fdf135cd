"""An exponential moving average of the trained weights (an option, not the paper's).

With ``TrainConfig.ema = d > 0`` every optimiser step moves a copy of the net towards the
trained weights, ``avg <- d * avg + (1 - d) * w``; validation, ``best.pt`` / ``last.pt``'s
``model`` and everything that loads them read the average, and the checkpoints keep the trained
weights beside it (``trained_model``) so that a resumed run continues both exactly.

Hand-written rather than ``torch.optim.swa_utils.AveragedModel``: its update reads its step
counter on the host (``if n_averaged == 0``), one synchronisation per step that the sync-free
(CUDA-graph) training step would pay; this one is one fused ``lerp`` over the tensors.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """``model``: the average, a copy of ``net`` (same class, same device), in eval mode."""

    def __init__(self, net: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema must lie in (0, 1) to average the weights, got {decay}")
        self.net, self.decay = net, float(decay)
        self.model = copy.deepcopy(net).eval().requires_grad_(False)
        self._pairs()

    def _pairs(self) -> None:
        mine, theirs = self.model.state_dict(keep_vars=True), self.net.state_dict(keep_vars=True)
        floats = [k for k, t in theirs.items() if t.is_floating_point()]
        self.avg = [mine[k].data for k in floats]
        self.src = [theirs[k].data for k in floats]
        # integer buffers (counters) are copied, not averaged
        self.copies = [(mine[k].data, theirs[k].data) for k, t in theirs.items() if not t.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average (after each optimiser step)."""
        torch._foreach_lerp_(self.avg, self.src, 1.0 - self.decay)
        for dst, src in self.copies:
            dst.copy_(src)
