"""Drop-in ``nn.Module``s of ITEACH-Net (paper §3.3-3.4, Appendix C; docs/maths.md).

Every module takes ``lengths`` (int ``(B,)``, or None for "all valid") and keeps the
package-wide contract: outputs at invalid positions (``i >= lengths[b]``) are exactly 0,
invalid positions never influence valid ones, and a length-0 conversation gives zeros,
never NaN. Each module holds a ``backend`` attribute (``"auto"`` by default) that it passes
to the fused operators; :func:`set_backend` changes it for a whole model.

**Validate once, then trust.** Called on its own, a module validates its inputs. Inside the
model, the lengths are checked once at the boundary (:func:`padded`, without a host-device
synchronisation) and handed down as a :class:`Padded` — the lengths with their valid mask —
which every module trusts; the modules then call the unchecked operators of
:mod:`iteach_fast.ops.backends`. Nothing in a forward or backward reads a value back to the host.

**Causal mode** (``causal=True``, real-time ERC): every output ``i`` depends on positions
``<= i`` only — ECCE's conv padded on the left, causal attention and ECCE band, pools over
``[i - p + 1, i]``, and the MLP token mixer's weights masked lower-triangular in the forward
(docs/maths.md, "Causal mode"). :mod:`iteach_fast.nn.streaming` runs such a model one utterance
at a time.

Modules, bottom up:

- :class:`ECCE` — local context (eq. 5), its per-head projection ``zp`` and the band-mean
  table from which the fused attention builds the global bias ``E`` (eq. 6, Algorithm 1);
  :meth:`ECCE.bias` materialises ``E`` for inspection.
- Token mixers (Appendix C): :class:`ECCEAttention` (eq. 10-11, C.1-C.2),
  :class:`MLPTokenMixer` (C.3), :class:`AvgPoolTokenMixer` (C.4),
  :class:`MaxPoolTokenMixer` (C.5), and the router-weighted :class:`RoutedTokenMixer`
  (eq. 8-9).
- :class:`ITEACHEncoder` — the MetaFormer block, "tf" or "nas" (§3.4.2).
- :class:`CrossAttention` (eq. 7) and :class:`EncoderLayer` (§3.4.1).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..checks import check_heads, check_int, check_odd
from ..choices import ECCE_MODES, MIXERS, check_choice
from ..ops import backends
from ..ops.padding import masked_avg_pool, masked_max_pool, valid_mask, zero_invalid

__all__ = [
    "Padded", "padded", "ECCE", "ECCEAttention", "MLPTokenMixer", "AvgPoolTokenMixer",
    "MaxPoolTokenMixer", "RoutedTokenMixer", "ITEACHEncoder", "CrossAttention", "EncoderLayer", "Recurrence",
    "set_backend",
]


# ----------------------------------------------------------------------------- validation, once

class Padded(NamedTuple):
    """A padded batch's validated ``lengths`` (int64 ``(B,)`` on the inputs' device, values in
    ``[0, L]``) and its ``valid`` mask ``(B, L, 1)`` bool. A module that receives one as its
    ``lengths`` trusts it: build it with :func:`padded`."""
    lengths: torch.Tensor
    valid: torch.Tensor


def padded(lengths, B: int, L: int, device: torch.device) -> Padded:
    """``lengths`` checked without a host synchronisation (:func:`iteach_fast.ops.check_lengths`
    with ``sync=False``) with its valid mask; a :class:`Padded` is returned as it is (validated
    once, trusted after)."""
    if isinstance(lengths, Padded):
        return lengths
    lengths = ops.check_lengths(lengths, B, L, device, sync=False)
    return Padded(lengths, valid_mask(lengths, L)[..., None])


def _check_x(name: str, x, dim: int) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (B, L, {dim}), got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (B, L, {dim}), got {tuple(x.shape)}")


def _check_prefix(prefix, x: torch.Tensor, heads: int) -> None:
    """A band-mean table for ``x (B, L, D)``, or None; checked where a module runs on its own."""
    if prefix is None:
        return
    B, L, _ = x.shape
    if not isinstance(prefix, torch.Tensor) or tuple(prefix.shape) != (B, heads, 3, L):
        raise ValueError(f"prefix must be the (B, H, 3, L) = ({B}, {heads}, 3, {L}) table ECCE returns (or None), "
                         f"got {getattr(prefix, 'shape', type(prefix).__name__)}")


def _standalone(x: torch.Tensor, lengths, dim: int, name: str = "x") -> Padded:
    """The :class:`Padded` of a module call: trusted if given one, else ``x`` and ``lengths`` checked."""
    if isinstance(lengths, Padded):
        return lengths
    _check_x(name, x, dim)
    return padded(lengths, x.shape[0], x.shape[1], x.device)


def set_backend(module: nn.Module, backend: str) -> nn.Module:
    """Set ``backend`` (``"auto"``, ``"reference"``, ``"triton"``, ``"cpp"``) on every submodule
    that calls a fused operator. Returns ``module``."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    for m in module.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    return module


