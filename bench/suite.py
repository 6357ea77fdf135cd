"""The one case list of the benchmarks, and how to turn a case into a callable.

A :class:`Case` names one measurement: an op, a provider (a backend from
``iteach_fast.backends.REGISTRY`` or a peer), a mode, a dtype and a size.
:func:`build_cases` enumerates them; :func:`prepare` builds the inputs (a few rotated
copies, so no call finds the previous call's data in cache) and returns a no-argument
callable that runs one forward (or forward+backward, or training step) on the next copy.
It raises :class:`Skip` with the reason when a case cannot run here.

``bench/run.py`` times these callables itself; ``bench/bench_*.py`` hand the same
callables to pytest-benchmark. Nothing else enumerates cases.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from iteach_fast import backends, ops, reference

MODES = ("fwd", "fwd+bwd")
MODEL_MODES = ("train_step", "inference")
KERNEL_OPS = ("ecce_bias", "ecce_attention", "ecce_prefix", "routed_mixture")
MODEL_OP = "iteach_net"
ALL_OPS = KERNEL_OPS + (MODEL_OP,)

DIST = 30  # ECCE band half-width (DESIGN §2)
POOL_SIZE = 3
MODEL_INPUT_DIMS = (1024, 512, 1024)  # text (DeBERTa), audio (wav2vec), visual (MA-Net)
MODEL_CLASSES = 4

# (B, L): the paper size first, then longer conversations at a roughly constant token count
GPU_SIZES = ((32, 110), (16, 512), (4, 2048), (1, 8192))
CPU_SIZES = ((32, 110), (4, 512), (1, 2048))
QUICK_CPU_SIZES = ((32, 110), (4, 512))
SMOKE_SIZES = ((2, 16), (2, 40))
# per-op overrides: the attention at the fixed batch (its reference needs B*H*L*L
# floats, so it runs out of memory at L = 8192 where the fused kernel does not), and the
# memory-bound mixture up to B*L*D = 8M (CPU) / 64M (GPU) elements
OP_SIZES = {
    ("ecce_attention", "cuda"): ((32, 110), (32, 512), (32, 2048), (32, 8192)),
    ("routed_mixture", "cuda"): ((32, 110), (64, 1024), (512, 1024)),
    ("routed_mixture", "cpu"): ((32, 110), (64, 1024)),
}
# a model's MLP token mixer is Linear(L, L): the model is benchmarked at conversation lengths only
MODEL_SIZES = {"gpu": ((32, 110), (8, 512)), "cpu": ((4, 110),), "smoke": ((2, 16),)}

PEERS = {
    "compiled-reference": "torch.compile of the pure-PyTorch reference (default mode, same maths)",
    "sdpa-float-mask": "the reference's E (B,H,L,L) materialised, key padding folded in, passed to "
                       "F.scaled_dot_product_attention as a float attn_mask (time includes building E)",
    "flex-attention": "torch.compile(flex_attention) with a score_mod reading the band mean from the "
                      "prefix sums P (key padding masked in the score_mod; time includes P)",
    "torch": "plain PyTorch: zp = z @ W_fc (float32, masked), then its exclusive cumsum P",
    "compiled-torch": "torch.compile of the plain-PyTorch matmul + cumsum",
    "reference": "the pure-PyTorch reference (iteach_fast.reference), the oracle",
    "auto": "the whole model with backend='auto': the fastest registered backend of each op",
}
#: the provider every other provider's speed-up is measured against, per op
BASELINES = {"ecce_bias": "reference", "ecce_attention": "reference", "ecce_prefix": "torch",
             "routed_mixture": "reference", MODEL_OP: "reference"}
COMPILED = ("compiled-reference", "compiled-torch", "flex-attention")


class Skip(Exception):
    """This case cannot run here; ``str(err)`` says why."""


@dataclass(frozen=True)
class Case:
    op: str
    provider: str
    mode: str
    dtype: str
    B: int
    L: int
    D: int = 128
    H: int = 8

    @property
    def Dh(self) -> int:
        return self.D // self.H

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def id(self) -> str:
        return f"{self.op}-{self.provider}-{self.mode}-{self.dtype}-B{self.B}-L{self.L}"

    def as_dict(self) -> dict:
        return {**asdict(self), "Dh": self.Dh}


# ----------------------------------------------------------------------------- enumeration

def providers(op: str) -> list[str]:
    """Every provider of ``op``: the registry's backends (whatever is registered today), then the peers."""
    registered = list(backends.REGISTRY.get(op, {}))
    if op == "ecce_bias":
        return registered + ["compiled-reference"]
    if op == "ecce_attention":
        return registered + ["compiled-reference", "sdpa-float-mask", "flex-attention"]
    if op == "ecce_prefix":
        return ["torch", "compiled-torch"] + (registered or ["triton"])
    if op == "routed_mixture":
        return registered + ["compiled-reference"]
    if op == MODEL_OP:
        return ["reference", "auto"]
    raise ValueError(f"unknown op {op!r}; expected one of {ALL_OPS}")


