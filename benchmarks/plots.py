"""The benchmark plots (PNG, matplotlib's non-interactive Agg backend).

    python benchmarks/plots.py     # redraw every plot from benchmarks/results/*.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_quality(agg: dict[str, dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """Bars of test top-1 and noise-detection F1 per row (mean, error bar = std over seeds)."""
    rows = list(agg)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key, label in ((axes[0], "top1", "test top-1 (%)"), (axes[1], "noise_f1", "noise-detection F1 (%)")):
        means = [(agg[r]["metrics"][key]["mean"] or 0.0) * 100 for r in rows]
        stds = [(agg[r]["metrics"][key]["std"] or 0.0) * 100 for r in rows]
        colours = ["#c44e52" if r == "cleanlab" else "#4c72b0" if r.startswith("capro") else "#8c8c8c"
                   for r in rows]
        ax.bar(range(len(rows)), means, yerr=stds, color=colours, capsize=3)
        ax.set_xticks(range(len(rows)), rows, rotation=35, ha="right")
        ax.set_ylabel(label)
        present = [m for m, r in zip(means, rows) if agg[r]["metrics"][key]["mean"] is not None]
        if present:
            lo = min(present)
            ax.set_ylim(max(0.0, lo - 10), min(100.0, max(present) + 5))
        for i, r in enumerate(rows):
            if agg[r]["metrics"][key]["mean"] is None:
                ax.text(i, ax.get_ylim()[0], "n/a", ha="center", va="bottom", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_test_curves(results: list[dict[str, Any]], path: Path, *, rows: tuple[str, ...] = ("ce", "capro-ft", "oracle"),
                     title: str = "") -> Path:
    """Test top-1 after every epoch (all stages in a row), mean over seeds with a min-max band."""
    import numpy as np

    colours = {"ce": "#8c8c8c", "capro-ft": "#4c72b0", "oracle": "#55a868", "capro": "#64b5cd",
               "cleanlab": "#c44e52"}
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for row in rows:
        curves = [r["curves"]["test_top1"] for r in results if r["row"] == row and r.get("curves")]
        curves = [c for c in curves if c and None not in c]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        y = np.array([c[:n] for c in curves], dtype=float) * 100
        x = np.arange(1, n + 1)
        ax.plot(x, y.mean(axis=0), color=colours.get(row, "k"), label=f"{row} ({len(curves)} seeds)")
        ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=colours.get(row, "k"), alpha=0.15)
    ax.set_xlabel("epoch (all training stages)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_perf(ratios: list[tuple[str, float, float | None]], path: Path, *, title: str = "") -> Path:
    """Horizontal bars of ``(label, value, target)`` ratios on a log axis, targets as ticks."""
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(ratios) + 1.4))
    labels = [r[0] for r in ratios]
    values = [r[1] for r in ratios]
    ax.barh(range(len(ratios)), values, color="#4c72b0")
    for i, (_, value, target) in enumerate(ratios):
        ax.text(value, i, f" {value:.2f}×", va="center", fontsize=9)
        if target is not None:
            ax.plot([target, target], [i - 0.4, i + 0.4], color="#c44e52", lw=2)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(ratios)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (log scale; red tick = target)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    sys.path.insert(0, str(HERE))
    from common import perf_ratios

    from capro.utils.io import read_json

    results = HERE / "results"
    for path in sorted(results.glob("quality_*.json")):
        summary = read_json(path)
        if summary.get("aggregate"):
            size = summary["size"]
            tag = f"quality_{size['name']}_{summary['profile']}"
            plot_quality(summary["aggregate"], HERE / f"{tag}.png",
                         title=f"{summary['profile']} profile, {size['name']} size "
                               f"({size['train_size']} train images)")
    for name in ("perf", "perf_quick"):
        if (results / f"{name}.json").is_file():
            plot_perf(perf_ratios(read_json(results / f"{name}.json")), HERE / f"{name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
