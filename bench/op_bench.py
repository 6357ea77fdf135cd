"""The kernel ops' entries: one declarative :class:`OpEntry` per registered op.

An entry says what to measure — sizes per device kind, modes, the work of one call (bytes a
fused kernel must move, FLOPs) and the peers it is compared with. Its inputs come from
``iteach_fast.ops.testing.make_inputs`` (the tests' factory) and its own providers from the
registry (``iteach_fast.ops.backends.implementations``): a newly registered backend gets rows
here with no edit.
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from iteach_fast import ops
from iteach_fast.ops import backends, reference
from iteach_fast.ops.padding import valid_mask
from iteach_fast.ops.testing import make_inputs

from .cases import Case, Entry, Prepared, Size, Skip

__all__ = ["Peer", "OpEntry", "OP_ENTRIES", "DIST", "POOL_SIZE", "sdpa_float_mask", "flex_ecce_attention"]

DIST = 30  # ECCE's band: |i - j| < dist (docs/maths.md)
POOL_SIZE = 3
HEADLINE = frozenset({"headline"})


# ----------------------------------------------------------------------------- peers

def sdpa_float_mask(q, k, v, zp, lengths, dist: int, causal: bool = False) -> torch.Tensor:
    """ECCE attention through SDPA: E from the reference, key padding (and the future, if
    ``causal``) folded into the float mask."""
    L = q.shape[2]
    valid = valid_mask(lengths, L)
    E = reference.ecce_bias(zp, lengths, dist, causal)
    hidden = ~valid[:, None, None, :]
    if causal:
        hidden = hidden | torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1)
    mask = E.masked_fill(hidden, torch.finfo(E.dtype).min).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return torch.where(valid[:, None, :, None], out, torch.zeros((), dtype=out.dtype, device=out.device))


def flex_ecce_attention(q, k, v, zp, lengths, dist: int, causal: bool = False) -> torch.Tensor:
    """ECCE attention through FlexAttention: the bias is the band mean read from plain prefix
    sums ``P (B, L+1, H)`` of the valid ``zp`` (what a user would write; no local numerics).
    ``P`` is summed eagerly and only the attention compiled: Inductor 2.11 fails to generate the
    split scan of a long ``cumsum`` (L = 2048), and a user would keep it out of the graph too."""
    L = q.shape[2]
    valid = valid_mask(lengths, L)
    zp = torch.where(valid[..., None], zp.float(), torch.zeros((), device=zp.device))
    P = F.pad(torch.cumsum(zp, dim=1), (0, 0, 1, 0)).to(q.dtype)
    # two tensors, each indexed once in the score_mod: FlexAttention's backward does not take a
    # captured tensor that needs gradients and is indexed twice
    upper, lower = P[:, 1:].contiguous(), P[:, :-1].contiguous()
    out = _compiled(_flex_band_attention)(q, k, v, upper, lower, lengths, dist, causal)
    return torch.where(valid[:, None, :, None], out, torch.zeros((), dtype=out.dtype, device=out.device))


def _flex_band_attention(q, k, v, upper, lower, lengths, dist: int, causal: bool) -> torch.Tensor:
    """FlexAttention with ECCE's band mean ``(upper[b, hi] - lower[b, lo]) / (hi - lo + 1)``
    (``upper = P[:, 1:]``, ``lower = P[:, :-1]``) added inside the band, key padding masked."""
    from torch.nn.attention.flex_attention import flex_attention

    def score_mod(score, b, h, q_idx, kv_idx):
        lo, hi = torch.minimum(q_idx, kv_idx), torch.maximum(q_idx, kv_idx)
        bias = (upper[b, hi, h] - lower[b, lo, h]) / (hi - lo + 1)
        score = score + torch.where(hi - lo < dist, bias, torch.zeros_like(bias))
        keep = kv_idx < lengths[b]
        if causal:
            keep = keep & (kv_idx <= q_idx)
        return torch.where(keep, score, -float("inf"))

    return flex_attention(q, k, v, score_mod=score_mod)


@functools.cache
def compiled_reference(op: str) -> Callable:
    """``torch.compile`` of the public op on the reference backend, one per op (reused across
    sizes, so automatic dynamic shapes compile a size-generic graph after the first recompile)."""
    return torch.compile(functools.partial(getattr(ops, op), backend="reference"))


@functools.cache
def _compiled(fn: Callable) -> Callable:
    return torch.compile(fn)


@dataclass(frozen=True)
class Peer:
    """What an op is compared with: ``make(op)`` returns ``f(*tensors, lengths=, **params)``."""
    description: str
    make: Callable[[str], Callable]
    compiled: bool = False
    devices: tuple = ("cpu", "cuda")
    elsewhere: str = ""  # why it is not benchmarked on other devices


COMPILED_REFERENCE = Peer("torch.compile of the pure-PyTorch reference (default mode, same maths)",
                          compiled_reference, compiled=True)
ATTENTION_PEERS = {
    "compiled-reference": COMPILED_REFERENCE,
    "sdpa-float-mask": Peer("the reference's E (B,H,L,L) materialised, key padding folded in, passed to "
                            "F.scaled_dot_product_attention as a float attn_mask (time includes building E)",
                            lambda op: sdpa_float_mask),
    "flex-attention": Peer("torch.compile(flex_attention) with a score_mod reading the band mean from the prefix "
                           "sums P (key padding masked in the score_mod; time includes P)",
                           lambda op: flex_ecce_attention, compiled=True, devices=("cuda",),
                           elsewhere="FlexAttention has no backward on the CPU and its CPU forward is not a speed "
                                     "path: benchmarked on CUDA only"),
}


# ----------------------------------------------------------------------------- work per call

def _e(case: Case) -> int:
    return case.torch_dtype.itemsize


def bias_bytes(c: Case) -> int:  # read zp, write E; backward: read dE, write dzp
    return _e(c) * (c.B * c.L * c.H + c.B * c.H * c.L * c.L) * (2 if c.backward else 1)


def bias_flops(c: Case, lengths: list) -> int:
    return 2 * c.B * c.H * c.L * c.L * (3 if c.backward else 1)


def attention_bytes(c: Case) -> int:
    B, L, H, Dh, e = c.B, c.L, c.H, c.Dh, _e(c)
    fwd = e * (4 * B * H * L * Dh + B * L * H)  # read q, k, v, zp; write out
    # backward: read q, k, v, out, dout, zp and the row statistics; write dq, dk, dv, dzp
    back = e * (8 * B * H * L * Dh + 2 * B * L * H) + 4 * B * H * L
    return fwd + (back if c.backward else 0)


def attention_flops(c: Case, lengths: list) -> int:
    """Two n x n x Dh products forward per conversation of n valid utterances, 2.5x that
    backward (the FlashAttention convention, counted over the valid query-key pairs as its
    variable-length kernels are: the padding is no work a kernel must do); causal: half.
    ``lengths``: the (B,) lengths of each rotated input copy (their mean is counted)."""
    pairs = sum(float((n.double() ** 2).sum()) for n in lengths) / len(lengths)
    fwd = 4 * c.H * pairs * c.Dh * (0.5 if c.causal else 1)
    return int(fwd * (3.5 if c.backward else 1))


def prefix_bytes(c: Case) -> int:
    B, L, D, H, e = c.B, c.L, c.D, c.H, _e(c)
    out = 4 * (B * L * H + 3 * B * H * L)  # zp (B, L, H) and the prefix table (B, H, 3, L), float32
    fwd = e * (B * L * D + D * H) + out  # read z, W; write zp and the table
    back = out + e * (2 * B * L * D + 2 * D * H)  # read their gradients, z, W; write dz, dW
    return fwd + (back if c.backward else 0)


def prefix_flops(c: Case, lengths: list) -> int:
    return (2 * c.B * c.L * c.D * c.H + c.B * c.L * c.H) * (3 if c.backward else 1)


def mixture_bytes(c: Case) -> int:
    B, L, D, e = c.B, c.L, c.D, _e(c)
    fwd = e * (4 * B * L * D + 4 * B * L)  # read logits, x, y_attn, y_mlp; write out
    back = e * (7 * B * L * D + 8 * B * L)  # read dout, x, y_attn, y_mlp, logits; write 3 grads + dlogits
    return fwd + (back if c.backward else 0)


def mixture_flops(c: Case, lengths: list) -> int:
    return 16 * c.B * c.L * c.D * (3 if c.backward else 1)


# ----------------------------------------------------------------------------- the entry

CAUSAL = ("fwd causal", "fwd+bwd causal")


def _ragged(B: int, L: int, gen: torch.Generator) -> torch.Tensor:
    """Lengths in [L/2, L], the first conversation full: the same for every provider."""
    lengths = torch.randint(max(1, L // 2), L + 1, (B,), generator=gen)
    lengths[0] = L
    return lengths


@dataclass(frozen=True)
class OpEntry(Entry):
    op: str
    bytes_fn: Callable[[Case], int]
    flops_fn: Callable[[Case, list], int]  # (case, the lengths of each input copy)
    sizes: dict  # {kind: (Size, ...)}
    peers: dict = field(default_factory=lambda: {"compiled-reference": COMPILED_REFERENCE})
    params: dict = field(default_factory=dict)  # make_inputs' keyword parameters (dist, pool_size)
    causal: bool = False  # also the causal modes (query i sees keys j <= i)
    baseline: str = "reference"
    dtypes: dict = field(default_factory=lambda: {"cuda": ("bfloat16", "float32"), "cpu": ("float32",)})
    roofline: bool = True

    @property
    def modes(self) -> tuple:
        return ("fwd", "fwd+bwd") + (CAUSAL if self.causal else ())

    def providers(self) -> list[str]:
        """The registry's backends of this op (reference first), then the peers."""
        return [impl.backend for impl in reversed(backends.implementations(self.op))] + list(self.peers)

    def describe(self) -> dict[str, str]:
        return {name: peer.description for name, peer in self.peers.items()}

    def runs_on(self, provider: str, device_type: str) -> bool:
        impl = backends.REGISTRY[self.op].get(provider)  # e.g. the cpp ECCE ops: CPU only
        return impl is None or impl.devices is None or device_type in impl.devices

    def is_ours(self, provider: str) -> bool:
        return provider in backends.REGISTRY[self.op]

    def is_compiled(self, provider: str) -> bool:
        return provider in self.peers and self.peers[provider].compiled

    def function(self, provider: str, device: torch.device) -> Callable:
        """``f(op_case)`` running ``provider`` on an :class:`~iteach_fast.ops.testing.OpCase`, or Skip."""
        if provider in backends.REGISTRY[self.op]:
            impl = backends.REGISTRY[self.op][provider]
            why = impl.unavailable_reason(device)
            if why:
                raise Skip(why)
            if not impl.runs_on(device.type, auto=True):  # e.g. Triton's CPU interpreter
                raise Skip(f"{provider} runs on {device.type} only as a correctness tool (backend='auto' never "
                           "picks it there): not benchmarked")
            return lambda inputs: inputs.call(provider)
        peer = self.peers[provider]
        if device.type not in peer.devices:
            raise Skip(peer.elsewhere or f"{provider} runs on {', '.join(peer.devices)} only")
        fn = peer.make(self.op)
        return lambda inputs: fn(*inputs.tensors.values(), inputs.lengths, **inputs.params)

    def prepare(self, cases: list[Case], device: torch.device, copies: int = 3, seed: int = 0) -> dict:
        c0 = cases[0]
        gen = torch.Generator().manual_seed(seed)
        grad, params = c0.backward, {**self.params, **({"causal": True} if c0.causal else {})}
        try:
            sets = [make_inputs(self.op, B=c0.B, L=c0.L, D=c0.D, H=c0.H, Dh=c0.Dh, lengths=_ragged(c0.B, c0.L, gen),
                                dtype=c0.torch_dtype, device=device, garbage=None, requires_grad=grad,
                                generator=gen, **params) for _ in range(copies)]
        except TypeError as err:  # e.g. an op without a causal mode yet
            return dict.fromkeys(cases, Skip(f"iteach_fast.ops.testing.make_inputs({self.op!r}, ...): {err}"))
        grads_out = {}  # one set of output gradients per input copy, shared by every provider

        def output_grads(i: int, outputs: tuple) -> list:
            if i not in grads_out:
                g = torch.Generator().manual_seed(seed + 1 + i)
                grads_out[i] = [torch.randn(o.shape, generator=g).to(device=device, dtype=o.dtype) for o in outputs]
            return grads_out[i]

        out = {}
        for case in cases:
            try:
                fn = self.function(case.provider, device)
            except Skip as why:
                out[case] = why
                continue
            out[case] = Prepared(self._call(fn, sets, output_grads, grad), self.bytes_fn(case),
                                 self.flops_fn(case, [inputs.lengths.cpu() for inputs in sets]))
        return out

    @staticmethod
    def _call(fn: Callable, sets: list, output_grads: Callable, grad: bool) -> Callable[[], None]:
        rotation = itertools.cycle(enumerate(sets))
        if not grad:
            def call():
                with torch.no_grad():
                    fn(next(rotation)[1])
            return call

        def call_backward():
            i, inputs = next(rotation)
            for t in inputs.tensors.values():
                t.grad = None
            outputs = _as_tuple(fn(inputs))
            torch.autograd.backward(outputs, output_grads(i, outputs))
        return call_backward


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _sizes(*specs, tags=frozenset(), modes=None, D=128, H=8) -> tuple:
    return tuple(Size(B, L, D, H, modes, tags) for B, L in specs)



