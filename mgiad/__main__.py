"""``python -m mgiad``: the ``mgiad`` command."""
from .cli import main

main()
