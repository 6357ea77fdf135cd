"""Triton kernels (K1) and their launchers; installed as ``iteach_fast.kernels``.

    ecce       the stable entry point the backend registry names: ecce_prefix, band_tables, ecce_bias,
               ecce_attention (the operator contract's signatures)
    attention  the fused ECCE attention: FlashAttention-2 forward, the dQ and dK/dV backward kernels
               (strided q/k/v, causal tile skipping, the bias gradient without atomics), ops, autograd
    bias       ECCE's bias E (B, H, L, L) materialised, forward and backward kernels, ops and autograd
    scan       the band tables (zp = Z @ W_fc and its chunk-local sums S, R) and their adjoint
               (compensated scans restarting every dist positions); dot precision, chunk length
    band       the band maths as triton.jit helpers (a bias tile from the tables, its gradient
               summed along rows, whether a tile touches the band) and LOG2E
    tiles      launch parameters per kernel x dtype x head dim (the table, the opt-in autotuning)
    _compat    the shim between triton_op (GPU) and custom_op (Triton interpreter): the op
               decorator, the kernel launcher, whether a device runs interpreted

Every op is registered in the ``iteach_fast`` namespace when ``ecce`` (or the module defining
it) is imported.
"""
