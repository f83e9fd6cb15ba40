"""Triton kernels; import only where Triton can run (see mgiad_kernels._triton_support)."""
from .._triton_support import interpreter_enabled, patch_interpreter_index

if interpreter_enabled():
    patch_interpreter_index()