def provider_kind(op: str, provider: str) -> str:
    """``"backend"`` for this package's own implementations, ``"peer"`` for what they are compared with."""
    ours = op == MODEL_OP or provider in backends.REGISTRY.get(op, {}) or (op, provider) == ("ecce_prefix", "triton")
    return "backend" if ours else "peer"


def default_sizes(device: torch.device, quick: bool, smoke: bool, op: str) -> tuple:
    kind = "smoke" if smoke else device.type if device.type == "cuda" else "cpu"
    if op == MODEL_OP:
        return MODEL_SIZES["gpu" if kind == "cuda" else kind]
    if kind == "smoke":
        return SMOKE_SIZES
    if (op, kind) in OP_SIZES:
        return OP_SIZES[op, kind]
    if kind == "cuda":
        return GPU_SIZES
    return QUICK_CPU_SIZES if quick else CPU_SIZES


def default_dtypes(device: torch.device, quick: bool) -> tuple:
    if device.type == "cuda":
        return ("bfloat16",) if quick else ("bfloat16", "float32")
    return ("float32",) if quick else ("float32", "bfloat16")


def build_cases(device: torch.device, quick: bool = False, smoke: bool = False, ops_=None, providers_=None,
                dtypes=None, modes=None, sizes=None) -> list[Case]:
    """The case list, in run order: dtype, size, op, mode, provider; the model last; then
    FlexAttention, whose known bugs can poison a CUDA context (DESIGN §6 "Peers can fail")."""
    dtypes = tuple(dtypes or default_dtypes(device, quick))
    cases = []
    for dtype, op in itertools.product(dtypes, ops_ or ALL_OPS):
        if op == MODEL_OP and dtype != "float32":
            continue  # the model trains in float32 (mixed precision is not part of its API)
        op_modes = MODEL_MODES if op == MODEL_OP else MODES
        for (B, L), mode, provider in itertools.product(sizes or default_sizes(device, quick, smoke, op),
                                                        op_modes, providers(op)):
            if (modes is None or mode in modes) and (providers_ is None or provider in providers_):
                cases.append(Case(op, provider, mode, dtype, B, L))
    order = {op: i for i, op in enumerate(ALL_OPS)}
    return sorted(cases, key=lambda c: (c.provider == "flex-attention", c.op == MODEL_OP,
                                        dtypes.index(c.dtype), c.L, order[c.op]))


# ----------------------------------------------------------------------------- inputs

