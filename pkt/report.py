"""Summarise run directories (one run or a whole sweep) into tables and plots.

``python -m pkt.report <sweep dir or run dirs ...> [--out DIR] [--title TEXT]`` collects
every ``metrics.json`` under the given paths and writes ``report.md`` (a paper-style table
of trait scores per method and aspect, the high - low separation, a strength sweep table),
``report.csv`` (one row per run) and PNG plots. Every score field is optional: a missing
value is shown as ``–``.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pkt.artifacts import atomic_path, write_text_atomic  # noqa: E402
from pkt.errors import PktError  # noqa: E402
from pkt.profiles import TRAIT_NAMES  # noqa: E402
from pkt.records import read_metrics  # noqa: E402

TRAITS = list(TRAIT_NAMES)
METHOD_ORDER = ["base", "prompt_simple", "prompt_p2", "neuron", "dpn", "lora", "actadd"]
ASPECT_ORDER = ["high", "low"]
DEFAULT_STRENGTH = 1.0
DASH = "–"
CSV_COLUMNS = ["run_dir", "method", "aspect", "trait", "model", "strength", "trait_score_mean",
               "trait_score_sd", "n", "fluency_mean", "ppl_mean", "distinct_2",
               "capability_mc_ratio", "capability_ppl_ratio", "total_seconds"]


@dataclass
class Run:
    run_dir: str
    method: str
    aspect: str
    trait: str
    model: str | None
    strength: float | None
    trait_score_mean: float | None
    trait_score_sd: float | None
    n: int | None
    fluency_mean: float | None
    ppl_mean: float | None
    distinct_2: float | None
    capability_mc_ratio: float | None
    capability_ppl_ratio: float | None
    total_seconds: float | None
    trait_scorer: str | None = None
    profile: str | None = None  # a profile run (several traits): in the leakage section only


# ---------------------------------------------------------------- reading


def _num(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or x != x:
        return None
    return float(x)


def _mean_of(x) -> float | None:
    """A score stored as ``{"mean": ...}`` or as a bare number."""
    return _num(x.get("mean")) if isinstance(x, dict) else _num(x)


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _parse(m: dict, run_dir: str) -> Run:
    params = m.get("params") if isinstance(m.get("params"), dict) else {}
    method = m.get("method") or params.get("method") or "?"
    ts = m.get("trait_score")
    n = _num(_get(ts, "n")) if isinstance(ts, dict) else None
    n = n if n is not None else _num(m.get("n"))
    return Run(
        run_dir=run_dir, method=str(method), aspect=str(m.get("aspect") or "?"),
        trait=str(m.get("trait") or "?"), model=m.get("model"),
        strength=None if params.get("strength_mode") == "auto" else _num(params.get("strength")),
        trait_score_mean=_mean_of(ts), trait_score_sd=_num(_get(ts, "sd")),
        n=int(n) if n is not None else None,
        fluency_mean=_mean_of(m.get("fluency")), ppl_mean=_mean_of(m.get("ppl")),
        distinct_2=_num(m.get("distinct_2")),
        capability_mc_ratio=_num(_get(m, "capability", "mc_ratio")),
        capability_ppl_ratio=_num(_get(m, "capability", "ppl_ratio")),
        total_seconds=_num(_get(m, "timings", "total")),
        trait_scorer=m.get("trait_scorer"),
        profile=(m["profile"].get("label") or "profile") if isinstance(m.get("profile"), dict)
        else None,
    )


def natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def _find(path: Path) -> list[Path]:
    if not path.exists():
        raise PktError(f"no such file or directory: {path}")
    if path.is_file():
        if path.name != "metrics.json":
            raise PktError(f"not a run directory or metrics.json: {path}")
        return [path]
    return sorted(path.rglob("metrics.json"), key=natural_key)


def collect(paths: list[Path]) -> list[Run]:
    """Every readable metrics.json under ``paths``; unreadable ones are skipped with a warning."""
    files, seen = [], set()
    for p in paths:
        for f in _find(p):
            if f.resolve() not in seen:
                seen.add(f.resolve())
                files.append(f)
    if not files:
        raise PktError(f"no metrics.json found under: {', '.join(str(p) for p in paths)}")
    runs = []
    for f in files:
        try:
            m = read_metrics(f)
        except (OSError, ValueError) as e:
            print(f"pkt: warning: skipping {f}: unreadable metrics ({e})", file=sys.stderr)
            continue
        runs.append(_parse(m, str(f.parent)))
    if not runs:
        raise PktError(f"no readable metrics.json under: {', '.join(str(p) for p in paths)}")
    return runs


# ---------------------------------------------------------------- aggregation


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _order(values, preferred) -> list:
    values = set(values)
    return [v for v in preferred if v in values] + sorted(values - set(preferred))


def _select(runs: list[Run]) -> list[Run]:
    """Runs for one table cell: those at the default strength if present, else all."""
    default = [r for r in runs if r.strength == DEFAULT_STRENGTH]
    return default or runs


class Table:
    """Runs grouped into (method, aspect, trait) cells."""

    def __init__(self, runs: list[Run]):
        runs = [r for r in runs if r.profile is None]
        self.runs = runs
        self.methods = _order({r.method for r in runs}, METHOD_ORDER)
        self.aspects = _order({r.aspect for r in runs}, ASPECT_ORDER)
        self.traits = _order({r.trait for r in runs} | set(TRAITS), TRAITS)
        self.cells: dict[tuple, list[Run]] = {}
        for r in runs:
            self.cells.setdefault((r.method, r.aspect, r.trait), []).append(r)

    def cell(self, method, aspect, trait) -> list[Run]:
        return _select(self.cells.get((method, aspect, trait), []))

    def multi(self, method, aspect, trait) -> bool:
        return len(self.cells.get((method, aspect, trait), [])) > 1

    def score(self, method, aspect, trait) -> float | None:
        return _mean(r.trait_score_mean for r in self.cell(method, aspect, trait))

    def row_runs(self, method, aspect) -> list[Run]:
        return [r for t in self.traits for r in self.cell(method, aspect, t)]

    def rows(self) -> list[tuple[str, str]]:
        return [(m, a) for m in self.methods for a in self.aspects
                if any((m, a, t) in self.cells for t in self.traits)]

    def separation(self, method, trait) -> float | None:
        hi, lo = self.score(method, "high", trait), self.score(method, "low", trait)
        return hi - lo if hi is not None and lo is not None else None

    def sweep_methods(self) -> list[str]:
        return [m for m in self.methods
                if len({r.strength for r in self.runs if r.method == m and r.strength is not None}) > 1]

    def strength_points(self) -> dict[tuple, list[tuple[float, float | None, float | None, int]]]:
        """(method, trait, aspect) -> [(strength, trait score, fluency, runs)] where swept."""
        swept = self.sweep_methods()
        out: dict[tuple, dict[float, list[Run]]] = {}
        for r in self.runs:
            if r.method in swept and r.strength is not None:
                out.setdefault((r.method, r.trait, r.aspect), {}).setdefault(r.strength, []).append(r)
        keys = sorted(out, key=lambda k: (self.methods.index(k[0]), self.traits.index(k[1]),
                                          self.aspects.index(k[2])))
        return {k: [(s, _mean(r.trait_score_mean for r in rs), _mean(r.fluency_mean for r in rs),
                     len(rs)) for s, rs in sorted(out[k].items())] for k in keys if len(out[k]) > 1}


# ---------------------------------------------------------------- markdown


def _f(x, fmt="{:.2f}") -> str:
    return DASH if x is None else fmt.format(x)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _score_cell(t: Table, method, aspect, trait) -> str:
    runs = t.cell(method, aspect, trait)
    mean = _mean(r.trait_score_mean for r in runs)
    if mean is None:
        return DASH
    sd = _mean(r.trait_score_sd for r in runs)
    text = f"{mean:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")
    return text + (" †" if t.multi(method, aspect, trait) else "")


def render_markdown(t: Table, title: str) -> str:
    out = [f"# {title}", "",
           "Trait score (1–5, mean ± SD over test questions): for `high` rows higher is better, "
           "for `low` rows lower is better.", "", "## Trait scores", ""]
    rows = []
    for m, a in t.rows():
        rr = t.row_runs(m, a)
        rows.append([m, a, *[_score_cell(t, m, a, tr) for tr in t.traits],
                     _f(_mean(r.fluency_mean for r in rr)),
                     _f(_mean(r.capability_mc_ratio for r in rr)),
                     _f(_mean(r.capability_ppl_ratio for r in rr))])
    out += _md_table(["method", "aspect", *t.traits, "fluency", "capability", "ppl ratio"], rows)
    n_multi = sum(len(v) > 1 for v in t.cells.values())
    if n_multi:
        out += ["", f"† {n_multi} cell(s) combine several runs: a cell uses the run(s) at the "
                f"default strength {DEFAULT_STRENGTH} if present, otherwise the mean over all of "
                "them (mean of the runs' means and SDs). Fluency, capability and ppl ratio use the "
                "same runs."]

    out += ["", "## Separation (high − low, bigger is better)", ""]
    seps = []
    for m in t.methods:
        vals = [t.separation(m, tr) for tr in t.traits]
        if any(v is not None for v in vals):
            seps.append([m, *[_f(v, "{:+.2f}") for v in vals], _f(_mean(vals), "{:+.2f}")])
    out += _md_table(["method", *t.traits, "mean"], seps) if seps else \
        ["No method has both a high and a low run of the same trait."]

    points = t.strength_points()
    if points:
        out += ["", "## Strength sweep", ""]
        rows = [[m, tr, a, f"{s:g}", _f(sc), _f(fl), str(k)]
                for (m, tr, a), pts in points.items() for s, sc, fl, k in pts]
        out += _md_table(["method", "trait", "aspect", "strength", "trait score", "fluency",
                          "runs"], rows)

    scorers = sorted({r.trait_scorer for r in t.runs if r.trait_scorer}) or ["(not recorded)"]
    models = sorted({r.model for r in t.runs if r.model}) or ["(not recorded)"]
    out += ["", "## Setup", "", f"- trait scorer: {', '.join(scorers)}",
            f"- model: {', '.join(models)}", f"- runs: {len(t.runs)}",
            "", "## Runs included", ""]
    out += [f"- `{r.run_dir}` ({r.method}, {r.trait}, {r.aspect}"
            + (f", strength {r.strength:g}" if r.strength is not None else "") + ")"
            for r in t.runs]
    return "\n".join(out) + "\n"


def render_csv(runs: list[Run]) -> tuple[str, list[dict]]:
    rows = [{c: asdict(r)[c] for c in CSV_COLUMNS} for r in runs]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows([{k: "" if v is None else v for k, v in row.items()} for row in rows])
    return buf.getvalue(), rows


# ---------------------------------------------------------------- plots


def _save(fig, path: Path) -> Path:
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:  # keeps the .png suffix: savefig picks PNG
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path


def plot_scores(t: Table, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(t.methods) + 2), 3.8))
    width = 0.8 / max(len(t.aspects), 1)
    for k, a in enumerate(t.aspects):
        vals = [_mean(t.score(m, a, tr) for tr in t.traits) for m in t.methods]
        xs = [i + (k - (len(t.aspects) - 1) / 2) * width for i in range(len(t.methods))]
        ax.bar(xs, [v if v is not None else 0 for v in vals], width=width, label=a)
    base = _mean(t.score("base", a, tr) for a in t.aspects for tr in t.traits)
    if base is not None:
        ax.axhline(base, ls="--", color="0.3", label=f"base ({base:.2f})")
    ax.set_xticks(range(len(t.methods)), t.methods, rotation=20)
    ax.set_ylim(1, 5)
    ax.set_ylabel("trait score (mean over traits)")
    ax.set_title("Trait score by method")
    ax.legend()
    return _save(fig, path)


def plot_separation(t: Table, path: Path) -> Path:
    traits = [tr for tr in t.traits if any(t.separation(m, tr) is not None for m in t.methods)]
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(traits) + 2), 3.8))
    width = 0.8 / max(len(t.methods), 1)
    for k, m in enumerate(t.methods):
        vals = [t.separation(m, tr) for tr in traits]
        xs = [i + (k - (len(t.methods) - 1) / 2) * width for i in range(len(traits))]
        ax.bar(xs, [v if v is not None else 0 for v in vals], width=width, label=m)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(range(len(traits)), traits)
    ax.set_ylabel("high − low trait score")
    ax.set_title("Separation (bigger is better)")
    if t.methods:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_strength(t: Table, path: Path) -> Path:
    points = t.strength_points()
    fluency = any(fl is not None for pts in points.values() for _, _, fl, _ in pts)
    fig, axes = plt.subplots(1, 2 if fluency else 1, figsize=(10 if fluency else 6, 3.8),
                             squeeze=False)
    several = len({k[0] for k in points}) > 1
    for (m, tr, a), pts in points.items():
        label = (f"{m} " if several else "") + f"{tr} {a}"
        xs = [p[0] for p in pts]
        axes[0][0].plot(xs, [p[1] for p in pts], marker="o", label=label)
        if fluency:
            axes[0][1].plot(xs, [p[2] for p in pts], marker="o", label=label)
    axes[0][0].set_ylabel("trait score")
    axes[0][0].set_ylim(1, 5)
    if fluency:
        axes[0][1].set_ylabel("fluency")
    for ax in axes[0]:
        ax.set_xlabel("strength")
        ax.legend(fontsize=8)
    axes[0][0].set_title("Trait score vs strength")
    return _save(fig, path)


# ---------------------------------------------------------------- entry points


def build_report(paths: list[str | Path], out: Path | None = None, title: str | None = None,
                 tracker=None) -> Path:
    """Write report.md, report.csv and plots for the runs under ``paths``; return report.md."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise PktError("no run directories given")
    runs = collect(paths)
    if out is None:
        first = paths[0]
        sweep = first.is_dir() and len(_find(first)) > 1
        out = first if sweep else (first if first.is_dir() else first.parent) / "report"
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PktError(f"cannot create output folder {out} ({e.strerror})") from None
    t = Table(runs)
    md = out / "report.md"
    text, rows = render_csv(runs)
    write_text_atomic(out / "report.csv", text)
    images = [plot_scores(t, out / "scores_by_method.png"),
              plot_separation(t, out / "separation.png")]
    if t.sweep_methods():
        images.append(plot_strength(t, out / "strength_curve.png"))
    text = render_markdown(t, title or f"pkt report: {paths[0].resolve().name}")
    from pkt.eval.leakage import write_leakage

    leak = write_leakage(paths, out)  # runs scored on all five traits against base
    if leak is not None:
        body = leak.read_text().split("\n", 2)[2]  # without its title
        text += "\n## Leakage (change of every trait score against base)\n\n" + body
        images.append(out / "leakage.png")
    write_text_atomic(md, text)
    if tracker is not None:
        for img in images:
            tracker.log_image(f"report/{img.stem}", img)
        tracker.log_table("report/runs", rows)
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pkt.report",
                                 description="Summarise pkt run directories into tables and plots.")
    ap.add_argument("paths", nargs="+", help="a sweep folder, run folders or metrics.json files")
    ap.add_argument("--out", type=Path, help="output folder (default: the sweep folder, "
                    "or <run dir>/report)")
    ap.add_argument("--title", help="report title")
    args = ap.parse_args(argv)
    from pkt import cli as cmdline

    return cmdline.guarded(lambda: print(build_report(args.paths, out=args.out,
                                                      title=args.title)))


if __name__ == "__main__":
    raise SystemExit(main())
