"""ECCE-guided attention with the band bias fused in, in Triton (``docs/maths.md``, "ECCE-guided MixMap").

    ecce_attention(q, k, v, T, lengths, dist, scale, causal) -> out (B, H, L, Dh)   (E never materialised)

FlashAttention-2, forward and backward, with ECCE's bias E added to the logits tile by tile from
the band tables ``T`` of zp (``iteach_fast.kernels.scan`` builds them, ``iteach_fast.kernels.band``
reads a tile of E from them); ``T = None`` is plain masked attention. q, k, v (and the output's
gradient) are read, and out, dq, dk, dv written, through their strides: a (B, L, H, Dh) activation
viewed as (B, H, L, Dh) is used as it is, and out / dq / dk / dv take the layout of q / k / v.
Causal attention (keys j <= i) visits no tile above the diagonal, forward or backward.

Backward: the dQ kernel (one program per block of query rows; it also computes FA2's
``delta = rowsum(dO * O)`` for its rows) then the dK/dV kernel (one per block of keys), each
recomputing ``S = QK^T`` and ``dO V^T``: 7 block matmuls instead of the 5 of a single kernel that
adds dQ with atomics (FlashAttention-2's choice), in exchange for a deterministic result, no
float32 dQ buffer and a bias gradient without atomics either. The dK/dV kernel works on
transposed tiles (keys as rows), so that ``P^T`` and ``dS^T`` enter the dV and dK products as the
dots produce them. The bias gradient: the dQ kernel sums ``(dS, dR, dzp)`` of the tables over
its rows' band pairs into a (3, B, H, L) buffer, the dK/dV kernel sums them over its keys' pairs
and adds the row sums of the same positions, writing dT (B, H, 3, L); no two programs touch the
same element. The tables' adjoint (a scan, ``iteach_fast.kernels.scan``) turns dT into dzp.

The launch parameters (tiles, warps, stages per kernel x dtype x head dim) come from
``iteach_fast.kernels.tiles``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._compat import batch_slices, interpreted, launcher, sliced, triton_op_or_custom, wide_offsets
from .band import LOG2E, addresses, band_grads, band_tile, touches_band
from .scan import chunk, dot_precision
from .tiles import AUTOTUNE, TUNED_KEYS, autotuned, head_block, launch_tiles, length_bucket

__all__ = ["ecce_attention", "attention_meta", "KERNELS"]


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _attn_fwd_kernel(Q, K, V, T, LENGTHS, OUT, LSE2, scale, dist, L, H, Dh,
                     stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                     stride_vb, stride_vh, stride_vt, stride_vd, stride_ob, stride_oh, stride_ot, stride_od,
                     stride_tb, stride_th, stride_tc, stride_tt,
                     HAS_BIAS: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, WIDE: tl.constexpr):
    """FlashAttention-2 forward for one block of query rows of one (batch, head): online softmax
    over the valid key blocks (causal: up to the diagonal), the ECCE bias added on the tiles that
    touch the band. Saves each row's base-2 log-sum-exp (0 at invalid rows, written as 0)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    n = tl.load(LENGTHS + b).to(tl.int32)
    m0 = pid_m * BLOCK_M
    offs_i = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ai, ad = addresses(offs_i, WIDE), addresses(offs_d, WIDE)  # what multiplies a stride
    mask_d = offs_d[None, :] < Dh
    row_valid = offs_i < n
    k_bh = K + b * stride_kb + h * stride_kh
    v_bh = V + b * stride_vb + h * stride_vh
    T_bh = T + b * stride_tb + h * stride_th
    # masked loads (other=0) everywhere: padding, even inf, never reaches a product
    q = tl.load(Q + b * stride_qb + h * stride_qh + ai[:, None] * stride_qt + ad[None, :] * stride_qd,
                mask=row_valid[:, None] & mask_d, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    scale = tl.cast(scale, tl.float32)  # Inductor passes a float argument as fp64
    qk_scale = scale * LOG2E
    hi = tl.where(m0 < n, n, 0)  # a block of invalid rows visits nothing
    if CAUSAL:
        hi = tl.minimum(hi, m0 + BLOCK_M)
    for n0 in range(0, hi, BLOCK_N):
        offs_j = n0 + tl.arange(0, BLOCK_N)
        aj = addresses(offs_j, WIDE)
        col_valid = offs_j < n
        k = tl.load(k_bh + aj[:, None] * stride_kt + ad[None, :] * stride_kd,
                    mask=col_valid[:, None] & mask_d, other=0.0)
        v = tl.load(v_bh + aj[:, None] * stride_vt + ad[None, :] * stride_vd,
                    mask=col_valid[:, None] & mask_d, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if HAS_BIAS:
            if touches_band(m0, n0, BLOCK_M, BLOCK_N, dist):
                s += band_tile(T_bh, stride_tc, stride_tt, offs_i, offs_j, n, dist, CAUSAL, True) * LOG2E
        keys = col_valid[None, :]
        if CAUSAL:
            keys = keys & (offs_j[None, :] <= offs_i[:, None])
        s = tl.where(keys, s, float("-inf"))
        # finite for every row: the first block visited holds key 0, which every row may see
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = tl.where(row_valid[:, None], acc / l_safe[:, None], 0.0)
    tl.store(OUT + b * stride_ob + h * stride_oh + ai[:, None] * stride_ot + ad[None, :] * stride_od,
             out.to(OUT.dtype.element_ty), mask=(offs_i[:, None] < L) & mask_d)
    tl.store(LSE2 + bh.to(tl.int64) * L + offs_i, tl.where(row_valid, m_i + tl.log2(l_safe), 0.0), mask=offs_i < L)


@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, T, LENGTHS, O, DO, DQ, LSE2, DELTA, ROWS, scale, dist, L, H, Dh,
                        stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                        stride_vb, stride_vh, stride_vt, stride_vd, stride_ob, stride_oh, stride_ot, stride_od,
                        stride_gb, stride_gh, stride_gt, stride_gd, stride_db, stride_dh, stride_dt, stride_dd,
                        stride_tb, stride_th, stride_tc, stride_tt,
                        HAS_BIAS: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, WIDE: tl.constexpr):
    """dQ for one block of query rows, FA2's ``delta = rowsum(dO * O)`` of those rows (DELTA, for
    the dK/dV kernel), and the bias gradient summed along the rows: ``ROWS (3, B, H, L)`` holds
    their ``(dS, dR, dzp)`` (B the launch's conversations). DO is strided as ``stride_g*``, DQ as ``stride_d*``."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    n = tl.load(LENGTHS + b).to(tl.int32)
    m0 = pid_m * BLOCK_M
    offs_i = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ai, ad = addresses(offs_i, WIDE), addresses(offs_d, WIDE)  # what multiplies a stride
    mask_d = offs_d[None, :] < Dh
    row_valid = offs_i < n
    k_bh = K + b * stride_kb + h * stride_kh
    v_bh = V + b * stride_vb + h * stride_vh
    T_bh = T + b * stride_tb + h * stride_th
    q_mask = row_valid[:, None] & mask_d
    q = tl.load(Q + b * stride_qb + h * stride_qh + ai[:, None] * stride_qt + ad[None, :] * stride_qd,
                mask=q_mask, other=0.0)
    do = tl.load(DO + b * stride_gb + h * stride_gh + ai[:, None] * stride_gt + ad[None, :] * stride_gd,
                 mask=q_mask, other=0.0)
    o = tl.load(O + b * stride_ob + h * stride_oh + ai[:, None] * stride_ot + ad[None, :] * stride_od,
                mask=q_mask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * L + offs_i, delta, mask=offs_i < L)
    lse2 = tl.load(LSE2 + bh.to(tl.int64) * L + offs_i, mask=row_valid, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    row_s = tl.zeros([BLOCK_M], tl.float32)
    row_r = tl.zeros([BLOCK_M], tl.float32)
    row_z = tl.zeros([BLOCK_M], tl.float32)
    scale = tl.cast(scale, tl.float32)  # Inductor passes a float argument as fp64
    qk_scale = scale * LOG2E
    hi = tl.where(m0 < n, n, 0)
    if CAUSAL:
        hi = tl.minimum(hi, m0 + BLOCK_M)
    for n0 in range(0, hi, BLOCK_N):
        offs_j = n0 + tl.arange(0, BLOCK_N)
        aj = addresses(offs_j, WIDE)
        col_valid = offs_j < n
        k = tl.load(k_bh + aj[:, None] * stride_kt + ad[None, :] * stride_kd,
                    mask=col_valid[:, None] & mask_d, other=0.0)
        v = tl.load(v_bh + aj[:, None] * stride_vt + ad[None, :] * stride_vd,
                    mask=col_valid[:, None] & mask_d, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if HAS_BIAS:
            touches = touches_band(m0, n0, BLOCK_M, BLOCK_N, dist)
            if touches:
                s += band_tile(T_bh, stride_tc, stride_tt, offs_i, offs_j, n, dist, CAUSAL, True) * LOG2E
        pairs = row_valid[:, None] & col_valid[None, :]
        if CAUSAL:
            pairs = pairs & (offs_j[None, :] <= offs_i[:, None])
        p = tl.where(pairs, tl.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])  # dLoss/dS, S the natural-base logits
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            if touches:
                gs, gr, gz = band_grads(ds, offs_i, offs_j, n, dist, CAUSAL, True)
                row_s += gs
                row_r += gr
                row_z += gz
    tl.store(DQ + b * stride_db + h * stride_dh + ai[:, None] * stride_dt + ad[None, :] * stride_dd,
             (dq * scale).to(DQ.dtype.element_ty), mask=(offs_i[:, None] < L) & mask_d)
    if HAS_BIAS:
        rows = ROWS + bh.to(tl.int64) * L + offs_i
        plane = tl.num_programs(1).to(tl.int64) * L  # one (B, H, L) plane of ROWS
        tl.store(rows, row_s, mask=offs_i < L)
        tl.store(rows + plane, row_r, mask=offs_i < L)
        tl.store(rows + 2 * plane, row_z, mask=offs_i < L)


@triton.jit
def _attn_bwd_dkv_kernel(Q, K, V, T, LENGTHS, DO, DK, DV, LSE2, DELTA, ROWS, DT, scale, dist, L, H, Dh,
                         stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                         stride_vb, stride_vh, stride_vt, stride_vd, stride_gb, stride_gh, stride_gt, stride_gd,
                         stride_ab, stride_ah, stride_at, stride_ad, stride_cb, stride_ch, stride_ct, stride_cd,
                         stride_tb, stride_th, stride_tc, stride_tt,
                         HAS_BIAS: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, WIDE: tl.constexpr):
    """dK, dV for one block of keys (DK strided as ``stride_a*``, DV as ``stride_c*``), visiting
    the query blocks that see them (causal: from the diagonal down); and the bias gradient summed
    down the columns plus the dQ kernel's row sums of the same positions, written as the tables'
    gradient ``DT (B, H, 3, L)`` (contiguous)."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    n = tl.load(LENGTHS + b).to(tl.int32)
    n0 = pid_n * BLOCK_N
    offs_j = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    aj, ad = addresses(offs_j, WIDE), addresses(offs_d, WIDE)  # what multiplies a stride
    mask_d = offs_d[None, :] < Dh
    col_valid = offs_j < n
    q_bh = Q + b * stride_qb + h * stride_qh
    do_bh = DO + b * stride_gb + h * stride_gh
    T_bh = T + b * stride_tb + h * stride_th
    kv_mask = col_valid[:, None] & mask_d
    k = tl.load(K + b * stride_kb + h * stride_kh + aj[:, None] * stride_kt + ad[None, :] * stride_kd,
                mask=kv_mask, other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + aj[:, None] * stride_vt + ad[None, :] * stride_vd,
                mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    col_s = tl.zeros([BLOCK_N], tl.float32)
    col_r = tl.zeros([BLOCK_N], tl.float32)
    col_z = tl.zeros([BLOCK_N], tl.float32)
    scale = tl.cast(scale, tl.float32)  # Inductor passes a float argument as fp64
    qk_scale = scale * LOG2E
    lo = 0
    if CAUSAL:
        lo = n0 // BLOCK_M * BLOCK_M  # rows above the diagonal see none of these keys
    hi = tl.where(n0 < n, n, 0)  # a block of invalid keys gets no gradient
    # transposed tiles (keys as rows, as the tile's owner): p^T and dS^T are then the left
    # operands of the dV and dK products as they come out of the dots, with no transpose
    for m0 in range(lo, hi, BLOCK_M):
        offs_i = m0 + tl.arange(0, BLOCK_M)
        ai = addresses(offs_i, WIDE)
        row_valid = offs_i < n
        qT = tl.load(q_bh + ai[None, :] * stride_qt + ad[:, None] * stride_qd,
                     mask=row_valid[None, :] & (offs_d[:, None] < Dh), other=0.0)
        do = tl.load(do_bh + ai[:, None] * stride_gt + ad[None, :] * stride_gd,
                     mask=row_valid[:, None] & mask_d, other=0.0)
        lse2 = tl.load(LSE2 + bh.to(tl.int64) * L + offs_i, mask=row_valid, other=0.0)
        delta = tl.load(DELTA + bh.to(tl.int64) * L + offs_i, mask=row_valid, other=0.0)
        sT = tl.dot(k, qT, input_precision=DOT_PRECISION) * qk_scale
        if HAS_BIAS:
            touches = touches_band(n0, m0, BLOCK_N, BLOCK_M, dist)
            if touches:
                sT += band_tile(T_bh, stride_tc, stride_tt, offs_j, offs_i, n, dist, CAUSAL, False) * LOG2E
        pairs = col_valid[:, None] & row_valid[None, :]
        if CAUSAL:
            pairs = pairs & (offs_j[:, None] <= offs_i[None, :])
        pT = tl.where(pairs, tl.exp2(sT - lse2[None, :]), 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            if touches:
                gs, gr, gz = band_grads(dsT, offs_j, offs_i, n, dist, CAUSAL, False)
                col_s += gs
                col_r += gr
                col_z += gz
    out_mask = (offs_j[:, None] < L) & mask_d
    tl.store(DK + b * stride_ab + h * stride_ah + aj[:, None] * stride_at + ad[None, :] * stride_ad,
             (dk * scale).to(DK.dtype.element_ty), mask=out_mask)
    tl.store(DV + b * stride_cb + h * stride_ch + aj[:, None] * stride_ct + ad[None, :] * stride_cd,
             dv.to(DV.dtype.element_ty), mask=out_mask)
    if HAS_BIAS:
        in_range = offs_j < L
        rows = ROWS + bh.to(tl.int64) * L + offs_j
        plane = tl.num_programs(1).to(tl.int64) * L
        dT_bh = DT + bh.to(tl.int64) * 3 * L + offs_j  # contiguous (B, H, 3, L)
        tl.store(dT_bh, col_s + tl.load(rows, mask=in_range, other=0.0), mask=in_range)
        tl.store(dT_bh + L, col_r + tl.load(rows + plane, mask=in_range, other=0.0), mask=in_range)
        tl.store(dT_bh + 2 * L, col_z + tl.load(rows + 2 * plane, mask=in_range, other=0.0), mask=in_range)


# ----------------------------------------------------------------------------- launches

def attention_meta(kernel: str, dtype: torch.dtype, Dh: int, causal: bool, has_bias: bool,
                   device: torch.device, arch: int | None = None, wide: bool = False) -> dict:
    """The constexprs and launch options of one attention kernel (``"fwd"``, ``"bwd_dq"`` or
    ``"bwd_dkv"``) for inputs of ``dtype`` and head dim ``Dh``: what the launchers below use, and
    what ``bench/kernel_resources.py`` compiles (for a given ``arch``, without a device).
    ``wide``: addresses in 64 bits (``_compat.wide_offsets``)."""
    tiles = launch_tiles(kernel, dtype, head_block(Dh), causal, device, arch)
    return dict(HAS_BIAS=has_bias, CAUSAL=causal, BLOCK_D=head_block(Dh), DOT_PRECISION=dot_precision(dtype),
                WIDE=wide, **tiles.meta())


KERNELS = {"fwd": _attn_fwd_kernel, "bwd_dq": _attn_bwd_dq_kernel, "bwd_dkv": _attn_bwd_dkv_kernel}
_AUTOTUNE = AUTOTUNE  # ITEACH_FAST_AUTOTUNE=1 (tests switch it on for one test)


def _launch(name: str, q: torch.Tensor, causal: bool, has_bias: bool, args: tuple) -> None:
    """Launch attention kernel ``name`` over (blocks of L, B * H) with ``attention_meta``'s
    parameters, or those ``triton.autotune`` picks (``ITEACH_FAST_AUTOTUNE=1``, on a GPU: tuned
    once per head dim, bias, causal, dtypes and length bucket, ``tiles.length_bucket``). ``q``
    and ``args`` are one slice of the batch (``batch_slices``: B * H fits grid axis 1)."""
    B, H, L, Dh = q.shape
    block = "BLOCK_N" if name == "bwd_dkv" else "BLOCK_M"  # the dimension a program owns
    meta = attention_meta(name, q.dtype, Dh, causal, has_bias, q.device,
                          wide=wide_offsets(*(a for a in args if isinstance(a, torch.Tensor))))
    if _AUTOTUNE and not interpreted(q.device):
        meta = {k: v for k, v in meta.items() if k not in TUNED_KEYS}
        kernel = autotuned(KERNELS[name], name, length_bucket(L))
    else:
        kernel = KERNELS[name]
    launcher(kernel)[lambda best: (triton.cdiv(L, best[block]), B * H)](*args, **meta)


def _no_tables(q: torch.Tensor) -> torch.Tensor:
    """A stand-in for the tables when there is no bias (never read)."""
    return q.new_empty((1, 1, 1, 1), dtype=torch.float32)


@triton_op_or_custom("iteach_fast::ecce_attention_fwd", mutates_args=())
def _attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: torch.Tensor | None,
                   lengths: torch.Tensor, dist: int, scale: float, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse2)``: the attention output (q's layout) and each row's base-2 log-sum-exp
    (B, H, L) float32, kept for the backward. ``dist`` is already a chunk length (``scan.chunk``)."""
    B, H, L, Dh = q.shape
    out = torch.empty_like(q)
    lse2 = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    if B * H == 0 or L == 0:
        return out, lse2
    T = tables if tables is not None else _no_tables(q)
    for b0, b1 in batch_slices(B, H):  # B * H on grid axis 1: at most 65,535 a launch
        part = sliced((q, k, v, T, lengths, out, lse2), b0, b1, B)
        _launch("fwd", part[0], causal, tables is not None,
                (*part, scale, dist, L, H, Dh, *q.stride(), *k.stride(), *v.stride(), *out.stride(), *T.stride()))
    return out, lse2


@triton_op_or_custom("iteach_fast::ecce_attention_bwd", mutates_args=())
def _attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse2: torch.Tensor, tables: torch.Tensor | None, lengths: torch.Tensor, dist: int, scale: float,
                   causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv, dT)``: dq, dk, dv in the layouts of q, k, v, dT (B, H, 3, L) float32
    contiguous (empty without tables)."""
    B, H, L, Dh = q.shape
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    has_bias = tables is not None
    dT = q.new_empty((B, H, 3, L) if has_bias else (0,), dtype=torch.float32)
    if B * H == 0 or L == 0:
        return dq, dk, dv, dT
    T = tables if has_bias else _no_tables(q)
    delta = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    common = (scale, dist, L, H, Dh)
    for b0, b1 in batch_slices(B, H):  # B * H on grid axis 1: at most 65,535 a launch
        qs, ks, vs, Ts, lens, outs, douts, dqs, dks, dvs, lses, deltas, dTs = sliced(
            (q, k, v, T, lengths, out, dout, dq, dk, dv, lse2, delta, dT), b0, b1, B)
        # the dQ kernel's row sums for the dK/dV kernel, (3, slice, H, L): one per slice
        rows = torch.empty(3, b1 - b0, H, L, device=q.device, dtype=torch.float32) if has_bias else deltas
        _launch("bwd_dq", qs, causal, has_bias,
                (qs, ks, vs, Ts, lens, outs, douts, dqs, lses, deltas, rows, *common,
                 *q.stride(), *k.stride(), *v.stride(), *out.stride(), *dout.stride(), *dq.stride(), *T.stride()))
        _launch("bwd_dkv", qs, causal, has_bias,
                (qs, ks, vs, Ts, lens, douts, dks, dvs, lses, deltas, rows, dTs if has_bias else deltas, *common,
                 *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(), *T.stride()))
    return dq, dk, dv, dT


def _attention_setup(ctx, inputs, output):
    q, k, v, tables, lengths, dist, scale, causal = inputs
    out, lse2 = output
    ctx.save_for_backward(q, k, v, out, lse2, tables, lengths)
    ctx.dist, ctx.scale, ctx.causal = dist, scale, causal
    ctx.mark_non_differentiable(lse2)


def _attention_backward(ctx, dout, _dlse2):
    q, k, v, out, lse2, tables, lengths = ctx.saved_tensors
    dq, dk, dv, dT = torch.ops.iteach_fast.ecce_attention_bwd(
        dout, q, k, v, out, lse2, tables, lengths, ctx.dist, ctx.scale, ctx.causal)
    return dq, dk, dv, (dT if tables is not None else None), None, None, None, None


_attention_fwd.register_autograd(_attention_backward, setup_context=_attention_setup)


def ecce_attention(q, k, v, prefix, lengths, dist: int, scale: float, causal: bool = False) -> torch.Tensor:
    """``softmax(q k^T * scale + E) v`` per head (keys ``j <= i`` only if ``causal``), ECCE's bias
    E built on the fly from the band tables ``prefix`` (``ecce_prefix`` / ``band_tables``, same
    lengths and dist), none if ``prefix`` is None; inputs as ``iteach_fast.ops`` validates them."""
    head_block(q.shape[-1])
    out, _ = torch.ops.iteach_fast.ecce_attention_fwd(q, k, v, prefix, lengths, chunk(dist, q.shape[2]),
                                                      float(scale), bool(causal))
    return out