def _lengths(B: int, L: int, device, gen: torch.Generator) -> torch.Tensor:
    """Ragged lengths in [L/2, L], the first conversation full: the same for every provider."""
    lengths = torch.randint(max(1, L // 2), L + 1, (B,), generator=gen)
    lengths[0] = L
    return lengths.to(device)


def _randn(shape, case: Case, device, gen, grad: bool) -> torch.Tensor:
    t = torch.randn(shape, generator=gen).to(device=device, dtype=case.torch_dtype)
    return t.requires_grad_(grad)


def _op_inputs(case: Case, device, gen, grad: bool) -> tuple:
    """One set of positional inputs for ``case.op`` (tensors; lengths last)."""
    B, L, D, H, Dh = case.B, case.L, case.D, case.H, case.Dh
    lengths = _lengths(B, L, device, gen)
    if case.op == "ecce_bias":
        return _randn((B, L, H), case, device, gen, grad), lengths
    if case.op == "ecce_attention":
        qkv = [_randn((B, H, L, Dh), case, device, gen, grad) for _ in range(3)]
        return (*qkv, _randn((B, L, H), case, device, gen, grad), lengths)
    if case.op == "ecce_prefix":
        z = _randn((B, L, D), case, device, gen, grad)
        w = (torch.randn((D, H), generator=gen) / math.sqrt(D)).to(device=device, dtype=case.torch_dtype)
        return z, w.requires_grad_(grad), lengths
    if case.op == "routed_mixture":
        return (_randn((B, L, 4), case, device, gen, grad),
                *[_randn((B, L, D), case, device, gen, grad) for _ in range(3)], lengths)
    raise ValueError(f"no inputs for op {case.op!r}")


# ----------------------------------------------------------------------------- peers

def sdpa_float_mask(q, k, v, zp, lengths, dist: int, scale: float) -> torch.Tensor:
    """ECCE attention through SDPA: E from the reference, key padding folded into the float mask."""
    L = q.shape[2]
    valid = reference.valid_mask(lengths, L)
    E = reference.ecce_bias(zp, lengths, dist)
    mask = E.masked_fill(~valid[:, None, None, :], torch.finfo(E.dtype).min)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return torch.where(valid[:, None, :, None], out, torch.zeros((), dtype=out.dtype, device=out.device))


def flex_ecce_attention(q, k, v, zp, lengths, dist: int, scale: float) -> torch.Tensor:
    """ECCE attention through FlexAttention: the bias is the band mean read from prefix sums."""
    from torch.nn.attention.flex_attention import flex_attention

    L = q.shape[2]
    P = reference.band_prefix(zp, lengths).to(q.dtype)  # (B, L+1, H)

    def score_mod(score, b, h, q_idx, kv_idx):
        lo, hi = torch.minimum(q_idx, kv_idx), torch.maximum(q_idx, kv_idx)
        bias = (P[b, hi + 1, h] - P[b, lo, h]) / (hi - lo + 1)
        score = score + torch.where(hi - lo < dist, bias, torch.zeros_like(bias))
        return torch.where(kv_idx < lengths[b], score, -float("inf"))

    out = flex_attention(q, k, v, score_mod=score_mod, scale=scale)
    valid = reference.valid_mask(lengths, L)[:, None, :, None]
    return torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))


def torch_prefix(z, w, lengths) -> tuple[torch.Tensor, torch.Tensor]:
    """``(zp, P)`` as K1's ``ecce_prefix`` returns them, in plain PyTorch: ``zp = z @ w``
    (B, L, H) zeroed beyond ``lengths`` and its exclusive prefix sums ``P (B, L+1, H)``, float32."""
    zp = (z @ w).to(reference.accumulation_dtype(z.dtype))
    zp = torch.where(reference.valid_mask(lengths, z.shape[1])[..., None], zp, torch.zeros((), dtype=zp.dtype,
                                                                                         device=zp.device))
    return zp, F.pad(torch.cumsum(zp, dim=1), (0, 0, 1, 0))


@functools.cache
def _compiled(fn: Callable) -> Callable:
    """One compiled callable per function, reused across sizes (automatic dynamic shapes
    then compile a size-generic kernel after the first recompile instead of one per size)."""
    return torch.compile(fn)


def _prefix_kernel(device) -> Callable:
    """K1's prefix kernel ``ecce_prefix(z, w_fc, lengths) -> (zp, P)``, from the registry once it is
    registered there, else from ``iteach_fast.kernels.ecce``."""
    impl = backends.REGISTRY.get("ecce_prefix", {}).get("triton")
    if impl is not None:
        why = impl.unavailable_reason(device)
        if why:
            raise Skip(why)
        return impl.load()
    ok, why = backends._extension.triton_status()
    if not ok:
        raise Skip(why)
    try:
        from iteach_fast.kernels import ecce
    except ImportError as err:
        raise Skip(f"iteach_fast.kernels.ecce is not available ({err})") from None
    fn = getattr(ecce, "ecce_prefix", None)
    if fn is None:
        raise Skip("iteach_fast.kernels.ecce has no ecce_prefix yet")
    if len(inspect.signature(fn).parameters) < 3:
        raise Skip(f"ecce_prefix{inspect.signature(fn)} does not take (z, w_fc, lengths)")
    return fn


