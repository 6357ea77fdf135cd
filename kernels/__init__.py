"""Triton kernels (K1) and their launchers; installed as ``iteach_fast.kernels``.

    ecce       the stable entry point the backend registry names: ecce_prefix, ecce_bias, ecce_attention
    attention  the fused ECCE attention: FlashAttention-2 forward, the dQ and dK/dV backward kernels
               (the bias gradient without atomics), their ops and autograd; tile sizes (blocks)
    bias       ECCE's bias E (B, H, L, L) materialised, forward and backward kernels, ops and autograd
    scan       the prefix sums P of zp = Z @ W and their adjoint (compensated block scans), the
               ecce_prefix / ecce_suffix_sum ops; the launch and dot-precision helpers the others use
    band       the band maths as triton.jit helpers (band weights, a bias tile, whether a tile
               touches the band) and LOG2E, shared by the attention and bias kernels
    _compat    the shim between triton_op (GPU) and custom_op (Triton interpreter): the op
               decorator, the kernel launcher, whether a device runs interpreted

Every op is registered in the ``iteach_fast`` namespace when ``ecce`` (or the module defining
it) is imported.
"""
