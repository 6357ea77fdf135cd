"""K1: ECCE's banded average-pooling bias fused into attention, in Triton: the stable entry point.

The backend registry (``iteach_fast.ops.backends``) names these functions as
``iteach_fast.kernels.ecce:<name>``; the kernels live in the modules beside this one (see
``iteach_fast.kernels``), the maths in ``docs/maths.md``.

    ecce_prefix(z, w_fc, lengths, dist)                          -> (zp, prefix)  zp = Z @ W_fc and its band tables
    band_tables(zp, lengths, dist)                               -> prefix        the band tables of a given zp
    ecce_bias(zp, lengths, dist, causal)                         -> E (B, H, L, L)   (materialised, for heatmaps)
    ecce_attention(q, k, v, prefix, lengths, dist, scale, causal) -> out (B, H, L, Dh) (E never materialised)

``prefix`` is the contract's (B, H, 3, L) float32 table of chunk-local sums (any backend's,
computed with the same lengths and dist), or None for no bias. Inputs are assumed validated
(``iteach_fast.ops`` does that); ``lengths`` is int64 ``(B,)``; q, k, v may have any strides.
"""
from .attention import ecce_attention, ecce_attention_zp
from .bias import ecce_bias
from .scan import band_tables, ecce_prefix

__all__ = ["ecce_prefix", "band_tables", "ecce_bias", "ecce_attention", "ecce_attention_zp"]
