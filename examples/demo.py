"""Demo: one grouped 3x3 convolution (an MGiaD smoother, 8 channels per group) on both backends.

    python examples/demo.py [--channels 64] [--size 16] [--batch 8]

On a CUDA machine it runs the compiled kernels; elsewhere the Triton interpreter on the CPU
(slow: it proves correctness, not speed). Prints each backend's max error against float64 and
its time.
"""
from __future__ import annotations

import argparse
import os
import time

import torch


def _time_ms(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (compiles or autotunes on a GPU)
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, return_mode="median")
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=8, help="H = W")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    if args.channels % args.group_size:
        parser.error(f"--group-size {args.group_size} must divide --channels {args.channels}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined (lazily)
    from mgiad_kernels import grouped_conv2d

    torch.manual_seed(0)
    c, groups = args.channels, args.channels // args.group_size
    x = torch.randn(args.batch, c, args.size, args.size, device=device)
    w = torch.randn(c, args.group_size, 3, 3, device=device) / (9 * args.group_size) ** 0.5
    reference = torch.nn.functional.conv2d(x.double(), w.double(), padding=1, groups=groups)
    print(f"grouped 3x3 conv: N={args.batch} C={c} H=W={args.size} groups={groups} on {device}"
          + (" (Triton interpreter)" if device.type == "cpu" else ""))
    for backend in ("torch", "triton"):
        y = grouped_conv2d(x, w, padding=1, groups=groups, backend=backend)
        err = (y.double() - reference).abs().max().item()
        ms = _time_ms(lambda: grouped_conv2d(x, w, padding=1, groups=groups, backend=backend), device, 3)
        print(f"  backend={backend:<7} max |error| = {err:.2e}   time = {ms:.3f} ms")


if __name__ == "__main__":
    main()
