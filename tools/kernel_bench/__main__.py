"""``python -m tools.kernel_bench``: see the package docstring."""
from .cli import main

main(prog="python -m tools.kernel_bench")
