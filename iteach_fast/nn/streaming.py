"""Real-time ERC: a causal ITEACH-Net run one utterance at a time (the paper's §6 future work).

    model = ITEACHModel(dims, 4, num_layers=4, mixer="nas", causal=True).eval()   # or net.stream()
    session = model.stream(batch_size=1)
    for text, audio, visual, present in utterances:        # (B, d_m) each, present (B, 3) bool
        probs = session.push(text, audio, visual, present)  # (B, C): the new utterance's emotion
    session.reset()                                         # a new conversation

A causal model's output at utterance ``t`` depends on utterances ``<= t`` only, so it can be
given the moment ``t`` arrives, and nothing computed for an earlier utterance ever changes.
The session keeps, per conversation, what the next utterance needs and nothing it would
recompute:

- per modality: the projected inputs (the ECCE conv's left window), the residual GRU's
  hidden state (``recurrent``), and ECCE's running
  band-mean table — the chunk-local sums ``S`` and ``zp`` of docs/maths.md ("Local
  numerics"), extended by one position per push, from which the new row of the global bias
  ``E[t, t-dist+1..t]`` costs ``O(dist·H)``;
- per attention (each encoder's MixMap, each cross-attention): the keys and values;
- per NAS encoder: its mixer inputs (the pools' windows and the MLP token mixer's input)
  and the MLP mixer's hidden units (the partial sums: the units of utterance ``t`` read
  tokens ``<= t`` and are computed once, when ``t`` arrives).

One push is ``O(L·D)`` work and memory (``L`` the utterances so far), never the ``O(L²·D)``
of re-running the forward on the prefix, with no Python loop over positions. Its output
equals the full causal forward's at every step (up to float rounding). The session computes
the evaluation-mode forward (no dropout, even on a model left in ``train()`` mode: each push
runs in eval mode and restores the model's modes) without gradients; it holds at most
``max_len`` utterances (the model's hyper-parameter) — pushing more is an error.

What a push refuses, before anything is kept (the session is unchanged, the conversation can
go on): inputs of the wrong shape, and a NaN or ±inf value of a present modality, checked
after the cast to the model's dtype (a float64 1e300 is inf in float32) — kept, it would
poison every later output of its conversation. An utterance with no modality present is
predicted from the earlier utterances alone, with a :class:`NoModalityWarning`.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import MODALITIES

__all__ = ["StreamingSession", "NoModalityWarning"]


class NoModalityWarning(UserWarning):
    """An utterance was pushed with no modality present: its prediction rests on the earlier
    utterances of its conversation alone."""


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """``model`` in eval mode (no dropout) for the block, each submodule's mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class _KV:
    """Keys and values of one attention, ``(B, H, capacity, Dh)`` each."""

    def __init__(self, B: int, heads: int, capacity: int, dim: int, like: torch.Tensor):
        self.heads = heads
        self.k = like.new_zeros(B, heads, capacity, dim // heads)
        self.v = like.new_zeros(B, heads, capacity, dim // heads)

    def attend(self, t: int, q, k, v, scale: float, bias=None) -> torch.Tensor:
        """Store position ``t``'s ``k, v (B, D)``; ``q (B, D)`` attends to keys ``0..t``
        (``bias (B, H, t+1)`` added to the scores) -> ``(B, D)``."""
        B, D = q.shape
        H = self.heads
        self.k[:, :, t] = k.view(B, H, -1)
        self.v[:, :, t] = v.view(B, H, -1)
        s = torch.matmul(q.view(B, H, 1, -1), self.k[:, :, :t + 1].transpose(-1, -2))[:, :, 0] * scale
        if bias is not None:
            s = s + bias
        a = torch.softmax(s, dim=-1)
        return torch.matmul(a[:, :, None], self.v[:, :, :t + 1])[:, :, 0].reshape(B, D)


class _Modality:
    """One modality's projected inputs ``(B, capacity, D)`` and ECCE's running table: ``S`` and
    ``zp`` ``(B, H, capacity)`` in the accumulation dtype."""

    def __init__(self, B: int, heads: int, capacity: int, dim: int, like: torch.Tensor, acc: torch.dtype):
        self.x = like.new_zeros(B, capacity, dim)
        self.S = like.new_zeros(B, heads, capacity, dtype=acc)
        self.zp = like.new_zeros(B, heads, capacity, dtype=acc)
        self.h = None  # the residual GRU's hidden state (``recurrent``); None: zeros, as at utterance 0


class _Encoder:
    """One ITEACH Encoder's state: its attention's keys and values and, for a NAS encoder, its
    mixer inputs ``(B, capacity, D)`` and the MLP mixer's hidden units ``(B, D, hidden)``."""

    def __init__(self, enc: nn.Module, B: int, capacity: int, like: torch.Tensor):
        attention = enc.mixer if enc.mixer_kind == "tf" else enc.mixer.attention
        self.kv = _KV(B, attention.heads, capacity, enc.dim, like)
        if enc.mixer_kind == "nas":
            mlp = enc.mixer.mlp
            self.xn = like.new_zeros(B, capacity, enc.dim)
            self.hidden = like.new_zeros(B, enc.dim, mlp.fc1.out_features)
            # hidden units are ordered by the position they belong to: those of positions
            # <= t are the first bounds[t + 1]
            counts = torch.bincount(mlp.owner.cpu(), minlength=mlp.max_len)
            self.bounds = [0] + torch.cumsum(counts, 0).tolist()


class StreamingSession:
    """Utterance-by-utterance inference with a causal :class:`~iteach_fast.nn.model.ITEACHModel`
    for ``batch_size`` conversations advancing together (see the module docstring).

    :meth:`push` takes one new utterance per conversation and returns its prediction;
    :meth:`reset` starts new conversations. ``length`` is the number of utterances pushed.
    """

    def __init__(self, model: nn.Module, batch_size: int = 1):
        if not getattr(model, "causal", False):
            raise ValueError("streaming needs a causal model (built with causal=True, e.g. `train --causal`): a "
                             "bidirectional model's output at an utterance depends on the utterances after it")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.model, self.batch_size, self.max_len = model, batch_size, model.max_len
        self.reset()

    def reset(self) -> None:
        """Forget every pushed utterance: the next push is utterance 0 of new conversations."""
        m, B, cap = self.model, self.batch_size, self.max_len
        like = next(m.parameters()).detach()
        acc = torch.float64 if like.dtype == torch.float64 else torch.float32
        heads = m.ecce[0].heads
        self.length = 0
        self.last_logits = None
        self._modalities = [_Modality(B, heads, cap, m.dim, like, acc) for _ in MODALITIES]
        self._encoders = [[_Encoder(enc, B, cap, like) for enc in (layer.enc_t, layer.enc_a, layer.enc_v)]
                          for layer in m.layers]
        self._cross = [[_KV(B, ca.heads, cap, m.dim, like) for ca in (layer.ca_a, layer.ca_v)] for layer in m.layers]

    # ------------------------------------------------------------------ one utterance

    @torch.no_grad()
    def push(self, text, audio, visual, present=None) -> torch.Tensor:
        """One new utterance per conversation: ``text (B, d_t)``, ``audio (B, d_a)``,
        ``visual (B, d_v)`` (``(d,)`` when ``batch_size`` is 1), ``present (B, 3)`` bool or None
        (a modality marked absent is zeroed, GCNet's convention). Returns the new utterance's
        class probabilities ``(B, C)`` (a regressor: its scores ``(B,)``); its logits are kept
        as ``last_logits``."""
        if self.length >= self.max_len:
            raise ValueError(f"the session already holds max_len={self.max_len} utterances: reset() for a new "
                             f"conversation, or build the model with a larger max_len")
        inputs, present = self._check(text, audio, visual, present)
        with _eval_mode(self.model):
            return self._push(inputs, present)

    def _push(self, inputs, present) -> torch.Tensor:
        m, t = self.model, self.length
        # eq. 1-2 (no dropout in evaluation)
        xs = [proj(x) for proj, x in zip(m.proj, m.projection_inputs(inputs, present))]
        if m.recurrence is not None:  # one GRU step per stream from its kept hidden state
            xs = [self._recur(rnn, state, x) for rnn, state, x in zip(m.recurrence, self._modalities, xs)]
        biases = [self._ecce(ecce, state, x, t) for ecce, state, x in zip(m.ecce, self._modalities, xs)]
        tt, aa, vv = xs
        for layer, encs, (ca_a, ca_v) in zip(m.layers, self._encoders, self._cross):
            tt = self._encoder(layer.enc_t, encs[0], tt, biases[0], t)
            aa = self._encoder(layer.enc_a, encs[1], aa, biases[1], t)
            vv = self._encoder(layer.enc_v, encs[2], vv, biases[2], t)
            guide = biases[0] if layer.cross_ecce else None
            tt = tt + self._cross_attention(layer.ca_a, ca_a, tt, aa, t, guide)
            tt = tt + self._cross_attention(layer.ca_v, ca_v, tt, vv, t, guide)
        self.length = t + 1
        self.last_logits = m.classifier(tt)
        if m.regression:
            return self.last_logits[:, 0]
        return torch.softmax(self.last_logits.float(), dim=-1)

    def _check(self, text, audio, visual, present):
        like = next(self.model.parameters())
        B, out = self.batch_size, []
        for name, x, d in zip(MODALITIES, (text, audio, visual), self.model.input_dims):
            x = torch.as_tensor(x)
            if x.dim() == 1 and B == 1:
                x = x[None]
            if not x.is_floating_point() or tuple(x.shape) != (B, d):
                raise ValueError(f"{name} must be a floating-point tensor of shape ({B}, {d}) (one utterance per "
                                 f"conversation), got {x.dtype} {tuple(x.shape)}")
            out.append(x.to(device=like.device, dtype=like.dtype))
        if present is not None:
            present = torch.as_tensor(present)
            if present.dim() == 1 and B == 1:
                present = present[None]
            if present.dtype != torch.bool or tuple(present.shape) != (B, 3):
                raise ValueError(f"present must be a bool tensor of shape ({B}, 3) (or None), got "
                                 f"{present.dtype} {tuple(present.shape)}")
            present = present.to(like.device)
            zero = torch.zeros((), dtype=like.dtype, device=like.device)
            out = [torch.where(present[:, i:i + 1], x, zero) for i, x in enumerate(out)]
        # after the cast and the mask: the values the model computes with (one host sync for the three)
        finite = torch.stack([torch.isfinite(x).all() for x in out]).tolist()
        for name, x, ok in zip(MODALITIES, out, finite):
            if not ok:
                bad = ~torch.isfinite(x)
                rows = bad.any(dim=1).nonzero()[:, 0].tolist()
                raise ValueError(f"{name}: {int(bad.sum())} value(s) are NaN or infinite as {like.dtype} "
                                 f"(conversation(s) {rows} of the batch, utterance {self.length}); refused, nothing "
                                 "was kept: the session goes on from the previous utterance (mark a modality absent "
                                 "with present instead)")
        if present is not None:
            nothing = (~present.any(dim=1)).nonzero()[:, 0].tolist()
            if nothing:
                warnings.warn(f"utterance {self.length} of conversation(s) {nothing}: no modality present (present is "
                              "all False): its prediction rests on the earlier utterances alone",
                              NoModalityWarning, stacklevel=3)
        return out, present

    # ------------------------------------------------------------------ the pieces, one position each

    @staticmethod
    def _recur(rnn, state: _Modality, x: torch.Tensor) -> torch.Tensor:
        """The causal residual GRU at the new position: ``x + GRU(x)`` from the kept hidden state."""
        out, state.h = rnn.forward_gru(x[:, None], state.h)
        return x + out[:, 0]

    def _ecce(self, ecce, state: _Modality, x: torch.Tensor, t: int):
        """ECCE at position ``t``: the new row of the global bias, ``(B, H, t+1)``, or None when off."""
        state.x[:, t] = x
        if ecce.fc is None:
            return None
        z = x
        if ecce.conv is not None:  # the causal conv over t-k+1..t, zeros before position 0
            k = ecce.kernel_size
            lo = max(0, t - k + 1)
            window = F.pad(state.x[:, lo:t + 1].transpose(1, 2), (k - (t + 1 - lo), 0))
            z = F.conv1d(window, ecce.conv.weight, ecce.conv.bias)[..., 0]
        acc = state.S.dtype
        zp = z.to(acc) @ ecce.fc.weight.T.to(acc)  # (B, H)
        dist = ecce.dist
        start = t - t % dist  # the first position of t's chunk
        state.zp[:, :, t] = zp
        state.S[:, :, t] = zp + state.S[:, :, t - 1] if t > start else zp
        # sum zp[j..t] for the band j in (t - dist, t]: S[t] - S[j] + zp[j] within t's chunk,
        # plus the previous chunk's total for j before it (docs/maths.md, "Local numerics")
        lo = max(0, t - dist + 1)
        sums = state.S[:, :, t:t + 1] - state.S[:, :, lo:t + 1] + state.zp[:, :, lo:t + 1]
        if lo < start:
            sums = torch.cat([sums[..., :start - lo] + state.S[:, :, start - 1:start], sums[..., start - lo:]], -1)
        width = torch.arange(t + 1 - lo, 0, -1, device=zp.device, dtype=acc)  # t - j + 1
        row = zp.new_zeros(*zp.shape, t + 1)
        row[..., lo:] = sums / width
        return row

    def _encoder(self, enc, state: _Encoder, x: torch.Tensor, bias, t: int) -> torch.Tensor:
        """One ITEACH Encoder at position ``t``: ``x + Mixer(LN(x))``, then ``+ FFN(LN(.))``."""
        xn = enc.norm1(x)
        if enc.mixer_kind == "tf":
            y = self._self_attention(enc.mixer, state.kv, xn, bias, t)
        else:
            mix = enc.mixer
            state.xn[:, t] = xn
            y_attn = self._self_attention(mix.attention, state.kv, xn, bias, t)
            y_mlp = self._mlp(mix.mlp, state, t)
            window = state.xn[:, max(0, t - mix.pool_size + 1):t + 1]  # the causal pools' window
            w = torch.softmax(mix.router(xn), dim=-1)
            terms = (y_attn, y_mlp, window.mean(1), window.amax(1))
            y = sum(w[:, o:o + 1] * term for o, term in enumerate(terms))
        x = x + y
        return x + enc.ffn(enc.norm2(x))

    @staticmethod
    def _self_attention(attn, kv: _KV, xn: torch.Tensor, bias, t: int) -> torch.Tensor:
        acc = bias.dtype if bias is not None else xn.dtype
        o = kv.attend(t, attn.q(xn).to(acc), attn.k(xn).to(acc), attn.v(xn).to(acc), attn.scale, bias)
        return attn.out(o.to(xn.dtype))

    @staticmethod
    def _mlp(mlp, state: _Encoder, t: int) -> torch.Tensor:
        """The MLP token mixer's output at ``t``: the hidden units of position ``t`` (reading
        tokens ``0..t``) are computed and kept; the output reads every unit of positions ``<= t``.
        These weight slices lie inside the causal masks, so the raw weights are the masked ones."""
        k0, k1 = state.bounds[t], state.bounds[t + 1]
        if k1 > k0:
            pre = torch.matmul(state.xn[:, :t + 1].transpose(1, 2), mlp.fc1.weight[k0:k1, :t + 1].T)
            state.hidden[:, :, k0:k1] = F.gelu(pre + mlp.fc1.bias[k0:k1])
        return torch.matmul(state.hidden[:, :, :k1], mlp.fc2.weight[t, :k1]) + mlp.fc2.bias[t]

    @staticmethod
    def _cross_attention(ca, kv: _KV, query: torch.Tensor, source: torch.Tensor, t: int, bias=None) -> torch.Tensor:
        kv_in = ca.norm_kv(source)
        acc = bias.dtype if bias is not None else query.dtype
        o = kv.attend(t, ca.q(ca.norm_q(query)).to(acc), ca.k(kv_in).to(acc), ca.v(kv_in).to(acc), ca.scale, bias)
        return ca.out(o.to(query.dtype))
