"""Reports: mean ± std tables over seeds and per-epoch plots of loss and density."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .io import atomic_write


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``"0.123 ± 0.004"`` over seeds (sample std, ddof=1); just the mean for one seed."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return "–"
    if arr.size == 1:
        return f"{arr[0]:.{digits}f}"
    return f"{arr.mean():.{digits}f} ± {arr.std(ddof=1):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; every cell already formatted as text."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table aligned for a terminal."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])


def _curve(histories: Sequence[Sequence[Mapping]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and std of ``key`` across seeds (epochs every seed has)."""
    length = min(len(h) for h in histories)
    values = np.array(
        [[math.nan if h[i].get(key) is None else h[i][key] for i in range(length)] for h in histories], dtype=float
    )
    return np.arange(length), np.nanmean(values, axis=0), np.nanstd(values, axis=0)


def plot_curves(
    histories: Mapping[str, Sequence[Sequence[Mapping]]],
    panels: Sequence[tuple[str, str, bool]],
    path: str | Path,
    title: str = "",
    colors: Mapping[str, str] | None = None,
    xlabel: str = "epoch",
) -> Path:
    """One panel per ``(history key, axis label, log scale)``; one line per method, mean ± std band.

    ``histories`` maps a method name to its per-seed lists of epoch records; ``colors`` (method ->
    matplotlib colour) keeps a method's colour the same across figures.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (key, label, log) in zip(axes[0], panels):
        for method, runs in histories.items():
            x, mean, std = _curve(runs, key)
            if np.all(np.isnan(mean)):
                continue
            (line,) = ax.plot(x, mean, label=method, marker=".", color=(colors or {}).get(method))
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
