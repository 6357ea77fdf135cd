"""Launch parameters of the attention kernels: tiles, warps and pipeline stages per kernel x dtype x head dim.

    launch_tiles(kernel, dtype, block_d, causal, device) -> Tiles   what the launchers use
    head_block(Dh)                                        -> BLOCK_D, the head dim padded to a power of two
    autotune_configs(kernel)                              -> triton.Config list for a GPU session to measure

``TABLE`` was chosen from the sm_90 compile report (``bench/kernel_resources.py``: registers,
spills, shared memory per variant), not from timings: per (kernel, element size, BLOCK_D) the
largest tiles that compile with zero spills and fit the shared memory of an A100 and an H100,
with 8 warps where a 4-warp program would hold too many accumulator registers. In the
interpreter every kernel uses 16 x 16 tiles, so that small test sizes span several blocks.

``ITEACH_FAST_AUTOTUNE=1`` (read at import) makes the launchers pick among ``autotune_configs``
with ``triton.autotune`` instead (keyed on the head dim, the length, causal and bias; the dtype
is part of Triton's key): for a GPU session to measure which entries of ``TABLE`` to change.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

from ._compat import interpreted

__all__ = ["Tiles", "TABLE", "MAX_HEAD_DIM", "AUTOTUNE", "launch_tiles", "head_block", "autotune_configs"]

MAX_HEAD_DIM = 256  # one (BLOCK, Dh) tile of q/k/v must fit in registers
AUTOTUNE = os.environ.get("ITEACH_FAST_AUTOTUNE", "0") == "1"
KERNELS = ("fwd", "bwd_dq", "bwd_dkv")
HEAD_BLOCKS = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Tiles:
    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 3

    def meta(self) -> dict:
        return dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n, num_warps=self.num_warps,
                    num_stages=self.num_stages)


INTERPRETER = Tiles(16, 16, 4, 1)


def _table() -> dict:
    table = {}
    for kernel in KERNELS:
        for size in (2, 4):
            for block_d in HEAD_BLOCKS:
                head_bytes = block_d * size
                tiles = Tiles(16, 16) if head_bytes > 512 else Tiles(32, 32) if head_bytes > 256 else Tiles(64, 64)
                table[(kernel, size, block_d)] = tiles
    return table


#: (kernel, element size in bytes, BLOCK_D) -> Tiles
TABLE = _table()


def head_block(Dh: int) -> int:
    """BLOCK_D, the head dim padded to a power of two; ValueError beyond ``MAX_HEAD_DIM``."""
    if not 1 <= Dh <= MAX_HEAD_DIM:
        raise ValueError(f"the Triton ECCE attention supports head dims 1..{MAX_HEAD_DIM}, got {Dh}")
    return max(16, triton.next_power_of_2(Dh))  # padded with masked lanes; tl.dot needs >= 16


def launch_tiles(kernel: str, dtype: torch.dtype, block_d: int, causal: bool, device: torch.device) -> Tiles:
    """The tiles of ``kernel`` ("fwd", "bwd_dq", "bwd_dkv") for ``dtype`` at ``BLOCK_D``."""
    if interpreted(device):
        return INTERPRETER
    return TABLE[(kernel, dtype.itemsize, block_d)]


def autotune_configs(kernel: str) -> list:
    """A small search space for ``triton.autotune`` (GPU only, opt-in): tiles 32..128, 4 or 8 warps,
    2 or 3 stages; the launcher prunes those with a tile longer than the sequence."""
    configs = []
    for bm, bn in ((32, 32), (64, 32), (32, 64), (64, 64), (128, 64), (64, 128)):
        for warps in (4, 8):
            for stages in (2, 3):
                configs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages))
    return configs
