"""``score``: figures from annotators' ratings, written as annotation.md/.json/.png.

Per condition (method, trait, aspect): each annotator's mean rating, and the pooled mean,
where an item's pooled rating is the mean over the annotators who rated it and the
condition's pooled figures are taken over those item ratings. sd is the sample standard
deviation. Agreement: quadratic-weighted Cohen's kappa, Spearman per item and over
condition means for each pair of annotators, and Krippendorff's alpha over all of them
(interval metric as the headline, ordinal alongside). The run's own trait_score (the
offline scorer, or the judge if the run used one) is compared with the pooled ratings.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pkt.annotation import stats  # noqa: E402
from pkt.annotation.packet import shown_path  # noqa: E402
from pkt.annotation.ratings import Ratings  # noqa: E402
from pkt.artifacts import write_json_atomic, write_text_atomic  # noqa: E402
from pkt.report import ASPECT_ORDER, DASH, METHOD_ORDER, TRAITS  # noqa: E402
from pkt.report import _save as save_png  # noqa: E402  (atomic PNG write)

RUBRICS = ("trait", "fluency")
ALPHA_METRICS = ("interval", "ordinal")
MARKERS = "o^sDvP*X"


def _rank(order: list[str], value: str) -> tuple[int, str]:
    return (order.index(value) if value in order else len(order), value)


def condition_sort_key(cond: tuple[str, str, str]):
    method, trait, aspect = cond
    return _rank(TRAITS, trait), _rank(METHOD_ORDER, method), _rank(ASPECT_ORDER, aspect)


def _number(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _by_condition(key: dict[str, dict]) -> dict[tuple, list[str]]:
    groups: dict[tuple, list[str]] = {}
    for i, k in key.items():
        groups.setdefault((k["method"], k["trait"], k["aspect"]), []).append(i)
    return {c: sorted(groups[c]) for c in sorted(groups, key=condition_sort_key)}


def pooled_items(annotators: list[Ratings], rubric: str) -> dict[str, float]:
    """id -> mean rating over the annotators who rated that item."""
    values: dict[str, list[int]] = {}
    for a in annotators:
        for i, r in getattr(a, rubric).items():
            values.setdefault(i, []).append(r)
    return {i: sum(v) / len(v) for i, v in values.items()}


def _offline(key: dict[str, dict]) -> dict[str, float]:
    return {i: s for i, k in key.items() if (s := _number(k.get("trait_score"))) is not None}


def condition_rows(key, annotators: list[Ratings], rubric: str) -> list[dict]:
    """One row per condition: n items, pooled and per-annotator mean/sd/n (and offline)."""
    pooled = pooled_items(annotators, rubric)
    offline = _offline(key) if rubric == "trait" else {}
    rows = []
    for (method, trait, aspect), ids in _by_condition(key).items():
        row = {"method": method, "trait": trait, "aspect": aspect, "n_items": len(ids),
               "pooled": stats.mean_sd(pooled.get(i) for i in ids),
               "annotators": {a.name: stats.mean_sd(getattr(a, rubric).get(i) for i in ids)
                              for a in annotators}}
        if rubric == "trait":
            row["offline"] = stats.mean_sd(offline.get(i) for i in ids)
        rows.append(row)
    return rows


def _diff(high: dict | None, low: dict | None) -> float | None:
    if not high or not low or high["mean"] is None or low["mean"] is None:
        return None
    return high["mean"] - low["mean"]


def separations(rows: list[dict], names: list[str]) -> list[dict]:
    """High − low mean per (method, trait) where both aspects are present."""
    cells = {(r["method"], r["trait"], r["aspect"]): r for r in rows}
    out = []
    for method, trait in dict.fromkeys((r["method"], r["trait"]) for r in rows):
        high, low = cells.get((method, trait, "high")), cells.get((method, trait, "low"))
        if high is None or low is None:
            continue
        out.append({"method": method, "trait": trait,
                    "pooled": _diff(high["pooled"], low["pooled"]),
                    "annotators": {n: _diff(high["annotators"][n], low["annotators"][n])
                                   for n in names},
                    "offline": _diff(high.get("offline"), low.get("offline"))})
    return out


def _cell_means(rows: list[dict], field) -> list[float | None]:
    return [field(r)["mean"] for r in rows]


def _paired(xs, ys) -> tuple[list, list]:
    keep = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    return [x for x, _ in keep], [y for _, y in keep]


def _corr(xs, ys) -> dict:
    x, y = _paired(xs, ys)
    return {"spearman": stats.spearman(x, y), "n": len(x)}


def agreement(annotators: list[Ratings], rows: list[dict], rubric: str) -> dict:
    """Pairwise kappa and Spearman, and Krippendorff's alpha over every annotator."""
    pairs = []
    for a, b in itertools.combinations(annotators, 2):
        ra, rb = getattr(a, rubric), getattr(b, rubric)
        common = sorted(set(ra) & set(rb))
        x, y = [ra[i] for i in common], [rb[i] for i in common]
        by_cond = _corr(_cell_means(rows, lambda r, n=a.name: r["annotators"][n]),
                        _cell_means(rows, lambda r, n=b.name: r["annotators"][n]))
        pairs.append({"a": a.name, "b": b.name, "n_items": len(common),
                      "kappa_quadratic": stats.weighted_kappa(x, y),
                      "spearman_items": stats.spearman(x, y),
                      "spearman_conditions": by_cond["spearman"],
                      "n_conditions": by_cond["n"]})
    ids = sorted(set().union(*(getattr(a, rubric) for a in annotators)))
    units = [[getattr(a, rubric).get(i) for a in annotators] for i in ids]
    alpha = {m: (stats.krippendorff_alpha(units, m) if len(annotators) > 1 else None)
             for m in ALPHA_METRICS}
    return {"pairs": pairs, "alpha": alpha, "alpha_metric": "interval",
            "n_units": sum(sum(v is not None for v in u) > 1 for u in units)}


