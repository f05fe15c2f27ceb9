"""Budget curve of NPTI: trait separation and capability against neurons per aspect.

    python experiments/npti_study/budget_curve.py RESULTS_DIR [--out PNG] [--max-ppl 1.15]

Reads the ``<trait>.jsonl`` files that ``ablate.py`` writes (a grid over ``k_min`` and
``strength``, deactivation on, the other knobs at their defaults) and draws, per trait, three
panels against the number of neurons per aspect (log scale): the high − low separation by
the offline scorer at every strength, the worse neutral-text perplexity ratio of the two
aspects, and the best separation whose perplexity ratio stays within ``--max-ppl`` (the
strength ``method.strength=auto`` would choose by perplexity alone). The figures also go
into ``budget_curve.json`` beside the plot.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DEFAULTS = {"selection": "npti", "deactivate": True, "keep_prob": 0.9, "include_prompt": False,
            "diff_threshold": 0.1}


def cells(path: Path) -> dict:
    """(k_min, strength) -> {"neurons", "sep", "ppl", "mc"} for the default knobs."""
    rows = defaultdict(dict)
    for line in path.read_text().splitlines():
        r = json.loads(line)
        c = r["cell"]
        if c.get("method") == "base" or any(c.get(k, v) != v for k, v in DEFAULTS.items()):
            continue
        rows[(float(c["k_min"]), float(c["strength"]))][r["aspect"]] = r
    out = {}
    for key, d in rows.items():
        if set(d) >= {"high", "low"}:
            h, lo = d["high"], d["low"]
            out[key] = {"neurons": (h["neurons"] + lo["neurons"]) / 2,
                        "sep": h["score"] - lo["score"],
                        "ppl": max(h["ppl_ratio"], lo["ppl_ratio"]),
                        "mc": min(h["mc_ratio"], lo["mc_ratio"])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--out", default=None)
    ap.add_argument("--max-ppl", type=float, default=1.15)
    a = ap.parse_args()
    root = Path(a.results)
    files = sorted(root.glob("*.jsonl"))
    data = {f.stem: cells(f) for f in files}
    data = {t: c for t, c in data.items() if len({k for k, _ in c}) > 1}
    if not data:
        raise SystemExit(f"no k_min x strength grid in {root}/*.jsonl")
    fig, axes = plt.subplots(len(data), 3, figsize=(13, 3.4 * len(data)), squeeze=False)
    summary = {}
    for row, (trait, c) in zip(axes, data.items()):
        strengths = sorted({s for _, s in c})
        kmins = sorted({k for k, _ in c})
        for s in strengths:
            pts = sorted((c[(k, s)]["neurons"], c[(k, s)]) for k in kmins if (k, s) in c)
            xs = [n for n, _ in pts]
            row[0].plot(xs, [p["sep"] for _, p in pts], "o-", label=f"strength {s:g}")
            row[1].plot(xs, [p["ppl"] for _, p in pts], "o-", label=f"strength {s:g}")
        best = []
        for k in kmins:
            ok = [(p["sep"], s, p) for (kk, s), p in c.items() if kk == k and p["ppl"] <= a.max_ppl]
            n = next(p["neurons"] for (kk, _), p in c.items() if kk == k)
            if ok:
                sep, s, p = max(ok, key=lambda t: t[0])
                best.append({"k_min": k, "neurons": n, "strength": s, "sep": sep, "ppl": p["ppl"],
                             "mc": p["mc"]})
            else:
                best.append({"k_min": k, "neurons": n, "strength": None, "sep": None})
        summary[trait] = {"cells": [{"k_min": k, "strength": s, **p} for (k, s), p in sorted(c.items())],
                          "best_within_ppl": best}
        pts = [b for b in best if b["sep"] is not None]
        row[2].plot([b["neurons"] for b in pts], [b["sep"] for b in pts], "s-", color="black")
        for b in pts:
            row[2].annotate(f"s={b['strength']:g}, ppl {b['ppl']:.2f}", (b["neurons"], b["sep"]),
                            fontsize=7, textcoords="offset points", xytext=(4, 4))
        for ax, title, ylab in zip(row, ("separation at each strength", "capability cost",
                                         f"best separation with ppl ratio <= {a.max_ppl:g}"),
                                   ("high − low (offline scorer)", "worse ppl ratio of the two aspects",
                                    "high − low (offline scorer)")):
            ax.set_xscale("log")
            ax.set_xlabel("neurons per aspect")
            ax.set_ylabel(ylab)
            ax.set_title(f"{trait}: {title}", fontsize=10)
        row[1].axhline(a.max_ppl, color="grey", ls="--", lw=0.8)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    out = Path(a.out) if a.out else root / "budget_curve.png"
    fig.savefig(out, dpi=110)
    (out.with_suffix(".json")).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
