"""The speedup plot of a benchmark run: torch.nn time / rnnfused time against the
hidden size, one line per kind and mode across the grid's cases (which differ in
T, B and layers too: bench.md has each case); needs matplotlib, skipped without it."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def write_plot(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    """rows: bench.json's rows. Returns whether a PNG was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench.py: matplotlib is not installed; no plot written", file=sys.stderr)
        return False
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        nn, fused = row["times_ms"].get("torch.nn"), row["times_ms"].get("rnnfused")
        if nn and fused:
            label = f"{row['kind']} {row['mode']}"
            series[label].append((row["H"], nn / fused))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label, points in sorted(series.items()):
        points.sort()
        style = "-" if label.endswith("fwd") else "--"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=label)
    ax.axhline(1.0, color="grey", linewidth=1, linestyle="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("hidden size")
    ax.set_ylabel("speedup: torch.nn time / rnnfused time")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
