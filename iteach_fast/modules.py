"""Drop-in ``nn.Module``s of ITEACH-Net (paper §3.3-3.4, Appendix C; docs/maths.md).

Every module takes ``lengths`` (int ``(B,)``, or None for "all valid") and keeps the
package-wide contract: outputs at invalid positions (``i >= lengths[b]``) are exactly 0,
invalid positions never influence valid ones, and a length-0 conversation gives zeros,
never NaN. The fused operators come only from :mod:`iteach_fast.ops`; each module holds a
``backend`` attribute (``"auto"`` by default) that it passes through to them —
:func:`set_backend` changes it for a whole model.

Modules, bottom up:

- :class:`ECCE` — local context (eq. 5) and its per-head projection ``zp``, from which
  the global context-changing bias ``E`` (eq. 6, Algorithm 1) is built inside the fused
  attention; :meth:`ECCE.bias` materialises ``E`` for inspection.
- Token mixers (Appendix C): :class:`ECCEAttention` (eq. 10-11, C.1-C.2),
  :class:`MLPTokenMixer` (C.3), :class:`AvgPoolTokenMixer` (C.4),
  :class:`MaxPoolTokenMixer` (C.5), and the router-weighted :class:`RoutedTokenMixer`
  (eq. 8-9).
- :class:`ITEACHEncoder` — the MetaFormer block, "tf" or "nas" (§3.4.2).
- :class:`CrossAttention` (eq. 7) and :class:`EncoderLayer` (§3.4.1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .choices import ECCE_MODES, MIXERS, check_choice
from .padding import masked_avg_pool, masked_max_pool, valid_mask, zero_invalid

__all__ = [
    "ECCE", "ECCEAttention", "MLPTokenMixer", "AvgPoolTokenMixer", "MaxPoolTokenMixer",
    "RoutedTokenMixer", "ITEACHEncoder", "CrossAttention", "EncoderLayer",
    "set_backend", "lengths_or_full",
]


# ----------------------------------------------------------------------------- helpers

# ``lengths`` as int64 ``(B,)`` on a device, None meaning all L; errors name ``lengths``
lengths_or_full = ops.check_lengths


def _rows(lengths: torch.Tensor, L: int) -> torch.Tensor:
    """``(B, L, 1)`` bool, broadcastable over features: position ``i`` is valid iff ``i < lengths[b]``."""
    return valid_mask(lengths, L)[..., None]


def set_backend(module: nn.Module, backend: str) -> nn.Module:
    """Set ``backend`` (``"auto"``, ``"reference"``, ``"triton"``, ``"cpp"``) on every submodule
    that calls a fused operator. Returns ``module``."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    for m in module.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    return module


def _check_heads(dim: int, heads: int) -> None:
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")


# ----------------------------------------------------------------------------- ECCE

