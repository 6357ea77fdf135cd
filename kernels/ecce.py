"""K1: ECCE's banded average-pooling bias fused into attention, in Triton: the stable entry point.

The backend registry (``iteach_fast.backends``) names these functions as
``iteach_fast.kernels.ecce:<name>``; the kernels live in the modules beside this one (see
``iteach_fast.kernels``), the maths in ``docs/maths.md``.

    ecce_prefix(z, w, lengths)                        -> (zp, P)  Zp = Z @ W and P[t] = sum_{k<t} Zp[k]
    ecce_bias(zp, lengths, dist)                      -> E (B, H, L, L)   (materialised, for heatmaps)
    ecce_attention(q, k, v, zp, lengths, dist, scale) -> out (B, H, L, Dh) (E never materialised)

Inputs are assumed validated (``iteach_fast.ops`` does that); ``lengths`` is int64 ``(B,)``.
"""
from .attention import ecce_attention
from .bias import ecce_bias
from .scan import ecce_prefix

__all__ = ["ecce_prefix", "ecce_bias", "ecce_attention"]