OP_ENTRIES = (
    OpEntry("ecce_prefix", prefix_bytes, prefix_flops,
            sizes={"cuda": _sizes((32, 110), (16, 512), (4, 2048), (1, 8192)),
                   "cpu": _sizes((32, 110), (4, 512)), "smoke": _sizes((2, 16), tags=HEADLINE)}),
    OpEntry("ecce_bias", bias_bytes, bias_flops, params={"dist": DIST},
            sizes={"cuda": _sizes((32, 110), (16, 512), (4, 2048), (1, 8192)),
                   "cpu": _sizes((32, 110), (4, 512)), "smoke": _sizes((2, 16), tags=HEADLINE)}),
    # head dims 16 (D 128), 64 (D 512) and 128 (D 1024), 8 heads; the headline is L = 2048, Dh = 64.
    # The reference needs B*H*L*L floats per bias, so it runs out of memory at L = 8192 where the kernels do not.
    OpEntry("ecce_attention", attention_bytes, attention_flops, params={"dist": DIST}, peers=ATTENTION_PEERS,
            causal=True,
            sizes={"cuda": _sizes((32, 110), (32, 512), (32, 2048), (32, 8192), modes=("fwd", "fwd+bwd"))
                   + _sizes((32, 512), D=512, modes=("fwd", "fwd+bwd"))
                   + _sizes((32, 2048), D=512, tags=HEADLINE) + _sizes((32, 8192), D=512)
                   + _sizes((32, 2048), (32, 8192), D=1024, modes=("fwd", "fwd+bwd")),
                   "cpu": _sizes((32, 110), modes=("fwd", "fwd+bwd")) + _sizes((4, 512))
                   + _sizes((4, 512), D=512, tags=HEADLINE) + _sizes((4, 512), D=1024, modes=("fwd", "fwd+bwd"))
                   + _sizes((1, 2048), D=512, modes=("fwd", "fwd+bwd")),
                   "cpu-quick": _sizes((32, 110), modes=("fwd", "fwd+bwd")) + _sizes((4, 512), D=512, tags=HEADLINE)
                   + _sizes((4, 512), D=1024, modes=("fwd+bwd",)),
                   "smoke": _sizes((2, 16), tags=HEADLINE) + _sizes((2, 16), D=64, H=2, modes=("fwd+bwd",))}),
    # memory-bound: up to B*L*D = 8M (CPU) / 64M (GPU) elements
    OpEntry("routed_mixture", mixture_bytes, mixture_flops, params={"pool_size": POOL_SIZE},
            sizes={"cuda": _sizes((32, 110), (64, 1024)) + _sizes((512, 1024), tags=HEADLINE),
                   "cpu": _sizes((32, 110)) + _sizes((64, 1024), tags=HEADLINE),
                   "smoke": _sizes((2, 16), tags=HEADLINE)}),
)
assert {e.op for e in OP_ENTRIES} == set(backends.OPS), "every registered op needs its entry here"
