"""Triton kernels; import only where Triton can run (see mgiad_kernels._triton_support)."""
