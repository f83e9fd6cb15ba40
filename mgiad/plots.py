"""Plots from runs' metrics.jsonl: training curves, and the weight-count vs accuracy trade-off (paper Fig. 7)."""
from __future__ import annotations

import argparse
import json
import os


def read_metrics(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(metrics_path: str, png_path: str) -> None:
    """Loss and accuracy against epochs."""
    rows = read_metrics(metrics_path)
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in rows]
    for key, ax in (("loss", ax_loss), ("acc", ax_acc)):
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], label="train")
        ax.plot(epochs, [r[f"test_{key}"] for r in rows], label="test")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def plot_main(argv) -> None:
    p = argparse.ArgumentParser(prog="mgiad plot", description="Weight count vs best test accuracy of runs.")
    p.add_argument("runs", nargs="+", help="run folders holding metrics.jsonl")
    p.add_argument("--out", default="tradeoff.png")
    a = p.parse_args(argv)
    points = []
    for run in a.runs:
        path = os.path.join(run, "metrics.jsonl")
        if not os.path.isfile(path):
            raise SystemExit(f"error: {run} has no metrics.jsonl")
        rows = read_metrics(path)
        if rows:
            points.append((rows[-1]["params"], max(r["test_acc"] for r in rows), os.path.basename(run.rstrip("/"))))
    if not points:
        raise SystemExit("error: no run has any epoch in its metrics.jsonl")
    plt = _pyplot()
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
    print(f"wrote {a.out} ({len(points)} runs)")