def _op_function(case: Case, device: torch.device) -> Callable:
    """``f(*inputs) -> tensor`` for ``case``'s op and provider, or :class:`Skip`."""
    op, provider = case.op, case.provider
    if provider == "triton" and device.type != "cuda":
        raise Skip("Triton runs on the CPU only through its interpreter, a correctness tool: not benchmarked")
    if op == "ecce_prefix":
        if provider == "torch":
            return torch_prefix
        if provider == "compiled-torch":
            return _compiled(torch_prefix)
        return _prefix_kernel(device)
    scale = 1.0 / math.sqrt(case.Dh)
    extra = {"ecce_bias": (DIST,), "ecce_attention": (DIST, scale), "routed_mixture": (POOL_SIZE,)}[op]
    if provider in backends.REGISTRY.get(op, {}):
        impl = backends.REGISTRY[op][provider]
        why = impl.unavailable_reason(device)
        if why:
            raise Skip(why)
        if case.torch_dtype not in impl.dtypes:
            raise Skip(f"{provider} supports {', '.join(str(d) for d in impl.dtypes)}, not {case.dtype}")
        public = getattr(ops, op)
        return lambda *inputs: public(*inputs, *extra, backend=provider)
    if provider == "compiled-reference":
        fn = _compiled(getattr(reference, op))
    elif provider == "sdpa-float-mask":
        fn = sdpa_float_mask
    elif provider == "flex-attention":
        if device.type != "cuda":
            raise Skip("FlexAttention has no backward on the CPU and its CPU forward is not a speed path: "
                       "benchmarked on CUDA only")
        fn = _compiled(flex_ecce_attention)
    else:
        raise ValueError(f"unknown provider {provider!r} for {op}")
    return lambda *inputs: fn(*inputs, *extra)


# ----------------------------------------------------------------------------- callables

@dataclass
class Prepared:
    fn: Callable[[], None]  # one measured call
    bytes_moved: int | None  # compulsory memory traffic of one call (a fused kernel's)
    flops: int | None  # arithmetic of one call
    note: str = ""


def prepare(case: Case, device: torch.device, copies: int = 3, seed: int = 0) -> Prepared:
    """Inputs for ``case`` (``copies`` sets, rotated) and the callable that measures it."""
    gen = torch.Generator().manual_seed(seed)
    if case.op == MODEL_OP:
        return _prepare_model(case, device, copies, gen)
    fn = _op_function(case, device)
    grad = case.mode == "fwd+bwd"
    sets = [_op_inputs(case, device, gen, grad) for _ in range(copies)]
    rotation = itertools.cycle(sets)
    if not grad:
        def call():
            with torch.no_grad():
                fn(*next(rotation))
    else:
        outputs = _as_tuple(fn(*sets[0]))  # also the first compile, if any
        grads_out = [[torch.randn(o.shape, generator=gen).to(device=device, dtype=o.dtype) for o in outputs]
                     for _ in range(copies)]
        rotation = itertools.cycle(zip(sets, grads_out))

        def call():
            inputs, grad_out = next(rotation)
            for t in inputs:
                t.grad = None
            torch.autograd.backward(_as_tuple(fn(*inputs)), grad_out)
    return Prepared(call, bytes_moved(case), flops(case))


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _prepare_model(case: Case, device: torch.device, copies: int, gen: torch.Generator) -> Prepared:
    try:
        from iteach_fast.model import ITEACHNet
    except Exception as err:  # noqa: BLE001 - the model is a peer's work in progress
        raise Skip(f"iteach_fast.model.ITEACHNet does not import ({type(err).__name__}: {err})") from None
    torch.manual_seed(0)
    net = ITEACHNet(input_dims=MODEL_INPUT_DIMS, num_classes=MODEL_CLASSES, framework="its", dim=case.D,
                    heads=case.H, max_len=case.L, backend=case.provider).to(device=device, dtype=case.torch_dtype)
    B, L = case.B, case.L
    batches = []
    for _ in range(copies):
        complete = [torch.randn((B, L, d), generator=gen).to(device, case.torch_dtype) for d in MODEL_INPUT_DIMS]
        present = torch.rand((B, L, 3), generator=gen) > 0.3
        present[..., 0] |= ~present.any(-1)  # every utterance keeps at least one modality
        present = present.to(device)
        incomplete = [x * present[..., m:m + 1] for m, x in enumerate(complete)]
        labels = torch.randint(0, MODEL_CLASSES, (B, L), generator=gen).to(device)
        batches.append((complete, incomplete, _lengths(B, L, device, gen), present, labels))
    rotation = itertools.cycle(batches)
    if case.mode == "inference":
        net.eval()

        def call():
            _, incomplete, lengths, present, _ = next(rotation)
            net.predict(incomplete, lengths, present)
    else:
        net.train()
        optimizer = torch.optim.AdamW(net.parameter_groups(lr=5e-4, router_lr=5e-3))

        def call():
            complete, incomplete, lengths, present, labels = next(rotation)
            optimizer.zero_grad(set_to_none=True)
            teacher_out, student_out = net(complete, incomplete, lengths, present)
            net.loss(teacher_out, student_out, labels, lengths, present)["total"].backward()
            optimizer.step()
    n_params = sum(p.numel() for p in net.parameters())
    return Prepared(call, None, None, note=f"{n_params / 1e6:.2f} M parameters")