def offline_agreement(key, annotators: list[Ratings], rows: list[dict]) -> dict:
    """Spearman of the run's trait_score with the pooled rating: per answer and per cell."""
    pooled, offline = pooled_items(annotators, "trait"), _offline(key)
    out = {}
    traits = list(dict.fromkeys(r["trait"] for r in rows))
    for trait in [*traits, "all"]:
        ids = [i for i in sorted(key) if trait in ("all", key[i]["trait"])]
        cells = [r for r in rows if trait in ("all", r["trait"])]
        out[trait] = {
            "answers": _corr([offline.get(i) for i in ids], [pooled.get(i) for i in ids]),
            "cells": _corr(_cell_means(cells, lambda r: r["offline"]),
                           _cell_means(cells, lambda r: r["pooled"])),
        }
    scorers = sorted({str(k["trait_scorer"]) for k in key.values() if k.get("trait_scorer")})
    return {"scorers": scorers, "n_scored": len(offline), "by_trait": out}


def build_figures(packet_dir, key, annotators: list[Ratings], warnings: list[str]) -> dict:
    """Every figure of the score step, as one JSON-ready dict."""
    names = [a.name for a in annotators]
    conditions = {r: condition_rows(key, annotators, r) for r in RUBRICS}
    return {
        "packet": shown_path(packet_dir), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "n_items": len(key), "annotators": [a.summary() for a in annotators],
        "warnings": warnings, "conditions": conditions,
        "separation": separations(conditions["trait"], names),
        "agreement": {r: agreement(annotators, conditions[r], r) for r in RUBRICS},
        "trait_score_vs_annotators": offline_agreement(key, annotators, conditions["trait"]),
        "definitions": {
            "pooled": "an item's pooled rating is the mean over the annotators who rated it; "
                      "a condition's pooled mean/sd/n are over those item ratings",
            "sd": "sample standard deviation (n - 1)",
            "kappa_quadratic": "Cohen's kappa with quadratic weights on the 1-5 scale, "
                               "over the items both annotators rated",
            "alpha": "Krippendorff's alpha over all annotators; interval metric is the "
                     "headline figure, ordinal metric alongside",
            "spearman": "Spearman's rho with average ranks for ties",
            "separation": "mean(high) - mean(low) for one method and trait",
        },
    }


# ---------------------------------------------------------------- markdown