class ECCE(nn.Module):
    """Emotion Context Changing Encoder (paper §3.3, eq. 5-6, Algorithm 1; docs/maths.md).

    Local (eq. 5): ``Z = Conv1d(D, D, kernel_size, padding=kernel_size//2)`` along the
    utterance axis, invalid positions zeroed before (so padding never leaks in) and after.
    Global (eq. 6): ``E[b,h,i,j] = mean_{k=min(i,j)..max(i,j)} Z[b,k] @ W_fc[:,h]`` on the
    band ``|i-j| < dist``. Since the projection is linear, ``forward`` returns only
    ``zp = Z @ W_fc`` ``(B, L, H)``; the fused attention builds ``E`` from it without
    materialising ``L x L``. ``W_fc`` has no bias: Algorithm 1's bias lands on every entry of
    a softmax row and cannot change the attention (docs/maths.md).

    ``mode``: ``"local+global"`` (the paper), ``"global"`` (no conv, ``Z = X``), ``"off"``
    (``zp = 0``, hence ``E = 0``: plain attention).
    """

    def __init__(self, dim: int, heads: int, kernel_size: int = 7, dist: int = 30,
                 mode: str = "local+global", backend: str = "auto"):
        super().__init__()
        check_choice("mode", mode, ECCE_MODES)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive (a window centred on each utterance), "
                             f"got {kernel_size}")
        if dist < 1:
            raise ValueError(f"dist must be >= 1, got {dist}")
        self.dim, self.heads, self.dist, self.mode, self.backend = dim, heads, dist, mode, backend
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2) if mode == "local+global" else None
        self.fc = nn.Linear(dim, heads, bias=False) if mode != "off" else None

    def forward(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        """``x (B, L, D)`` -> ``zp (B, L, H)``, the per-head local context (0 at invalid positions)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (B, L, {self.dim}), got {tuple(x.shape)}")
        B, L, _ = x.shape
        if self.mode == "off":
            return x.new_zeros(B, L, self.heads)
        valid = _rows(lengths_or_full(lengths, B, L, x.device), L)
        z = zero_invalid(x, valid)
        if self.conv is not None:
            z = zero_invalid(self.conv(z.transpose(1, 2)).transpose(1, 2), valid)
        return zero_invalid(self.fc(z), valid)

    def bias(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        """The materialised global bias ``E (B, H, L, L)`` (for heatmaps, paper Fig. 5)."""
        return ops.ecce_bias(self(x, lengths), lengths, self.dist, backend=self.backend)


# ----------------------------------------------------------------------------- token mixers

class ECCEAttention(nn.Module):
    """ECCE-guided multi-head self-attention, the MixMap (eq. 10-11, C.1-C.2):
    ``S = (X W_q)(X W_k)^T / sqrt(Dh) + E``, ``out = softmax(S)(X W_v)``, then ``W_o``.

    The teacher's "TF" mixer and the student's AttentionMixer. ``E`` comes in as ``zp``
    (see :class:`ECCE`) and is expanded inside ``ops.ecce_attention``. ``dropout`` acts on
    the output (the fused kernel has no attention-probability dropout).
    """

    def __init__(self, dim: int, heads: int, dist: int = 30, dropout: float = 0.0, backend: str = "auto"):
        super().__init__()
        _check_heads(dim, heads)
        self.dim, self.heads, self.dist, self.backend = dim, heads, dist, backend
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)  # W_o
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, zp: torch.Tensor | None = None, lengths=None) -> torch.Tensor:
        """``x (B, L, D)``, ``zp (B, L, H)`` (None: no ECCE bias) -> ``(B, L, D)``."""
        B, L, D = x.shape
        lengths = lengths_or_full(lengths, B, L, x.device)
        valid = _rows(lengths, L)
        x = zero_invalid(x, valid)
        if zp is None:
            zp = x.new_zeros(B, L, self.heads)

        def heads(t):  # (B, L, D) -> (B, H, L, Dh)
            return t.view(B, L, self.heads, D // self.heads).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        # zp in q's dtype: under autocast the projections may run in half precision while x does not
        o = ops.ecce_attention(q, k, v, zp.to(q.dtype), lengths, self.dist, backend=self.backend)
        o = self.out(o.transpose(1, 2).reshape(B, L, D))
        return zero_invalid(self.dropout(o), valid)  # W_o's bias would otherwise land on the padding


class MLPTokenMixer(nn.Module):
    """MLP over the token axis (Appendix C, eq. C.3): ``MLP(X^T)^T`` with
    ``Linear(L_max -> L_max*ratio) . GELU . Linear(-> L_max)``.

    Inputs shorter than ``max_len`` are zero-padded to it; invalid tokens are 0 on input
    (so they contribute nothing) and on output.
    """

    def __init__(self, max_len: int, ratio: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        hidden = max(1, int(round(max_len * ratio)))
        self.max_len = max_len
        self.fc1 = nn.Linear(max_len, hidden)
        self.fc2 = nn.Linear(hidden, max_len)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, zp: torch.Tensor | None = None, lengths=None) -> torch.Tensor:
        """``x (B, L, D)`` with ``L <= max_len`` -> ``(B, L, D)``; ``zp`` is ignored."""
        B, L, D = x.shape
        if L > self.max_len:
            raise ValueError(f"MLPTokenMixer was built for max_len={self.max_len} utterances, got a padded "
                             f"length L={L}; build the model with max_len >= {L}")
        valid = _rows(lengths_or_full(lengths, B, L, x.device), L)
        xt = F.pad(zero_invalid(x, valid).transpose(1, 2), (0, self.max_len - L))  # (B, D, L_max)
        y = self.fc2(self.dropout(F.gelu(self.fc1(xt))))[..., :L].transpose(1, 2)
        return zero_invalid(self.dropout(y), valid)


class AvgPoolTokenMixer(nn.Module):
    """Masked average pool (Appendix C, eq. C.4): mean over ``[i - p//2, i + p//2] ∩ valid``.
    Same pooling code as the reference ``routed_mixture`` (``reference.masked_avg_pool``)."""

    def __init__(self, pool_size: int = 3):
        super().__init__()
        if pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f"pool_size must be odd and positive, got {pool_size}")
        self.pool_size = pool_size

    def forward(self, x: torch.Tensor, zp: torch.Tensor | None = None, lengths=None) -> torch.Tensor:
        B, L, _ = x.shape
        valid = _rows(lengths_or_full(lengths, B, L, x.device), L)
        return zero_invalid(masked_avg_pool(x, valid, self.pool_size), valid)


class MaxPoolTokenMixer(nn.Module):
    """Masked max pool (Appendix C, eq. C.5): max over ``[i - p//2, i + p//2] ∩ valid``.
    Same pooling code as the reference ``routed_mixture`` (``reference.masked_max_pool``)."""

    def __init__(self, pool_size: int = 3):
        super().__init__()
        if pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f"pool_size must be odd and positive, got {pool_size}")
        self.pool_size = pool_size

    def forward(self, x: torch.Tensor, zp: torch.Tensor | None = None, lengths=None) -> torch.Tensor:
        B, L, _ = x.shape
        valid = _rows(lengths_or_full(lengths, B, L, x.device), L)
        return zero_invalid(masked_max_pool(x, valid, self.pool_size), valid)  # -inf at invalid rows -> 0


class RoutedTokenMixer(nn.Module):
    """The NAS token mixer (eq. 8-9): ``w = softmax(router(X))`` per token,
    ``out[i] = Σ_o w[i,o] · o(X)[i]`` over (attention, mlp, avgpool, maxpool).

    The attention and MLP mixers run here; the two pools and the mixture are fused in
    ``ops.routed_mixture``. The router's parameters live under ``router.`` so that
    :meth:`ITEACHNet.parameter_groups` can give them their own learning rate.
    """

    def __init__(self, dim: int, heads: int, max_len: int = 110, dist: int = 30, pool_size: int = 3,
                 mlp_ratio: float = 1.0, dropout: float = 0.0, backend: str = "auto"):
        super().__init__()
        if pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f"pool_size must be odd and positive, got {pool_size}")
        self.pool_size, self.backend = pool_size, backend
        self.router = nn.Linear(dim, 4)
        self.attention = ECCEAttention(dim, heads, dist, dropout, backend)
        self.mlp = MLPTokenMixer(max_len, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, zp: torch.Tensor | None = None, lengths=None) -> torch.Tensor:
        B, L, _ = x.shape
        lengths = lengths_or_full(lengths, B, L, x.device)
        x = zero_invalid(x, _rows(lengths, L))
        logits, y_attn, y_mlp = self.router(x), self.attention(x, zp, lengths), self.mlp(x, None, lengths)
        # one dtype for the fused op: under autocast the Linear outputs may be half while x is float32
        dt = y_attn.dtype
        return ops.routed_mixture(logits.to(dt), x.to(dt), y_attn, y_mlp.to(dt), lengths, self.pool_size,
                                  backend=self.backend)

    def routing_weights(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        """The per-token mixer weights ``softmax(router(X)) (B, L, 4)`` (0 at invalid rows), for analysis."""
        B, L, _ = x.shape
        valid = _rows(lengths_or_full(lengths, B, L, x.device), L)
        return zero_invalid(torch.softmax(self.router(zero_invalid(x, valid)), dim=-1), valid)


# ----------------------------------------------------------------------------- blocks

class ITEACHEncoder(nn.Module):
    """The ITEACH Encoder, a MetaFormer block (§3.4.2):
    ``x = x + Mixer(LN(x), E)``; ``x = x + FFN(LN(x))`` with a GELU FFN of ratio ``ffn_ratio``.

    ``mixer="tf"``: the ECCE-guided attention alone (Router = Identity); ``"nas"``: the
    routed mixture of the four token mixers. Padding stays exactly 0.
    """

    def __init__(self, dim: int, heads: int, mixer: str = "tf", ffn_ratio: float = 4.0, max_len: int = 110,
                 dist: int = 30, pool_size: int = 3, mlp_ratio: float = 1.0, dropout: float = 0.0,
                 backend: str = "auto"):
        super().__init__()
        check_choice("mixer", mixer, MIXERS)
        self.mixer_kind = mixer
        self.norm1 = nn.LayerNorm(dim)
        if mixer == "tf":
            self.mixer = ECCEAttention(dim, heads, dist, dropout, backend)
        else:
            self.mixer = RoutedTokenMixer(dim, heads, max_len, dist, pool_size, mlp_ratio, dropout, backend)
        self.norm2 = nn.LayerNorm(dim)
        hidden = max(1, int(round(dim * ffn_ratio)))
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, zp: torch.Tensor | None = None, lengths=None) -> torch.Tensor:
        """``x (B, L, D)``, ``zp (B, L, H)`` -> ``(B, L, D)``."""
        B, L, _ = x.shape
        lengths = lengths_or_full(lengths, B, L, x.device)
        valid = _rows(lengths, L)
        x = zero_invalid(x, valid)
        x = x + self.mixer(self.norm1(x), zp, lengths)  # the mixer zeroes its own padding
        return zero_invalid(x + self.ffn(self.norm2(x)), valid)  # LN's beta and the FFN biases would not


class CrossAttention(nn.Module):
    """Multi-head cross-attention (eq. 7): ``softmax(q k^T / sqrt(C)) v`` with pre-LayerNorms
    on the query stream and on the key/value stream; keys beyond ``lengths`` masked.

    Returns the attention output only (the caller adds the residual). Rows beyond
    ``lengths`` are 0; a length-0 conversation gives 0, not NaN (the key mask is a finite
    fill, so a fully masked row softmaxes to a harmless uniform row that is then zeroed).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        _check_heads(dim, heads)
        self.dim, self.heads, self.attn_dropout = dim, heads, dropout
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, kv: torch.Tensor, lengths=None) -> torch.Tensor:
        """``query (B, L, D)`` (the text stream), ``kv (B, L, D)`` (audio or visual) -> ``(B, L, D)``."""
        B, L, D = query.shape
        if kv.shape != query.shape:
            raise ValueError(f"kv must have the query's shape {tuple(query.shape)}, got {tuple(kv.shape)}")
        valid = _rows(lengths_or_full(lengths, B, L, query.device), L)
        q_in, kv_in = self.norm_q(zero_invalid(query, valid)), self.norm_kv(zero_invalid(kv, valid))
        Dh = D // self.heads

        def heads(t):
            return t.view(B, L, self.heads, Dh).transpose(1, 2)

        q, k, v = heads(self.q(q_in)), heads(self.k(kv_in)), heads(zero_invalid(self.v(kv_in), valid))
        key_bias = torch.zeros(B, 1, 1, L, dtype=q.dtype, device=q.device)
        key_bias = key_bias.masked_fill(~valid[:, None, None, :, 0], torch.finfo(q.dtype).min)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        return zero_invalid(self.out(o.transpose(1, 2).reshape(B, L, D)), valid)


class EncoderLayer(nn.Module):
    """One Encoder Layer (§3.4.1, Fig. 2): each modality through its own ITEACH Encoder,
    guided by its own ``zp_m``; then the text stream fuses audio and visual in turn:
    ``T <- T + CA(q=T, kv=A)``, ``T <- T + CA(q=T, kv=V)``. The fused ``T`` is this layer's
    hidden feature ``H`` and the next layer's text input.
    """

    def __init__(self, dim: int, heads: int, mixer: str = "tf", ffn_ratio: float = 4.0, max_len: int = 110,
                 dist: int = 30, pool_size: int = 3, mlp_ratio: float = 1.0, dropout: float = 0.0,
                 backend: str = "auto"):
        super().__init__()
        kw = dict(mixer=mixer, ffn_ratio=ffn_ratio, max_len=max_len, dist=dist, pool_size=pool_size,
                  mlp_ratio=mlp_ratio, dropout=dropout, backend=backend)
        self.enc_t = ITEACHEncoder(dim, heads, **kw)
        self.enc_a = ITEACHEncoder(dim, heads, **kw)
        self.enc_v = ITEACHEncoder(dim, heads, **kw)
        self.ca_a = CrossAttention(dim, heads, dropout)
        self.ca_v = CrossAttention(dim, heads, dropout)

    def forward(self, t, a, v, zp=(None, None, None), lengths=None):
        """``t, a, v (B, L, D)``, ``zp = (zp_t, zp_a, zp_v)`` each ``(B, L, H)`` -> ``(t, a, v)``."""
        B, L, _ = t.shape
        lengths = lengths_or_full(lengths, B, L, t.device)
        zp_t, zp_a, zp_v = zp
        t = self.enc_t(t, zp_t, lengths)
        a = self.enc_a(a, zp_a, lengths)
        v = self.enc_v(v, zp_v, lengths)
        t = t + self.ca_a(t, a, lengths)  # both terms are 0 on the padding
        t = t + self.ca_v(t, v, lengths)
        return t, a, v
