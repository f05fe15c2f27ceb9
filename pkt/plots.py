"""Pictures saved as PNG in the run dir (and logged to W&B by the caller)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pkt.artifacts import atomic_path  # noqa: E402


def _finish(fig, ax, title: str, path: Path) -> Path:
    """Title, legend, layout; saved atomically as PNG and closed."""
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:  # keeps the suffix: savefig picks PNG
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def neurons_per_layer(counts: dict[str, list[int]], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    n = len(next(iter(counts.values())))
    width = 0.8 / max(len(counts), 1)
    for k, (aspect, c) in enumerate(counts.items()):
        ax.bar([i + k * width for i in range(n)], c, width=width, label=f"{aspect} ({sum(c)})")
    ax.set_xlabel("layer")
    ax.set_ylabel("selected neurons")
    return _finish(fig, ax, title, path)


def diff_distribution(diffs, selected_min: dict[str, float], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(diffs, bins=120, color="0.4")
    ax.set_yscale("log")
    for aspect, v in selected_min.items():
        x = v if aspect == "high" else -v
        ax.axvline(x, ls="--", color="C0" if aspect == "high" else "C1",
                   label=f"{aspect} cut-off ({x:+.3f})")
    ax.set_xlabel("P_high - P_low")
    ax.set_ylabel("neurons")
    return _finish(fig, ax, title, path)


def leakage_heatmap(values: list[list[float | None]], rows: list[str], cols: list[str],
                    marks: list[list[bool]], path: Path, title: str) -> Path:
    """Rows: induced trait and aspect; columns: scored traits; colour: change vs base."""
    import math

    import numpy as np

    a = np.array([[math.nan if v is None else v for v in r] for r in values], dtype=float)
    lim = max(0.25, float(np.nanmax(np.abs(a))) if np.isfinite(a).any() else 1.0)
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 2.8, 0.45 * len(rows) + 1.6))
    im = ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            if np.isfinite(a[i, j]):
                ax.text(j, i, f"{a[i, j]:+.2f}", ha="center", va="center", fontsize=8,
                        fontweight="bold" if marks[i][j] else "normal")
            if marks[i][j]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5,
                                           color="black"))
    ax.set_xticks(range(len(cols)), cols, rotation=20)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("scored trait")
    ax.set_ylabel("induced")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="trait score - base (1-5 scale)")
    fig.tight_layout()
    with atomic_path(path) as tmp:  # keeps the suffix: savefig picks PNG
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
