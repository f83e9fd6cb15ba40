"""Plots from runs' metrics.jsonl: training curves, and the weight-count vs accuracy trade-off (paper Fig. 7).

matplotlib is optional: ``mgiad train`` skips curves.png with a note without it, ``mgiad plot`` says
it is needed.
"""
from __future__ import annotations

import os

from .argparsing import OneLineParser
from .metrics import read_metrics

__all__ = ["plot_curves", "plot_main", "pyplot_or_none", "read_metrics"]


def pyplot_or_none():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _values(rows: list[dict], key: str) -> list[float]:
    """A metric per epoch; null (a non-finite value) as NaN, which matplotlib leaves out."""
    return [float("nan") if r.get(key) is None else r[key] for r in rows]


def plot_curves(metrics_path: str, png_path: str) -> None:
    """Loss and accuracy against epochs (whole-number ticks)."""
    rows = read_metrics(metrics_path)
    plt = pyplot_or_none()
    if plt is None:
        raise ImportError("plotting needs matplotlib (pip install matplotlib)")
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in rows]
    for key, ax in (("loss", ax_loss), ("acc", ax_acc)):
        ax.plot(epochs, _values(rows, f"train_{key}"), label="train")
        ax.plot(epochs, _values(rows, f"test_{key}"), label="test")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def _tradeoff_points(runs: list[str]) -> list[tuple[int, float, str]]:
    points = []
    for run in runs:
        path = os.path.join(run, "metrics.jsonl")
        if not os.path.isfile(path):
            raise SystemExit(f"mgiad plot: error: {run} has no metrics.jsonl")
        rows = read_metrics(path)
        accs = [r["test_acc"] for r in rows if r.get("test_acc") is not None]
        if accs:
            points.append((rows[-1]["params"], max(accs), os.path.basename(run.rstrip("/"))))
    if not points:
        raise SystemExit("mgiad plot: error: no run has any epoch in its metrics.jsonl")
    return points


def plot_main(argv) -> None:
    p = OneLineParser(prog="mgiad plot", description="Weight count vs best test accuracy of runs.")
    p.add_argument("runs", nargs="+", help="run folders holding metrics.jsonl")
    p.add_argument("--out", default="tradeoff.png", help="the PNG to write (default: tradeoff.png here); "
                   "its full path is printed")
    a = p.parse_args(argv)
    plt = pyplot_or_none()
    if plt is None:
        p.error("plotting needs matplotlib (pip install matplotlib)")
    points = _tradeoff_points(a.runs)
    fig, ax = plt.subplots(figsize=(6, 4))
    for params, acc, name in points:
        ax.scatter(params, 100 * acc)
        ax.annotate(name, (params, 100 * acc), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("weights")
    ax.set_ylabel("best test accuracy (%)")
    fig.tight_layout()
    fig.savefig(a.out, dpi=100)
    plt.close(fig)
    print(f"wrote {os.path.abspath(a.out)} ({len(points)} runs)")