def _f(x, digits: int = 2, signed: bool = False) -> str:
    if x is None:
        return DASH
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _msd(s: dict) -> str:
    if s["mean"] is None:
        return DASH
    return _f(s["mean"]) + (f" ± {_f(s['sd'])}" if s["sd"] is not None else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _condition_table(rows: list[dict], names: list[str], offline: bool) -> list[str]:
    header = ["method", "trait", "aspect", "n", "pooled mean ± sd", *names]
    header += ["trait_score"] if offline else []
    body = []
    for r in rows:
        line = [r["method"], r["trait"], r["aspect"], str(r["pooled"]["n"]), _msd(r["pooled"]),
                *(_f(r["annotators"][n]["mean"]) for n in names)]
        body.append(line + ([_f(r["offline"]["mean"])] if offline else []))
    return _table(header, body)


def _agreement_table(ag: dict) -> list[str]:
    body = [[f"{p['a']} × {p['b']}", str(p["n_items"]), _f(p["kappa_quadratic"], 3),
             _f(p["spearman_items"], 3), f"{_f(p['spearman_conditions'], 3)} "
             f"({p['n_conditions']})"] for p in ag["pairs"]]
    lines = _table(["pair", "items", "kappa (quadratic)", "Spearman (items)",
                    "Spearman (condition means, n)"], body) if body else []
    lines += [f"Krippendorff's alpha over all annotators ({ag['n_units']} items rated by at "
              f"least two): interval {_f(ag['alpha']['interval'], 3)}, ordinal "
              f"{_f(ag['alpha']['ordinal'], 3)}.", ""]
    return lines


def render_markdown(fig: dict) -> str:
    """``annotation.md``: the figures as readable tables."""
    names = [a["name"] for a in fig["annotators"]]
    lines = ["# Annotation results", "", f"Packet: `{fig['packet']}`, {fig['n_items']} items.",
             ""]
    lines += _table(["annotator", "file", "rated", "with fluency", "not rated", "skipped lines"],
                    [[a["name"], f"`{a['file']}`", str(a["n_rated"]), str(a["n_fluency"]),
                      str(a["n_missing"]), str(a["n_problems"])] for a in fig["annotators"]])
    lines += ["## Trait ratings per condition", "",
              "Pooled: each item's mean over annotators, then mean ± sample sd over items. "
              "Annotator columns are that annotator's mean; `trait_score` is the run's own "
              "score (" + (", ".join(fig["trait_score_vs_annotators"]["scorers"]) or DASH) + ").",
              "", *_condition_table(fig["conditions"]["trait"], names, offline=True)]
    lines += ["## Separation (high − low trait rating)", ""]
    lines += _table(["method", "trait", "pooled", *names, "trait_score"],
                    [[s["method"], s["trait"], _f(s["pooled"], signed=True),
                      *(_f(s["annotators"][n], signed=True) for n in names),
                      _f(s["offline"], signed=True)] for s in fig["separation"]]) \
        if fig["separation"] else ["No method has both a high and a low condition.", ""]
    lines += ["## Fluency ratings per condition", "",
              *_condition_table(fig["conditions"]["fluency"], names, offline=False)]
    for rubric in RUBRICS:
        lines += [f"## Agreement between annotators: {rubric}", ""]
        lines += _agreement_table(fig["agreement"][rubric]) if len(names) > 1 else \
            ["Agreement needs at least two annotators.", ""]
    lines += ["## Run trait_score vs pooled annotator rating (Spearman)", ""]
    by_trait = fig["trait_score_vs_annotators"]["by_trait"]
    lines += _table(["trait", "per answer (n)", "over condition means (n)"],
                    [[t, f"{_f(v['answers']['spearman'], 3)} ({v['answers']['n']})",
                      f"{_f(v['cells']['spearman'], 3)} ({v['cells']['n']})"]
                     for t, v in by_trait.items()])
    if fig["warnings"]:
        lines += ["## Warnings", "", *(f"* {w}" for w in fig["warnings"]), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------- plot


def plot(fig_data: dict, path: Path) -> Path:
    """Per trait: pooled condition means by method, high vs low bars, annotator points."""
    rows = fig_data["conditions"]["trait"]
    names = [a["name"] for a in fig_data["annotators"]]
    traits = list(dict.fromkeys(r["trait"] for r in rows))
    methods = {t: list(dict.fromkeys(r["method"] for r in rows if r["trait"] == t)) for t in traits}
    widest = max(len(m) for m in methods.values())
    fig, axes = plt.subplots(1, len(traits), figsize=(max(4.5, 1.1 * widest + 2) * len(traits), 3.8),
                             squeeze=False)
    aspects = sorted({r["aspect"] for r in rows}, key=lambda a: _rank(ASPECT_ORDER, a))
    width = 0.8 / max(len(aspects), 1)
    for ax, trait in zip(axes[0], traits):
        ms = methods[trait]
        for k, aspect in enumerate(aspects):
            cells = {r["method"]: r for r in rows if r["trait"] == trait and r["aspect"] == aspect}
            xs = [i + (k - (len(aspects) - 1) / 2) * width for i in range(len(ms))]
            means = [cells[m]["pooled"]["mean"] if m in cells else None for m in ms]
            ax.bar(xs, [v if v is not None else 0 for v in means], width=width,
                   color=f"C{k}", alpha=0.75, label=aspect)
            for j, name in enumerate(names):
                pts = [(x, cells[m]["annotators"][name]["mean"]) for x, m in zip(xs, ms)
                       if m in cells and cells[m]["annotators"][name]["mean"] is not None]
                off = (j - (len(names) - 1) / 2) * width / (len(names) + 1)
                ax.scatter([x + off for x, _ in pts], [y for _, y in pts], s=16, color="0.15",
                           marker=MARKERS[j % len(MARKERS)], zorder=3,
                           label=name if k == 0 else None)
        ax.set_xticks(range(len(ms)), ms, rotation=20)
        ax.set_ylim(0.8, 5.2)  # room for annotator points at 1 and 5
        ax.set_ylabel("trait rating (1-5)")
        ax.set_title(f"{trait}: annotator ratings")
        ax.legend(fontsize=8)
    return save_png(fig, path)


def write_outputs(packet_dir, fig: dict) -> dict[str, Path]:
    """annotation.json, annotation.md and annotation.png in the packet directory."""
    out = Path(packet_dir)
    paths = {"json": out / "annotation.json", "md": out / "annotation.md",
             "png": out / "annotation.png"}
    write_json_atomic(paths["json"], fig)
    write_text_atomic(paths["md"], render_markdown(fig))
    plot(fig, paths["png"])
    return paths