# ----------------------------------------------------------------------------- work per call

def bytes_moved(case: Case) -> int | None:
    """The compulsory memory traffic of one call: each input read once, each output written
    once (what a fused kernel needs; a materialising implementation moves more)."""
    e = case.torch_dtype.itemsize
    B, L, D, H, Dh = case.B, case.L, case.D, case.H, case.Dh
    bwd = case.mode == "fwd+bwd"
    if case.op == "ecce_bias":  # read zp, write E; backward: read dE, write dzp
        return e * (B * L * H + B * H * L * L) * (2 if bwd else 1)
    if case.op == "ecce_attention":
        fwd = e * (4 * B * H * L * Dh + B * L * H)  # read q, k, v, zp; write out
        # backward: read q, k, v, out, dout, zp and the row statistics; write dq, dk, dv, dzp
        back = e * (8 * B * H * L * Dh + 2 * B * L * H) + 4 * B * H * L
        return fwd + (back if bwd else 0)
    if case.op == "ecce_prefix":
        fwd = e * (B * L * D + D * H) + 4 * (B * L * H + B * (L + 1) * H)  # read z, W; write zp, P (float32)
        back = 4 * (B * L * H + B * (L + 1) * H) + e * (2 * B * L * D + 2 * D * H)  # read dzp, dP, z, W; write dz, dW
        return fwd + (back if bwd else 0)
    if case.op == "routed_mixture":
        fwd = e * (4 * B * L * D + 4 * B * L)  # read logits, x, y_attn, y_mlp; write out
        back = e * (7 * B * L * D + 8 * B * L)  # read dout, x, y_attn, y_mlp, logits; write 3 grads + dlogits
        return fwd + (back if bwd else 0)
    return None


def flops(case: Case) -> int | None:
    """Floating-point operations of one call (multiply-add = 2; backward of attention = 2.5x
    forward, the FlashAttention convention)."""
    B, L, D, H, Dh = case.B, case.L, case.D, case.H, case.Dh
    bwd = case.mode == "fwd+bwd"
    if case.op == "ecce_bias":
        return 2 * B * H * L * L * (3 if bwd else 1)
    if case.op == "ecce_attention":
        fwd = 4 * B * H * L * L * Dh
        return int(fwd * (3.5 if bwd else 1))
    if case.op == "ecce_prefix":
        return (2 * B * L * D * H + B * L * H) * (3 if bwd else 1)
    if case.op == "routed_mixture":
        return 16 * B * L * D * (3 if bwd else 1)
    return None
