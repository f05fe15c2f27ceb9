"""Summarise ablate.py results: one markdown table and a plot per trait.

    python experiments/npti_study/summarize.py [results dir]

Writes ``summary.md`` and ``separation_vs_ppl.png`` into the results dir: for each cell,
the offline scorer's mean trait score for high and low, their separation, and the
capability ratios of both aspects (neutral-text perplexity, MC accuracy on 20 items).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KNOBS = ("selection", "strength", "k_min", "deactivate", "keep_prob", "include_prompt")


def label(cell: dict) -> str:
    return ", ".join(f"{k}={cell[k]}" for k in KNOBS if k in cell)


def load(path: Path) -> tuple[dict, dict]:
    cells: dict = {}
    base = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r["cell"].get("method") == "base":
            base[r["stats"]] = r["score"]
            continue
        cells.setdefault((r["stats"], label(r["cell"])), {})[r["aspect"]] = r
    return base, cells


def main(root: Path) -> None:
    out = ["# NPTI ablation on SmolLM2-135M-Instruct (offline scorer, 20 test questions)", ""]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, f in zip(list(axes) * 5, sorted(root.glob("*.jsonl"))):
        base, cells = load(f)
        out += [f"## {f.stem}", "", f"base model: {', '.join(f'{v:.2f}' for v in base.values())}", "",
                "| identification | cell | high | low | high − low | ppl ratio (high / low) | MC ratio (high / low) |",
                "|---|---|---|---|---|---|---|"]
        for (stats, lab), d in cells.items():
            if set(d) != {"high", "low"}:
                continue
            h, lo = d["high"], d["low"]
            sep = h["score"] - lo["score"]
            worst = max(h["ppl_ratio"], lo["ppl_ratio"])
            out.append(f"| {stats} | {lab} | {h['score']:.2f} | {lo['score']:.2f} | {sep:+.2f} | "
                       f"{h['ppl_ratio']:.3f} / {lo['ppl_ratio']:.3f} | "
                       f"{h['mc_ratio']:.2f} / {lo['mc_ratio']:.2f} |")
            ax.scatter(worst, sep, color="tab:blue" if "npti" in lab else "tab:orange")
            ax.annotate(f"{stats} s={h['cell']['strength']:g} k={h['cell']['k_min']:g}"
                        + ("" if h["cell"]["deactivate"] else " nodeact"), (worst, sep), fontsize=6)
        ax.axvline(1.15, color="grey", ls="--", lw=0.8)
        ax.axhline(1.0, color="grey", ls=":", lw=0.8)
        ax.set_title(f.stem)
        ax.set_xlabel("worse ppl ratio of the two aspects")
        ax.set_ylabel("high − low (offline scorer)")
        out.append("")
    fig.tight_layout()
    fig.savefig(root / "separation_vs_ppl.png", dpi=120)
    (root / "summary.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results")
