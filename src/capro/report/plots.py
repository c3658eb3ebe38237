"""Report figures: matplotlib (Agg canvas, no global backend state) -> PNG bytes -> data URI."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

STAGE_COLOURS = {"stage1": "#1f77b4", "stage2": "#d62728", "stage3b": "#2ca02c"}
ACTION_COLOURS = {"kept": "#4c9a5b", "relabeled": "#e0a030", "removed": "#c0392b"}


def png_bytes(fig: Figure, *, dpi: int = 100) -> bytes:
    """Render ``fig`` to PNG bytes (no metadata, so no tool URL ends up in the file)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an inline <img>."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def plot_curves(logs: dict[str, dict[str, list[float | None]]]) -> bytes | None:
    """One panel per numeric log column, the stages one after another along a global epoch axis.

    ``logs``: stage -> column -> per-epoch values (``epoch`` is the x axis, not a panel).
    Returns None when there is nothing to plot.
    """
    columns: list[str] = []
    for cols in logs.values():
        columns += [c for c in cols if c != "epoch" and c not in columns]
    if not columns:
        return None
    ncols = min(3, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    offset = 0
    bounds: list[int] = []
    spans: dict[str, np.ndarray] = {}
    for stage, cols in logs.items():
        n = max(len(v) for v in cols.values())
        spans[stage] = offset + np.arange(1, n + 1)
        offset += n
        bounds.append(offset)
    for ax, col in zip(axes, columns):
        for stage, cols in logs.items():
            if col not in cols:
                continue
            y = np.array([np.nan if v is None else v for v in cols[col]], dtype=float)
            ax.plot(spans[stage][: len(y)], y, marker="o", markersize=3,
                    color=STAGE_COLOURS.get(stage, "k"), label=stage)
        for b in bounds[:-1]:
            ax.axvline(b + 0.5, color="0.75", linewidth=0.8, linestyle="--")
        ax.set_title(col, fontsize=10)
        ax.set_xlabel("epoch (all stages)", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    for ax in axes[len(columns):]:
        ax.set_visible(False)
    return png_bytes(fig)


def plot_confusion(cm: np.ndarray, names: Sequence[str]) -> bytes:
    """Row-normalised confusion matrix [C, C] (rows = true class, columns = prediction)."""
    c = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    side = min(12.0, 2.5 + 0.45 * c)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    if c <= 40:
        ax.set_xticks(range(c), [str(n) for n in names], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(c), [str(n) for n in names], fontsize=8)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    return png_bytes(fig)


def plot_cleaning(names: Sequence[str], counts: dict[str, Sequence[int]]) -> bytes:
    """Stacked bars per class of kept / relabelled / removed web samples (``counts[action]`` [C])."""
    c = len(names)
    fig = Figure(figsize=(min(14.0, 4 + 0.5 * c), 3.4), layout="constrained")
    ax = fig.subplots()
    bottom = np.zeros(c)
    for action, colour in ACTION_COLOURS.items():
        vals = np.asarray(counts.get(action, [0] * c), dtype=float)
        ax.bar(range(c), vals, bottom=bottom, color=colour, label=action)
        bottom += vals
    if c <= 60:
        ax.set_xticks(range(c), [str(n) for n in names], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("web samples")
    ax.set_title("offline cleaning by web label", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return png_bytes(fig)


def plot_label_quality(quality: np.ndarray, issue: np.ndarray) -> bytes:
    """Histogram of label quality [N] in [0, 1], split by ``issue`` [N] bool."""
    fig = Figure(figsize=(5.5, 3.2), layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(0, 1, 26)
    ax.hist([quality[~issue], quality[issue]], bins=bins, stacked=True,
            color=[ACTION_COLOURS["kept"], ACTION_COLOURS["removed"]],
            label=["kept as is", "label issue (relabelled or removed)"])
    ax.set_xlabel("label quality (score of the web label)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    return png_bytes(fig)