# ----------------------------------------------------------------------------- ECCE

class ECCE(nn.Module):
    """Emotion Context Changing Encoder (paper §3.3, eq. 5-6, Algorithm 1; docs/maths.md).

    Local (eq. 5): ``Z = Conv1d(D, D, kernel_size)`` along the utterance axis, centred
    (``causal``: padded on the left only, so ``Z[t]`` sees ``t - kernel_size + 1 .. t``),
    invalid positions zeroed before it (padding never leaks in).
    Global (eq. 6): ``E[b,h,i,j] = mean_{k=min(i,j)..max(i,j)} Z[b,k] @ W_fc[:,h]`` on the
    band ``|i-j| < dist`` (``causal``: ``i - dist < j <= i``). The projection is linear, so
    ``forward`` returns the band-mean table of ``zp = Z @ W_fc`` (``ops.ecce_prefix``), from
    which the fused attention builds ``E`` without materialising ``L x L``; one table per
    modality and forward serves every attention of that modality. ``W_fc`` has no bias:
    Algorithm 1's bias lands on every entry of a softmax row and cannot change the attention.

    ``mode``: ``"local+global"`` (the paper), ``"global"`` (no conv, ``Z = X``), ``"off"``
    (no bias: plain attention; ``forward`` returns None).
    """

    def __init__(self, dim: int, heads: int, kernel_size: int = 7, dist: int = 30,
                 mode: str = "local+global", backend: str = "auto", causal: bool = False):
        super().__init__()
        check_choice("mode", mode, ECCE_MODES)
        check_odd("kernel_size", kernel_size)
        check_int("dist", dist, 1)
        self.dim, self.heads, self.dist, self.mode, self.backend = dim, heads, dist, mode, backend
        self.kernel_size, self.causal = kernel_size, bool(causal)
        # causal: pad k - 1 on both sides and keep the first L outputs (output t sees t-k+1..t)
        pad = kernel_size - 1 if causal else kernel_size // 2
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=pad) if mode == "local+global" else None
        self.fc = nn.Linear(dim, heads, bias=False) if mode != "off" else None

    def local(self, x: torch.Tensor, pad: Padded) -> torch.Tensor:
        """``Z (B, L, D)``, the local context (eq. 5); unspecified at invalid positions."""
        z = zero_invalid(x, pad.valid)
        if self.conv is None or x.shape[1] == 0:  # no utterance at all: nothing to convolve (Conv1d rejects it)
            return z
        return self.conv(z.transpose(1, 2))[..., :x.shape[1]].transpose(1, 2)

    def tables(self, x: torch.Tensor, lengths=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(zp (B, L, H), prefix (B, H, 3, L) or None)``: the projected local context (0 at
        invalid positions) and its band-mean table (None when ``mode="off"``)."""
        pad = _standalone(x, lengths, self.dim)
        B, L, _ = x.shape
        if self.fc is None:
            return x.new_zeros(B, L, self.heads), None
        z = self.local(x, pad)
        # the projection in z's dtype, as nn.Linear would under autocast
        return backends.call("ecce_prefix", self.backend, z, self.fc.weight.T.to(z.dtype), pad.lengths, self.dist)

    def forward(self, x: torch.Tensor, lengths=None) -> torch.Tensor | None:
        """``x (B, L, D)`` -> the band-mean table ``(B, H, 3, L)`` for :class:`ECCEAttention`
        (with the same lengths), or None when ECCE is off."""
        return self.tables(x, lengths)[1]

    def project(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        """``zp (B, L, H)``, the per-head local context (0 at invalid positions)."""
        return self.tables(x, lengths)[0]

    def bias(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        """The materialised global bias ``E (B, H, L, L)`` (for heatmaps, paper Fig. 5)."""
        pad = _standalone(x, lengths, self.dim)
        return ops.ecce_bias(self.project(x, pad), pad.lengths, self.dist, self.causal, backend=self.backend)


# ----------------------------------------------------------------------------- recurrence (an option)

def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each conversation's valid utterances in reverse order, padding left in place (its own
    inverse); a gather with device-side indices, no host synchronisation."""
    L = x.shape[1]
    i = torch.arange(L, device=x.device)
    n = lengths[:, None]
    index = torch.where(i < n, n - 1 - i, i)
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


class Recurrence(nn.Module):
    """Not the paper's (``ModelConfig.recurrent``): ``x + GRU(x)`` over one stream's utterances,
    bc-LSTM's context carrier inside the model. Bidirectional as two GRUs of ``dim / 2`` (the
    backward one reads each conversation reversed within its length, so padding never reaches a
    valid utterance); ``causal``: one forward GRU of ``dim`` (a forward GRU's output ``i`` sees
    ``<= i``; padding comes after every valid utterance)."""

    def __init__(self, dim: int, causal: bool = False):
        super().__init__()
        self.dim, self.causal = dim, bool(causal)
        if not causal and dim % 2:
            raise ValueError(f"recurrent needs an even dim when not causal (two GRUs of dim / 2), got dim={dim}")
        hidden = dim if causal else dim // 2
        self.forward_gru = nn.GRU(dim, hidden, batch_first=True)
        self.backward_gru = None if causal else nn.GRU(dim, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        """``x (B, L, dim)`` -> ``x + GRU(x)`` ``(B, L, dim)``, 0 at invalid positions."""
        pad = _standalone(x, lengths, self.dim)
        if x.shape[1] == 0:  # no utterance at all (nn.GRU rejects an empty sequence)
            return x
        # padding need not be zeroed first: it comes after every valid utterance in both reading
        # orders, so no GRU carries it into a valid output; the sum is zeroed there instead
        h = self.forward_gru(x)[0]
        if self.backward_gru is not None:
            back = reverse_within(self.backward_gru(reverse_within(x, pad.lengths))[0], pad.lengths)
            h = torch.cat([h, back], -1)
        return zero_invalid(x + h, pad.valid)


# ----------------------------------------------------------------------------- token mixers

def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, L, D)`` -> a ``(B, H, L, Dh)`` view (no copy)."""
    B, L, D = t.shape
    return t.view(B, L, heads, D // heads).transpose(1, 2)


class ECCEAttention(nn.Module):
    """ECCE-guided multi-head self-attention, the MixMap (eq. 10-11, C.1-C.2):
    ``S = (X W_q)(X W_k)^T / sqrt(Dh) + E``, ``out = softmax(S)(X W_v)``, then ``W_o``.

    The teacher's "TF" mixer and the student's AttentionMixer. ``E`` arrives as ECCE's
    band-mean table ``prefix`` (None: no bias) and is expanded inside the fused attention,
    which reads the projections' ``(B, L, H, Dh)`` views in place (no copies). ``causal``:
    query ``i`` sees keys ``j <= i``. ``dropout`` acts on the output (the fused kernel has no
    attention-probability dropout).
    """

    def __init__(self, dim: int, heads: int, dist: int = 30, dropout: float = 0.0, backend: str = "auto",
                 causal: bool = False):
        super().__init__()
        check_heads(dim, heads)
        self.dim, self.heads, self.dist, self.backend, self.causal = dim, heads, dist, backend, bool(causal)
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)  # W_o
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, prefix: torch.Tensor | None = None, lengths=None) -> torch.Tensor:
        """``x (B, L, D)``, ``prefix`` ECCE's table for the same lengths (None: no ECCE bias) -> ``(B, L, D)``."""
        if not isinstance(lengths, Padded):
            _check_prefix(prefix, x, self.heads)
        pad = _standalone(x, lengths, self.dim)
        B, L, D = x.shape
        x = zero_invalid(x, pad.valid)  # padding never reaches a projection's weight gradient
        q, k, v = (_heads(proj(x), self.heads) for proj in (self.q, self.k, self.v))
        o = backends.call("ecce_attention", self.backend, q, k, v, prefix, pad.lengths, self.dist, self.scale,
                          self.causal)
        o = self.out(o.transpose(1, 2).reshape(B, L, D))  # a view when o has q's layout
        return zero_invalid(self.dropout(o), pad.valid)  # W_o's bias would otherwise land on the padding


class MLPTokenMixer(nn.Module):
    """MLP over the token axis (Appendix C, eq. C.3): ``MLP(X^T)^T`` with
    ``Linear(L_max -> L_max*ratio) . GELU . Linear(-> L_max)``.

    Inputs shorter than ``max_len`` act as zero-padded to it (the weights' first ``L``
    columns / rows are used); invalid tokens are 0 on input and on output.

    ``causal``: hidden unit ``k`` belongs to position ``floor(k / ratio)``; it reads tokens up
    to its position, and output ``i`` reads hidden units of positions ``<= i`` — both weight
    matrices are masked (lower-triangular) in every forward, so training cannot break it.
    """

    def __init__(self, max_len: int, ratio: float = 1.0, dropout: float = 0.0, causal: bool = False):
        super().__init__()
        check_int("max_len", max_len, 1)
        hidden = max(1, int(round(max_len * ratio)))
        self.max_len, self.ratio, self.causal = max_len, ratio, bool(causal)
        self.fc1 = nn.Linear(max_len, hidden)
        self.fc2 = nn.Linear(hidden, max_len)
        self.dropout = nn.Dropout(dropout)
        if causal:
            owner = (torch.arange(hidden, dtype=torch.float64) / ratio).floor().clamp_max(max_len - 1).long()
            position = torch.arange(max_len)
            #: the position each hidden unit belongs to, and the two lower-triangular masks
            self.register_buffer("owner", owner, persistent=False)
            self.register_buffer("mask1", position[None, :] <= owner[:, None], persistent=False)  # (hidden, L)
            self.register_buffer("mask2", owner[None, :] <= position[:, None], persistent=False)  # (L, hidden)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W1 (hidden, max_len), W2 (max_len, hidden))``, masked when ``causal``."""
        if not self.causal:
            return self.fc1.weight, self.fc2.weight
        zero = torch.zeros((), dtype=self.fc1.weight.dtype, device=self.fc1.weight.device)
        return torch.where(self.mask1, self.fc1.weight, zero), torch.where(self.mask2, self.fc2.weight, zero)

    def forward(self, x: torch.Tensor, prefix: torch.Tensor | None = None, lengths=None) -> torch.Tensor:
        """``x (B, L, D)`` with ``L <= max_len`` -> ``(B, L, D)``; ``prefix`` is ignored."""
        B, L, D = x.shape
        if L > self.max_len:
            raise ValueError(f"MLPTokenMixer was built for max_len={self.max_len} utterances, got a padded "
                             f"length L={L}; build the model with max_len >= {L}")
        pad = _standalone(x, lengths, D)
        w1, w2 = self.weights()
        xt = zero_invalid(x, pad.valid).transpose(1, 2)  # (B, D, L)
        h = self.dropout(F.gelu(F.linear(xt, w1[:, :L], self.fc1.bias)))
        y = F.linear(h, w2[:L], self.fc2.bias[:L]).transpose(1, 2)
        return zero_invalid(self.dropout(y), pad.valid)


class _PoolTokenMixer(nn.Module):
    """A masked pool over ``[i - p//2, i + p//2] ∩ valid`` (``causal``: ``[i - p + 1, i] ∩ valid``),
    0 at invalid rows; the same pooling code as the reference ``routed_mixture``."""
    pool = None  # the masked pool of :mod:`iteach_fast.ops.padding`

    def __init__(self, pool_size: int = 3, causal: bool = False):
        super().__init__()
        check_odd("pool_size", pool_size)
        self.pool_size, self.causal = pool_size, bool(causal)

    def forward(self, x: torch.Tensor, prefix: torch.Tensor | None = None, lengths=None) -> torch.Tensor:
        pad = _standalone(x, lengths, x.shape[-1])
        # the max pool is -inf at invalid rows: zeroed here
        return zero_invalid(type(self).pool(x, pad.valid, self.pool_size, self.causal), pad.valid)


class AvgPoolTokenMixer(_PoolTokenMixer):
    """Masked average pool (Appendix C, eq. C.4)."""
    pool = staticmethod(masked_avg_pool)


class MaxPoolTokenMixer(_PoolTokenMixer):
    """Masked max pool (Appendix C, eq. C.5)."""
    pool = staticmethod(masked_max_pool)


class RoutedTokenMixer(nn.Module):
    """The NAS token mixer (eq. 8-9): ``w = softmax(router(X))`` per token,
    ``out[i] = Σ_o w[i,o] · o(X)[i]`` over (attention, mlp, avgpool, maxpool).

    The attention and MLP mixers run here; the two pools and the mixture are fused in
    ``routed_mixture``. The router's parameters live under ``router.`` so that
    :meth:`ITEACHNet.parameter_groups` can give them their own learning rate.
    """

    def __init__(self, dim: int, heads: int, max_len: int = 110, dist: int = 30, pool_size: int = 3,
                 mlp_ratio: float = 1.0, dropout: float = 0.0, backend: str = "auto", causal: bool = False):
        super().__init__()
        check_odd("pool_size", pool_size)
        self.dim, self.pool_size, self.backend, self.causal = dim, pool_size, backend, bool(causal)
        self.router = nn.Linear(dim, 4)
        self.attention = ECCEAttention(dim, heads, dist, dropout, backend, causal)
        self.mlp = MLPTokenMixer(max_len, mlp_ratio, dropout, causal)

    def forward(self, x: torch.Tensor, prefix: torch.Tensor | None = None, lengths=None) -> torch.Tensor:
        if not isinstance(lengths, Padded):
            _check_prefix(prefix, x, self.attention.heads)
        pad = _standalone(x, lengths, self.dim)
        x = zero_invalid(x, pad.valid)
        logits, y_attn, y_mlp = self.router(x), self.attention(x, prefix, pad), self.mlp(x, None, pad)
        # one dtype for the fused op: under autocast the Linear outputs may be half while x is float32
        dt = y_attn.dtype
        return backends.call("routed_mixture", self.backend, logits.to(dt), x.to(dt), y_attn, y_mlp.to(dt), pad.lengths,
                             self.pool_size, self.causal)

    def routing_weights(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        """The per-token mixer weights ``softmax(router(X)) (B, L, 4)`` (0 at invalid rows), for analysis."""
        pad = _standalone(x, lengths, self.dim)
        return zero_invalid(torch.softmax(self.router(zero_invalid(x, pad.valid)), dim=-1), pad.valid)


# ----------------------------------------------------------------------------- blocks

class ITEACHEncoder(nn.Module):
    """The ITEACH Encoder, a MetaFormer block (§3.4.2):
    ``x = x + Mixer(LN(x), E)``; ``x = x + FFN(LN(x))`` with a GELU FFN of ratio ``ffn_ratio``.

    ``mixer="tf"``: the ECCE-guided attention alone (Router = Identity); ``"nas"``: the
    routed mixture of the four token mixers. Padding stays exactly 0.
    """

    def __init__(self, dim: int, heads: int, mixer: str = "tf", ffn_ratio: float = 4.0, max_len: int = 110,
                 dist: int = 30, pool_size: int = 3, mlp_ratio: float = 1.0, dropout: float = 0.0,
                 backend: str = "auto", causal: bool = False):
        super().__init__()
        check_choice("mixer", mixer, MIXERS)
        self.dim, self.heads, self.mixer_kind, self.causal = dim, heads, mixer, bool(causal)
        self.norm1 = nn.LayerNorm(dim)
        if mixer == "tf":
            self.mixer = ECCEAttention(dim, heads, dist, dropout, backend, causal)
        else:
            self.mixer = RoutedTokenMixer(dim, heads, max_len, dist, pool_size, mlp_ratio, dropout, backend, causal)
        self.norm2 = nn.LayerNorm(dim)
        hidden = max(1, int(round(dim * ffn_ratio)))
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, prefix: torch.Tensor | None = None, lengths=None) -> torch.Tensor:
        """``x (B, L, D)``, ``prefix`` ECCE's table (or None) -> ``(B, L, D)``."""
        if not isinstance(lengths, Padded):
            _check_prefix(prefix, x, self.heads)
        pad = _standalone(x, lengths, self.dim)
        x = zero_invalid(x, pad.valid)
        x = x + self.mixer(self.norm1(x), prefix, pad)  # the mixer zeroes its own padding
        return zero_invalid(x + self.ffn(self.norm2(x)), pad.valid)  # LN's beta and the FFN biases would not


class CrossAttention(nn.Module):
    """Multi-head cross-attention (eq. 7): ``softmax(q k^T / sqrt(C)) v`` with pre-LayerNorms
    on the query stream and on the key/value stream; keys beyond ``lengths`` masked
    (``causal``: and keys after the query).

    ``prefix`` (an option; the paper's cross-attention has none): the query stream's ECCE
    table, whose band means ``E`` then guide the scores as in the MixMap (eq. 10). Without
    it nothing in the scores says where an utterance is, so the text stream of utterance
    ``i`` cannot single out the audio or visual features of the same utterance;
    with it the band ``|i - j| < dist`` can (docs/maths.md, "ECCE-guided cross-attention").

    The same fused attention as :class:`ECCEAttention`, without a bias: the padding is masked
    by the lengths inside the kernel (no ``L x L`` mask is built) and a length-0 conversation
    gives 0, not NaN. Returns the attention output only (the caller adds the residual); rows
    beyond ``lengths`` are 0. ``dropout`` acts on the output, as in :class:`ECCEAttention`.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, causal: bool = False, backend: str = "auto",
                 dist: int = 30):
        super().__init__()
        check_heads(dim, heads)
        self.dim, self.heads, self.causal, self.backend, self.dist = dim, heads, bool(causal), backend, dist
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, kv: torch.Tensor, lengths=None, prefix: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``query (B, L, D)`` (the text stream), ``kv (B, L, D)`` (audio or visual), ``prefix``
        the query stream's ECCE table (or None: no bias, the paper's) -> ``(B, L, D)``."""
        if not isinstance(lengths, Padded):
            _check_x("kv", kv, self.dim)
            if kv.shape != query.shape:
                raise ValueError(f"kv must have the query's shape {tuple(query.shape)}, got {tuple(kv.shape)}")
            _check_prefix(prefix, query, self.heads)
        pad = _standalone(query, lengths, self.dim, "query")
        B, L, D = query.shape
        # the padding zeroed first: a NaN there would reach the projections' weight gradients (0 * NaN)
        q_in, kv_in = self.norm_q(zero_invalid(query, pad.valid)), self.norm_kv(zero_invalid(kv, pad.valid))
        q, k, v = _heads(self.q(q_in), self.heads), _heads(self.k(kv_in), self.heads), _heads(self.v(kv_in), self.heads)
        o = backends.call("ecce_attention", self.backend, q, k, v, prefix, pad.lengths, self.dist, self.scale,
                          self.causal)
        o = self.out(o.transpose(1, 2).reshape(B, L, D))  # a view when o has q's layout
        return zero_invalid(self.dropout(o), pad.valid)


class EncoderLayer(nn.Module):
    """One Encoder Layer (§3.4.1, Fig. 2): each modality through its own ITEACH Encoder,
    guided by its own ECCE table; then the text stream fuses audio and visual in turn:
    ``T <- T + CA(q=T, kv=A)``, ``T <- T + CA(q=T, kv=V)``. The fused ``T`` is this layer's
    hidden feature ``H`` and the next layer's text input. ``cross_ecce`` (an option, not the
    paper's): the text stream's ECCE table guides both cross-attentions too.
    """

    def __init__(self, dim: int, heads: int, mixer: str = "tf", ffn_ratio: float = 4.0, max_len: int = 110,
                 dist: int = 30, pool_size: int = 3, mlp_ratio: float = 1.0, dropout: float = 0.0,
                 backend: str = "auto", causal: bool = False, cross_ecce: bool = False):
        super().__init__()
        kw = dict(mixer=mixer, ffn_ratio=ffn_ratio, max_len=max_len, dist=dist, pool_size=pool_size,
                  mlp_ratio=mlp_ratio, dropout=dropout, backend=backend, causal=causal)
        self.dim, self.heads, self.causal, self.cross_ecce = dim, heads, bool(causal), bool(cross_ecce)
        self.enc_t = ITEACHEncoder(dim, heads, **kw)
        self.enc_a = ITEACHEncoder(dim, heads, **kw)
        self.enc_v = ITEACHEncoder(dim, heads, **kw)
        self.ca_a = CrossAttention(dim, heads, dropout, causal, backend, dist)
        self.ca_v = CrossAttention(dim, heads, dropout, causal, backend, dist)

    def forward(self, t, a, v, prefix=(None, None, None), lengths=None):
        """``t, a, v (B, L, D)``, ``prefix = (prefix_t, prefix_a, prefix_v)`` ECCE's tables -> ``(t, a, v)``."""
        if not isinstance(lengths, Padded):
            for name, s in (("a", a), ("v", v)):
                _check_x(name, s, self.dim)
                if s.shape != t.shape:
                    raise ValueError(f"{name} must have t's shape {tuple(t.shape)}, got {tuple(s.shape)}")
            for p in prefix:
                _check_prefix(p, t, self.heads)
        pad = _standalone(t, lengths, self.dim, "t")
        p_t, p_a, p_v = prefix
        t = self.enc_t(t, p_t, pad)
        a = self.enc_a(a, p_a, pad)
        v = self.enc_v(v, p_v, pad)
        guide = p_t if self.cross_ecce else None
        t = t + self.ca_a(t, a, pad, guide)  # both terms are 0 on the padding
        t = t + self.ca_v(t, v, pad, guide)
        return t, a, v
