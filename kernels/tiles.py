"""Launch parameters of the attention kernels: tiles, warps and pipeline stages per kernel x dtype x head dim.

    launch_tiles(kernel, dtype, block_d, causal, device) -> Tiles   what the launchers use (TABLE, AMPERE on sm_8x)
    head_block(Dh)                                        -> BLOCK_D, the head dim padded to a power of two
    autotune_configs(kernel)                              -> triton.Config list for a GPU session to measure
    autotuned(kernel, name, bucket)                       -> the kernel under triton.autotune for one length bucket
    length_bucket(L)                                      -> the length class autotuning is keyed on

``TABLE`` was chosen from the sm_90 compile report (``bench/kernel_resources.py``: registers,
spills, shared memory per variant), not from timings: per (kernel, element size, BLOCK_D) the
largest tiles that compile with zero spills and fit the shared memory of an A100 and an H100,
with 8 warps where a 4-warp program would hold too many accumulator registers. In the
interpreter every kernel uses 16 x 16 tiles, so that small test sizes span several blocks.

``ITEACH_FAST_AUTOTUNE=1`` (read at import) makes the launchers pick among ``autotune_configs``
with ``triton.autotune`` instead (keyed on the head dim, causal and bias, and the length's bucket,
the next power of two: one tuner per bucket, so a new padded length in the same bucket is not
tuned again; the dtype is part of Triton's key): for a GPU session to measure which entries of
``TABLE`` to change.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

from ._compat import interpreted

__all__ = ["Tiles", "TABLE", "AMPERE", "TUNED_KEYS", "MAX_HEAD_DIM", "AUTOTUNE", "launch_tiles", "head_block",
           "autotune_configs", "autotuned", "length_bucket"]

MAX_HEAD_DIM = 256  # one (BLOCK, Dh) tile of q/k/v must fit in registers
AUTOTUNE = os.environ.get("ITEACH_FAST_AUTOTUNE", "0") == "1"


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

# (kernel, element size in bytes, BLOCK_D) -> Tiles: BLOCK_M query rows, BLOCK_N keys (the dQ and
# forward programs own BLOCK_M rows, the dK/dV program BLOCK_N keys). From the sm_90 compile reports
# of triton 3.8 and 3.6 (bench/results/kernel-resources-*.md): zero spills in 16-bit at head dims
# <= 256 and in float32 at <= 64 with both. The band bias about doubles a kernel's registers (its
# column vectors broadcast over the tile) and 3xTF32 adds more (each operand split in two), so the
# 16-bit backward takes 8 warps at 64 x 64 and float32 narrower tiles; float32 at 128 needs
# 16 x 16 / 32 x 16 tiles to spill little or nothing (small MMA shapes: slow, but no local memory).
TABLE = {
    # 16-bit (float16, bfloat16)
    ("fwd", 2, 16): Tiles(64, 64, 4, 3), ("fwd", 2, 32): Tiles(64, 64, 4, 3), ("fwd", 2, 64): Tiles(64, 64, 4, 3),
    ("fwd", 2, 128): Tiles(64, 64, 8, 3), ("fwd", 2, 256): Tiles(64, 32, 8, 2),
    ("bwd_dq", 2, 16): Tiles(64, 64, 8, 2), ("bwd_dq", 2, 32): Tiles(64, 64, 8, 2),
    ("bwd_dq", 2, 64): Tiles(64, 64, 8, 2), ("bwd_dq", 2, 128): Tiles(64, 64, 8, 2),
    ("bwd_dq", 2, 256): Tiles(32, 32, 4, 2),
    ("bwd_dkv", 2, 16): Tiles(64, 64, 8, 2), ("bwd_dkv", 2, 32): Tiles(64, 64, 8, 2),
    ("bwd_dkv", 2, 64): Tiles(64, 64, 8, 2), ("bwd_dkv", 2, 128): Tiles(32, 64, 8, 2),
    ("bwd_dkv", 2, 256): Tiles(32, 32, 8, 2),
    # float32 (3xTF32 dots)
    ("fwd", 4, 16): Tiles(64, 32, 4, 3), ("fwd", 4, 32): Tiles(64, 64, 4, 3), ("fwd", 4, 64): Tiles(128, 32, 8, 3),
    ("fwd", 4, 128): Tiles(32, 16, 4, 2), ("fwd", 4, 256): Tiles(32, 16, 4, 1),
    ("bwd_dq", 4, 16): Tiles(64, 32, 4, 2), ("bwd_dq", 4, 32): Tiles(64, 32, 4, 2),
    ("bwd_dq", 4, 64): Tiles(64, 32, 8, 2), ("bwd_dq", 4, 128): Tiles(16, 16, 4, 1),
    ("bwd_dq", 4, 256): Tiles(32, 16, 4, 1),
    ("bwd_dkv", 4, 16): Tiles(16, 64, 4, 2), ("bwd_dkv", 4, 32): Tiles(32, 64, 4, 2),
    ("bwd_dkv", 4, 64): Tiles(16, 32, 4, 2), ("bwd_dkv", 4, 128): Tiles(16, 16, 4, 1),
    ("bwd_dkv", 4, 256): Tiles(16, 16, 4, 1),
}
#: where sm_8x (A100: mma.sync, not Hopper's wgmma; other register needs) spills with TABLE's entry
#: (sm_80 compile report)
AMPERE = {
    ("bwd_dq", 2, 64): Tiles(32, 64, 4, 2), ("bwd_dkv", 2, 64): Tiles(64, 32, 8, 2),
    ("fwd", 4, 16): Tiles(64, 64, 4, 3), ("fwd", 4, 32): Tiles(64, 32, 4, 3), ("fwd", 4, 64): Tiles(32, 32, 4, 3),
    ("bwd_dq", 4, 64): Tiles(32, 32, 4, 2), ("bwd_dkv", 4, 32): Tiles(16, 64, 4, 2),
}
TUNED_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")  # what triton.autotune chooses


def head_block(Dh: int) -> int:
    """BLOCK_D, the head dim padded to a power of two; ValueError beyond ``MAX_HEAD_DIM``."""
    if not 1 <= Dh <= MAX_HEAD_DIM:
        raise ValueError(f"the Triton ECCE attention supports head dims 1..{MAX_HEAD_DIM}, got {Dh}")
    return max(16, triton.next_power_of_2(Dh))  # padded with masked lanes; tl.dot needs >= 16


def launch_tiles(kernel: str, dtype: torch.dtype, block_d: int, causal: bool, device: torch.device,
                 arch: int | None = None) -> Tiles:
    """The tiles of ``kernel`` ("fwd", "bwd_dq", "bwd_dkv") for ``dtype`` at ``BLOCK_D`` on ``device``
    (compute capability ``arch`` x 10, e.g. 90, read from the device when None)."""
    if interpreted(device):
        return INTERPRETER
    if arch is None:
        major, minor = torch.cuda.get_device_capability(device)
        arch = 10 * major + minor
    key = (kernel, dtype.itemsize, block_d)
    return AMPERE.get(key, TABLE[key]) if arch < 90 else TABLE[key]


def autotune_configs(kernel: str) -> list:
    """The search space of ``triton.autotune`` (GPU, opt-in): the entries of ``TABLE`` for this
    kernel and their neighbours, 4 or 8 warps, 2 or 3 stages. Configurations that spill only run
    slowly and those that do not fit in shared memory fail to launch, which the autotuner skips."""
    tiles = {(t.block_m, t.block_n) for (k, _, _), t in TABLE.items() if k == kernel}
    tiles |= {(64, 64), (128, 64), (64, 128), (128, 32), (32, 128)}
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)
            for bm, bn in sorted(tiles) for warps in (4, 8) for stages in (2, 3)]


def length_bucket(L: int) -> int:
    """The length class autotuning is keyed on: the next power of two (at least 16). Keying on
    the exact length would tune again for every new padded length (a few seconds each)."""
    return max(16, triton.next_power_of_2(int(L)))


def _pruner(bucket: int):
    def prune(configs, named_args, **kwargs):
        """No tile longer than the bucket's sequences: those only add masked work."""
        limit = max(32, bucket)
        kept = [c for c in configs if max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) <= limit]
        return kept or configs[:1]
    return prune


_TUNERS: dict = {}


def autotuned(kernel, name: str, bucket: int):
    """``kernel`` under ``triton.autotune`` over ``autotune_configs(name)`` for lengths of one
    ``length_bucket``: one tuner per (kernel, bucket), made once, keyed on the head dim, bias and
    causal (and, by Triton, the dtypes) but not the exact length; the launcher passes the rest."""
    key = (name, kernel, bucket)
    if key not in _TUNERS:
        _TUNERS[key] = triton.autotune(configs=autotune_configs(name), key=["Dh", "HAS_BIAS", "CAUSAL"],
                                       prune_configs_by={"early_config_prune": _pruner(bucket)})(kernel)
    return _TUNERS[key]
