"""K1: ECCE's banded average-pooling bias fused into attention, in Triton: the stable entry point.

The backend registry (``iteach_fast.ops.backends``) names these functions as
``iteach_fast.kernels.ecce:<name>``, with the arguments its ``SIGNATURES`` state (the
operator contract: inputs checked, ``lengths`` int64 ``(B,)``, ``prefix`` the contract's
band table or None); ``band_tables(zp, lengths, dist)`` builds that table from a given
``zp``. The kernels live in the modules beside this one (see ``iteach_fast.kernels``), the
maths in ``docs/maths.md``.
"""
from .attention import ecce_attention
from .bias import ecce_bias
from .scan import band_tables, ecce_prefix

__all__ = ["ecce_prefix", "band_tables", "ecce_bias", "ecce_attention"]
