"""The benchmark's privacy-utility plot (matplotlib, rendered to PNG bytes)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def privacy_utility_plot(means: Sequence[Mapping[str, Any]], headline: str) -> bytes:
    """PNG bytes: linkability (``headline`` R1-U) vs face detection rate and vs BRISQUE, one line per method."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), dpi=100)
    axes = figure.subplots(1, 2)
    utilities = [
        ("face_detection_rate", "face detection rate of generations (higher = better)"),
        ("brisque_mean", "BRISQUE of generations (lower = better)"),
    ]
    methods = list(dict.fromkeys(m["method"] for m in means))
    chances = [m[f"{headline}_r1u_chance"] for m in means if m.get(f"{headline}_r1u_chance") is not None]
    chance = float(np.mean(chances)) if chances else None
    for ax, (column, label) in zip(axes, utilities):
        plotted = False
        for method in methods:
            points = [m for m in means if m["method"] == method]
            x = [np.nan if p.get(column) is None else p[column] for p in points]
            y = [np.nan if p.get(f"{headline}_r1u") is None else p[f"{headline}_r1u"] for p in points]
            if method == "vanilla":
                ax.plot(x, y, "k*", markersize=14, label="vanilla (no defense)")
            else:
                ax.plot(x, y, "o-", label=method)
                for xi, yi, p in zip(x, y, points):
                    if np.isfinite(xi) and np.isfinite(yi):
                        ax.annotate(p["level"], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
            plotted |= bool((np.isfinite(np.array(x, dtype=float)) & np.isfinite(np.array(y, dtype=float))).any())
        if chance is not None:
            ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label="chance")
        if not plotted:
            if all(m.get(f"{headline}_r1u") is None for m in means):
                reason = "R1-U undefined: no face detected in any generation"
            else:
                reason = "BRISQUE undefined: images below 64 px"
            ax.text(0.5, 0.5, f"nothing to plot\n({reason})", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(label)
        ax.set_ylabel(f"{headline} R1-U (lower = more private)")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8, frameon=False)
    figure.suptitle("privacy-utility (mean over identities; one point per privacy level)")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def png_array(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


__all__ = ["png_array", "privacy_utility_plot"]
