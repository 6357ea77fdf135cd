"""Triton kernels (K1) and their launchers; installed as ``iteach_fast.kernels``."""
