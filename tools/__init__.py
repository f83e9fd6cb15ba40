"""Development tools, run from a checkout and not installed: the stand-in CUDA driver (sm_90 compiles and
launches with no GPU), the compile check and sm_90 codegen report, the kernel, model and host benchmarks, and
the weight-count table. See tools/README.md."""
