"""Pictures saved as PNG in the run dir (and logged to W&B by the caller)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def neurons_per_layer(counts: dict[str, list[int]], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    n = len(next(iter(counts.values())))
    width = 0.8 / max(len(counts), 1)
    for k, (aspect, c) in enumerate(counts.items()):
        ax.bar([i + k * width for i in range(n)], c, width=width, label=f"{aspect} ({sum(c)})")
    ax.set_xlabel("layer")
    ax.set_ylabel("selected neurons")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
