"""``python -m mgiad_kernels.bench``: see the package docstring."""
from .cli import main

main(prog="python -m mgiad_kernels.bench")
