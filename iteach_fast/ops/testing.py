"""What the tests and the benchmarks share: inputs for every registered op, how to call it,
which outputs are defined, and the tolerance an implementation is held to.

    case = make_inputs("ecce_attention", B=3, L=17, lengths=[17, 5, 0], dtype=torch.float16)
    out = case.call("triton")                      # any registered backend, or "auto"
    ref = case.cast(torch.float64).call("reference")
    assert_close(out, ref, op=case.op, backend="triton", dtype=torch.float16)

Padding (positions ``>= lengths``) is filled with garbage by default — large values, or
NaN with ``garbage="nan"`` — so a test that compares valid outputs also proves that the
padding is never read. Inputs are random (never zeros) from the given generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from .. import ops
from . import backends
from .padding import valid_mask

__all__ = ["OP_SPECS", "OpCase", "make_inputs", "tolerance", "assert_close", "output_masks"]


@dataclass(frozen=True)
class OpSpec:
    """How to build one op's inputs: each tensor's shape (symbols B, L, H, Dh, D, 4) and the
    dimension that runs over utterances (None: no sequence dimension)."""
    tensors: dict  # name -> (shape symbols, sequence dim or None)
    params: tuple = ()  # the keyword arguments taken from make_inputs' sizes


OP_SPECS = {
    "ecce_prefix": OpSpec({"z": (("B", "L", "D"), 1), "w_fc": (("D", "H"), None)}, ("dist",)),
    "ecce_bias": OpSpec({"zp": (("B", "L", "H"), 1)}, ("dist", "causal")),
    "ecce_attention": OpSpec({"q": (("B", "H", "L", "Dh"), 2), "k": (("B", "H", "L", "Dh"), 2),
                              "v": (("B", "H", "L", "Dh"), 2), "zp": (("B", "L", "H"), 1)}, ("dist", "causal")),
    "routed_mixture": OpSpec({"logits": (("B", "L", 4), 1), "x": (("B", "L", "D"), 1),
                              "y_attn": (("B", "L", "D"), 1), "y_mlp": (("B", "L", "D"), 1)},
                             ("pool_size", "causal")),
}
assert set(OP_SPECS) == set(backends.OPS), "every registered op needs its input spec here"


@dataclass
class OpCase:
    """One call of ``op``: its tensor inputs (in positional order), ``lengths`` and parameters."""
    op: str
    tensors: dict
    lengths: torch.Tensor
    params: dict = field(default_factory=dict)

    def call(self, backend: str = "auto", **params):
        """The public op (validation and dispatch) on these inputs."""
        return getattr(ops, self.op)(*self.tensors.values(), lengths=self.lengths, backend=backend,
                                     **{**self.params, **params})

    def cast(self, dtype: torch.dtype, device=None, requires_grad: bool | None = None) -> OpCase:
        """The same values as new leaves of ``dtype`` (gradients kept if the originals had them)."""
        def leaf(t):
            grad = t.requires_grad if requires_grad is None else requires_grad
            return t.detach().to(dtype=dtype, device=device or t.device).requires_grad_(grad)
        return replace(self, tensors={k: leaf(t) for k, t in self.tensors.items()},
                       lengths=self.lengths.to(device or self.lengths.device))

    def grads(self) -> dict:
        return {k: t.grad for k, t in self.tensors.items() if t.requires_grad}


def make_inputs(op: str, *, B: int = 3, L: int = 13, H: int = 2, Dh: int = 8, D: int = 16, lengths=None,
                dtype: torch.dtype = torch.float32, device="cpu", garbage: str | None = "large",
                requires_grad: bool = False, generator: torch.Generator | None = None, dist: int = 5,
                pool_size: int = 3, causal: bool = False) -> OpCase:
    """Random inputs for ``op``. ``lengths``: a list or tensor, or None for ragged lengths in
    ``[1, L]`` with the first conversation full. ``garbage``: what fills the padding —
    ``"large"`` (±1e4-scale values), ``"nan"``, or None (zeros: what a collated batch holds).
    ``dist``, ``pool_size`` and ``causal`` go to the ops that take them."""
    spec = OP_SPECS[op]
    sizes = {"B": B, "L": L, "H": H, "Dh": Dh, "D": D}
    if lengths is None:
        lengths = torch.randint(min(1, L), L + 1, (B,), generator=generator)
        if B:
            lengths[0] = L
    lengths = torch.as_tensor(lengths, dtype=torch.int64).to(device)
    valid = valid_mask(lengths, L)
    tensors = {}
    for name, (symbols, seq_dim) in spec.tensors.items():
        shape = [sizes[s] if isinstance(s, str) else s for s in symbols]
        t = torch.randn(shape, generator=generator)
        if name == "w_fc":
            t = t / math.sqrt(D)  # keeps zp at the scale of z
        t = t.to(device)
        if seq_dim is not None:
            view = [B] + [1] * (len(shape) - 1)
            view[seq_dim] = L
            pad = ~valid.view(view)
            if garbage == "large":
                t = torch.where(pad, 1e4 * torch.randn(shape, generator=generator).to(device), t)
            elif garbage == "nan":
                t = torch.where(pad, torch.full_like(t, float("nan")), t)
            elif garbage is None:
                t = torch.where(pad, torch.zeros_like(t), t)
            else:
                raise ValueError(f"garbage must be 'large', 'nan' or None, got {garbage!r}")
        tensors[name] = t.to(dtype).requires_grad_(requires_grad)
    params = {p: {"dist": dist, "pool_size": pool_size, "causal": causal}[p] for p in spec.params}
    return OpCase(op, tensors, lengths, params)


def output_masks(case: OpCase, outputs) -> tuple:
    """For each output of ``case.op``, a bool mask of the entries it defines from valid inputs
    (the rest must be exactly 0), or None where every entry is defined."""
    _B, L = case.lengths.shape[0], _length(case)
    valid = valid_mask(case.lengths, L)
    if case.op == "ecce_prefix":  # zp: rows; the table: every entry (S runs on past the last valid row)
        return valid[..., None].expand_as(outputs[0]), None
    if case.op == "ecce_bias":
        pairs = valid[:, None, :, None] & valid[:, None, None, :]
        if case.params.get("causal"):
            idx = torch.arange(L, device=valid.device)
            pairs = pairs & (idx[None, :] <= idx[:, None])
        return (pairs.expand_as(outputs[0]),)
    if case.op == "ecce_attention":
        return (valid[:, None, :, None].expand_as(outputs[0]),)
    return (valid[..., None].expand_as(outputs[0]),)


def _length(case: OpCase) -> int:
    name, (symbols, seq_dim) = next((n, s) for n, s in OP_SPECS[case.op].tensors.items() if s[1] is not None)
    return case.tensors[name].shape[seq_dim]


def tolerance(op: str, backend: str, dtype: torch.dtype) -> tuple[float, float]:
    """``(atol, rtol)`` the registry holds ``backend``'s ``op`` to at ``dtype`` (vs the float64 reference)."""
    return backends.REGISTRY[op][backend].tolerances[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, op: str, backend: str, dtype: torch.dtype,
                 what: str = "output") -> None:
    """``actual`` within the registry's tolerance of ``expected`` (compared in float64). The
    absolute part scales with ``max|expected|`` (at least 1), so one tolerance fits outputs and
    gradients of any magnitude."""
    atol, rtol = tolerance(op, backend, dtype)
    expected = expected.detach().double().cpu()
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual.detach().double().cpu(), expected, atol=atol * scale, rtol=rtol,
                               msg=lambda m: f"{op} [{backend}, {dtype}] {what}: {m}")
