"""What inducing one trait (or a profile) does to all five: base answers and the leakage matrix.

A run that scores more than its own trait (``score_traits=all``, and every profile run)
compares each trait's score with the plain model's on the same questions
(:func:`base_answers`, generated once per model, questions and generation config and kept
in the artifact store). The leakage matrix has one row per induced trait and aspect and one
column per scored trait: the change of the trait score against base. Its diagonal is the
intended effect; the rest is leakage.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from pkt import prompts
from pkt.artifacts import ArtifactStore, write_json_atomic, write_text_atomic
from pkt.profiles import TRAIT_NAMES
from pkt.records import METRICS, read_metrics

log = logging.getLogger(__name__)

BASE_VERSION = 1


def base_key(ctx, questions: list[str]) -> dict:
    return {"stage": "base-answers", "version": BASE_VERSION,
            "model_fingerprint": ctx.lm.fingerprint, "gen": dict(ctx.gen.__dict__),
            "prompt": prompts.NEUTRAL,
            "questions": hashlib.sha256("\n".join(questions).encode()).hexdigest()[:16],
            "n": len(questions)}


def base_answers(ctx, questions: list[str]) -> tuple[list[str], bool]:
    """The plain model's greedy answers to ``questions`` under the neutral prompt, and
    whether they came from the cache."""
    from pkt.generation import chat_prompt, generate

    tok = ctx.lm.tokenizer

    def compute() -> list[str]:
        gens = generate(ctx.lm.model, tok, [chat_prompt(tok, prompts.neutral(q)) for q in questions],
                        ctx.gen, desc="base answers", progress=ctx.progress)
        return [g.text for g in gens]

    store = ArtifactStore(Path(ctx.cache_dir) / "artifacts")
    return store.cached_json("base_answers", base_key(ctx, questions), compute,
                             name="answers.json")


def matrix_rows(metrics_list: list[dict]) -> list[dict]:
    """One row per run that has a per-trait table with deltas: its label and the deltas."""
    rows = []
    for m in metrics_list:
        table = m.get("traits") or {}
        if not any(isinstance(v, dict) and v.get("delta") is not None for v in table.values()):
            continue
        if m.get("profile"):
            label = m["profile"].get("label") or "profile"
        elif m.get("trait"):
            label = f"{m['trait']} {m.get('aspect')}"
        else:
            continue
        rows.append({"label": label, "method": m.get("method"), "run_dir": m.get("_run_dir"),
                     "induced": {t: v.get("aspect") for t, v in table.items() if v.get("aspect")},
                     "delta": {t: v.get("delta") for t, v in table.items()},
                     "score": {t: (v.get("score") or {}).get("mean") for t, v in table.items()},
                     "base": {t: (v.get("base") or {}).get("mean") for t, v in table.items()}})
    order = {f"{t} {a}": i for i, (t, a) in enumerate((t, a) for t in TRAIT_NAMES
                                                     for a in ("high", "low"))}
    rows.sort(key=lambda r: (r["method"] or "", order.get(r["label"], len(order)), r["label"]))
    return rows


def render(rows: list[dict]) -> str:
    cols = [t for t in TRAIT_NAMES if any(t in r["delta"] for r in rows)]
    out = ["| method | induced | " + " | ".join(cols) + " | off-diagonal mean abs |",
           "|---|---|" + "---|" * len(cols) + "---|"]
    for r in rows:
        cells, off = [], []
        for c in cols:
            d = r["delta"].get(c)
            mark = c in r["induced"]
            cells.append("–" if d is None else (f"**{d:+.2f}**" if mark else f"{d:+.2f}"))
            if d is not None and not mark:
                off.append(abs(d))
        cells.append(f"{sum(off) / len(off):.2f}" if off else "–")
        out.append(f"| {r['method']} | {r['label']} | " + " | ".join(cells) + " |")
    out += ["", "Cells: change of the trait score (1–5) against the plain model on the same "
            "questions; bold: the induced trait(s). A high aspect should move its own column "
            "up, a low aspect down; everything else is leakage."]
    return "\n".join(out)


def heatmap(rows: list[dict], path: Path, title: str = "leakage: change of trait score vs base") -> Path:
    from pkt.plots import leakage_heatmap

    cols = [t for t in TRAIT_NAMES if any(t in r["delta"] for r in rows)]
    values = [[r["delta"].get(c) for c in cols] for r in rows]
    marks = [[c in r["induced"] for c in cols] for r in rows]
    labels = [r["label"] if len({x["method"] for x in rows}) == 1 else f"{r['method']}: {r['label']}"
              for r in rows]
    return leakage_heatmap(values, labels, cols, marks, path, title)


def write_leakage(run_dirs: list[Path], out_dir: Path, tracker=None) -> Path | None:
    """``leakage.md`` + ``leakage.json`` + ``leakage.png`` for the runs under ``run_dirs``."""
    metrics = []
    for d in run_dirs:
        d = Path(d)
        for f in [d] if d.is_file() else sorted(d.rglob(METRICS)):
            try:
                m = read_metrics(f)
            except (OSError, ValueError):
                continue
            m["_run_dir"] = os.path.relpath(f.parent, out_dir)  # no machine paths in the output
            metrics.append(m)
    rows = matrix_rows(metrics)
    if not rows:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    png = heatmap(rows, out_dir / "leakage.png")
    write_json_atomic(out_dir / "leakage.json", rows)
    write_text_atomic(out_dir / "leakage.md", "# Leakage matrix\n\n" + render(rows) +
                      "\n\n![leakage](leakage.png)\n")
    if tracker is not None:
        tracker.log_image("leakage/matrix", png)
        tracker.log_table("leakage", [{"method": r["method"], "induced": r["label"],
                                       **{c: r["delta"].get(c) for c in TRAIT_NAMES}}
                                      for r in rows])
    return out_dir / "leakage.md"
