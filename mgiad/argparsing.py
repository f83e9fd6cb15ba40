"""The command line's argument parser, shared by every ``mgiad`` command."""
from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``PROG: error: MESSAGE``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")
