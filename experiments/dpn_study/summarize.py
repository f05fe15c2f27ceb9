"""The study's table and plot from its run folders (experiments/dpn_study/README.md).

    python experiments/dpn_study/summarize.py --runs outputs/multiruns/dpn_study \
        --out experiments/dpn_study/results

Reads every ``metrics.json`` under the sweeps of :data:`CELLS` and writes
``<out>/cells.json`` (one row per run: cell, trait, aspect, offline trait score, strength,
capability ratios, neurons, run folder), ``<out>/runs/<cell>_<trait>_<aspect>/`` (each
run's ``generations.jsonl`` and ``metrics.json``), ``<out>/summary.md`` (the table, and the
diagnosis cells of ``<out>/diagnosis.jsonl`` when there) and ``<out>/separation.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CELLS = [  # (sweep folder, label: statistics from / edit)
    ("base", "base (plain model, neutral prompt)"),
    ("npti", "NPTI as published (answers / NPTI edit)"),
    ("npti_prompts", "NPTI from prompts (prompts / NPTI edit)"),
    ("npti_prompts_k230", "NPTI from prompts, 230 neurons (`diff_threshold=1.01`)"),
    ("dpn", "DPN-LE as published (prompts / DPN edit)"),
    ("dpn_answers", "DPN-LE from answers (answers / DPN edit)"),
    ("dpn_d0", "DPN-LE, no d criterion (prompts / DPN edit, `d_threshold=0`)"),
    ("dpn_answers_d0", "DPN-LE, no d criterion (answers / DPN edit, `d_threshold=0`)"),
    ("npti_noclamp", "NPTI, clamp off (`deactivate=false`)"),
]
TRAITS = ("openness", "conscientiousness", "agreeableness")


def rows(runs: Path) -> list[dict]:
    out = []
    for sweep, label in CELLS:
        for m in sorted((runs / sweep).glob("*/metrics.json")):
            d = json.loads(m.read_text())
            cap = d.get("capability") or {}
            p = d.get("params", {})
            out.append({
                "cell": sweep, "label": label, "trait": d["trait"], "aspect": d["aspect"],
                "score": d["trait_score"]["mean"], "sd": d["trait_score"]["sd"],
                "n": d["trait_score"]["n"], "strength": p.get("strength"),
                "strength_auto": "strength_auto" in d,
                "ppl_ratio": cap.get("ppl_ratio"), "mc_ratio": cap.get("mc_ratio"),
                "n_mc": cap.get("n_mc"),
                "neurons": d.get("neurons_edited") or (
                    d.get(f"neurons_{d['aspect']}") if "neurons_high" in d else None),
                "neurons_high": d.get("neurons_high"), "neurons_low": d.get("neurons_low"),
                "source": p.get("source"), "run": str(m.parent),
            })
    return out


def fmt(x, nd=2, sign=False):
    if x is None:
        return "–"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def table(data: list[dict]) -> str:
    by = {(r["cell"], r["trait"], r["aspect"]): r for r in data}
    lines = ["| cell | trait | high | low | high − low | high − base | strength (high / low) "
             "| PPL ratio (high / low) | MC ratio (high / low) | neurons (high / low set) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for trait in TRAITS:
        base = by.get(("base", trait, "high"))
        if base is None:
            continue
        lines.append(f"| base | {trait} | {fmt(base['score'])} | (same answers) | – | – | – "
                     f"| 1 | 1 | – |")
        for cell, label in CELLS[1:]:
            h, lo = by.get((cell, trait, "high")), by.get((cell, trait, "low"))
            if h is None and lo is None:
                continue
            g = lambda r, k, nd=2: fmt(r[k], nd) if r else "–"  # noqa: E731
            sep = fmt(h["score"] - lo["score"], sign=True) if h and lo else "–"
            up = fmt(h["score"] - base["score"], sign=True) if h else "–"
            nr = h or lo
            neurons = (f"{nr['neurons_high']} / {nr['neurons_low']}"
                       if nr.get("neurons_high") is not None else "–")
            lines.append(f"| {label} | {trait} | {g(h, 'score')} | {g(lo, 'score')} | {sep} | {up} "
                         f"| {g(h, 'strength', 1)} / {g(lo, 'strength', 1)} "
                         f"| {g(h, 'ppl_ratio', 3)} / {g(lo, 'ppl_ratio', 3)} "
                         f"| {g(h, 'mc_ratio', 3)} / {g(lo, 'mc_ratio', 3)} | {neurons} |")
    return "\n".join(lines)


def diagnosis_table(path: Path, data: list[dict]) -> str:
    if not path.is_file():
        return ""
    base = {r["trait"]: r["score"] for r in data if r["cell"] == "base"}
    npti = {(r["trait"], r["aspect"]): r for r in data if r["cell"] == "npti"}
    lines = ["| trait | cell | strength | clamp of the low set | target set | high score "
             "| − base | PPL ratio | MC ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for t in TRAITS:
        r = npti.get((t, "high"))
        if r is None:
            continue
        lines.append(f"| {t} | default (the NPTI run) | {r['strength']:.1f} | on | NPTI's "
                     f"| {r['score']:.2f} | {r['score'] - base.get(t, r['score']):+.2f} "
                     f"| {fmt(r['ppl_ratio'], 3)} | {fmt(r['mc_ratio'], 3)} |")
        for line in path.read_text().splitlines():
            d = json.loads(line)
            if d["trait"] != t:
                continue
            lines.append(f"| {t} | {d['cell']} | {d['strength']:.1f} | "
                         f"{'on' if d['deactivate'] else 'off'} | "
                         f"{'random (same amounts)' if d['random_target'] else 'NPTI' + chr(39) + 's'} "
                         f"| {d['score']:.2f} | {d['score'] - base.get(t, d['score']):+.2f} "
                         f"| {d['ppl_ratio']:.3f} | {d['mc_ratio']:.3f} |")
    return "\n".join(lines)


def plot(data: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["cell"], r["trait"], r["aspect"]): r for r in data}
    traits = [t for t in TRAITS if ("base", t, "high") in by]
    cells = ["npti", "npti_prompts", "npti_prompts_k230", "dpn", "dpn_answers", "dpn_d0",
             "dpn_answers_d0"]
    fig, axes = plt.subplots(1, len(traits), figsize=(5.5 * len(traits), 3.6), squeeze=False)
    for ax, trait in zip(axes[0], traits):
        base = by[("base", trait, "high")]["score"]
        for i, c in enumerate(cells):
            for aspect, mk, col, dx in (("high", "^", "tab:red", -0.12),
                                        ("low", "v", "tab:blue", 0.12)):
                r = by.get((c, trait, aspect))
                if r:
                    ax.errorbar(i + dx, r["score"], yerr=r["sd"] / max(r["n"], 1) ** 0.5, fmt=mk,
                                color=col, label=aspect if i == 0 else None)
        ax.axhline(base, color="grey", ls="--", label="base")
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels(["NPTI\nanswers", "NPTI\nprompts", "NPTI 230\nprompts",
                            "DPN-LE\nprompts", "DPN-LE\nanswers", "DPN d=0\nprompts",
                            "DPN d=0\nanswers"], fontsize=8)
        ax.set_title(f"{trait}: offline trait score (mean ± s.e.)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="outputs/multiruns/dpn_study")
    ap.add_argument("--out", default="experiments/dpn_study/results")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = rows(Path(a.runs))
    # every run's answers and metrics, kept with the study (outputs/ is not in git)
    import shutil

    for r in data:
        d = out / "runs" / f"{r['cell']}_{r['trait']}_{r['aspect']}"
        d.mkdir(parents=True, exist_ok=True)
        for f in ("generations.jsonl", "metrics.json"):
            shutil.copyfile(Path(r["run"]) / f, d / f)
    (out / "cells.json").write_text(json.dumps(data, indent=1) + "\n")
    diag = diagnosis_table(out / "diagnosis.jsonl", data)
    text = table(data) + ("\n\nDiagnosis of NPTI's high aspect:\n\n" + diag if diag else "")
    (out / "summary.md").write_text(text + "\n")
    plot(data, out / "separation.png")
    print(text)


if __name__ == "__main__":
    main()
