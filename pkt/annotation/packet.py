"""``make``: a blind annotation packet from ``python -m pkt.run`` run directories.

A *condition* is one (method label, trait, aspect) of a run directory. Up to N answers are
drawn per condition with a seeded generator, all drawn answers are shuffled together, and
each gets an opaque id. Annotators receive ``packet.jsonl`` / ``packet.csv`` (id, trait,
question, response) and ``rubric.md``; which condition an id came from is only in
``key.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from pkt.artifacts import write_json_atomic, write_text_atomic
from pkt.errors import PktError
from pkt.eval.judge import RATING_MAX, RATING_MIN, build_rubric
from pkt.resources import CONF_DIR

log = logging.getLogger(__name__)

PACKET_FIELDS = ("id", "trait", "question", "response")
RATING_FIELDS = ("id", "trait", "fluency")
CONDITION_FIELDS = ("method", "trait", "aspect")
PACKET_FILES = ("packet.jsonl", "packet.csv", "rubric.md", "key.json", "manifest.json",
                "README.md")
# written by ``score``; stale once the packet is replaced
RESULT_FILES = ("annotation.md", "annotation.json", "annotation.png")
KEY_WARNING = "do not give this file to annotators: it says which condition each id came from"


@dataclass(frozen=True)
class Answer:
    """One response of a run directory, with where it came from."""

    run_dir: str
    line: int
    record: dict
    method: str
    trait: str
    aspect: str
    scorer: str | None = None
    params: dict | None = None  # the run's method parameters (None: base answers)

    @property
    def condition(self) -> tuple[str, str, str]:
        return self.method, self.trait, self.aspect


# ---------------------------------------------------------------- reading run dirs


def read_text(path: Path, what: str = "file") -> str:
    """The UTF-8 text of ``path`` (a BOM is dropped); a one-line error if it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise PktError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise PktError(f"cannot read {what} {path} ({e.strerror})") from None


def iter_jsonl(text: str):
    """``(line number, object, None)`` per non-blank line, ``(n, None, problem)`` if it is bad."""
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, None, f"not valid JSON ({e.msg})"
            continue
        yield (n, obj, None) if isinstance(obj, dict) else (n, None, "not a JSON object")


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line; a bad line is a ``file:line`` error."""
    out = []
    for n, obj, problem in iter_jsonl(read_text(path)):
        if problem is not None:
            raise PktError(f"{path}:{n}: {problem}")
        out.append((n, obj))
    return out


def _read_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PktError(f"{path}: not valid JSON") from None
    if not isinstance(m, dict):
        raise PktError(f"{path}: must be a JSON object")
    return m


def read_run(run_dir: Path) -> list[Answer]:
    """Every answer of one run directory, labelled with the run's condition.

    The condition comes from ``metrics.json`` and, where that is missing, from the records.
    """
    run_dir = Path(run_dir)
    gens = run_dir / "generations.jsonl"
    if not run_dir.is_dir():
        raise PktError(f"not a run directory: {run_dir}")
    if not gens.is_file():
        raise PktError(f"{run_dir}: no generations.jsonl (not a python -m pkt.run run directory)")
    metrics = _read_metrics(run_dir)
    profile = metrics.get("profile") if isinstance(metrics.get("profile"), dict) else None
    rows = read_jsonl(gens)
    answers = []
    for n, rec in rows:
        for field in ("question", "response"):
            if not isinstance(rec.get(field), str):
                raise PktError(f"{gens}:{n}: '{field}' is missing or not a string")
        # the record's own trait and aspect first: runs scored on all five traits hold
        # questions of other traits, where nothing was induced ("none")
        method = metrics.get("method") or rec.get("method")
        trait = rec.get("trait") or metrics.get("trait")
        aspect = rec["aspect"] if "aspect" in rec else metrics.get("aspect")
        if profile:
            method = f"{method} [{profile.get('label') or 'profile'}]"
        labels = {"method": method, "trait": trait, "aspect": aspect or "none"}
        for field, value in labels.items():
            if not isinstance(value, str) or not value:
                raise PktError(f"{gens}:{n}: no '{field}' in metrics.json or the record")
        scorer = metrics.get("trait_scorer")
        params = metrics.get("params") if isinstance(metrics.get("params"), dict) else None
        answers.append(Answer(run_dir=shown_path(run_dir), line=n, record=rec, scorer=scorer,
                              params=params, **labels))
        if isinstance(rec.get("base_response"), str):  # the plain model on the same question
            base = {**rec, "response": rec["base_response"],
                    "trait_score": rec.get("base_trait_score")}
            answers.append(Answer(run_dir=shown_path(run_dir), line=n, record=base,
                                  scorer=scorer, method="base", trait=trait, aspect="none"))
    return answers


def _setting(params: dict) -> dict:
    """A run's settings: its parameters, less the method name and, under strength=auto,
    the chosen strength (a result of the run, which differs between aspects)."""
    drop = {"method"} | ({"strength"} if params.get("strength_mode") == "auto" else set())
    return {k: v for k, v in params.items() if k not in drop}


def _show(v) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def label_variants(answers: list[Answer]) -> list[Answer]:
    """Runs of one method on one trait with different settings (two neuron budgets, a
    strength sweep) are different conditions: their method label gets the settings that
    differ, e.g. ``neuron (k_min=0.013)``. Runs of a single setting keep the plain name."""
    groups: dict[tuple, list[dict]] = {}
    for a in answers:
        if a.params is not None:
            st = _setting(a.params)
            g = groups.setdefault((a.method, a.trait), [])
            if st not in g:
                g.append(st)
    out = []
    for a in answers:
        g = groups.get((a.method, a.trait), []) if a.params is not None else []
        if len(g) > 1:
            st = _setting(a.params)
            keys = sorted({k for d in g for k in d if any(d.get(k) != e.get(k) for e in g)})
            a = dataclasses.replace(a, method=f"{a.method} (" + ", ".join(
                f"{k}={_show(st.get(k))}" for k in keys) + ")")
        out.append(a)
    return out


def unique(answers: list[Answer]) -> list[Answer]:
    """Drop repeats of the same answer of the same condition (base answers that several
    all-trait runs carry for the same questions)."""
    seen, out = set(), []
    for a in answers:
        k = (a.condition, a.record["question"], a.record["response"])
        if k not in seen:
            seen.add(k)
            out.append(a)
    return out


# ---------------------------------------------------------------- the rubric


def trait_facets(trait: str) -> tuple[str, list[str]]:
    """``(title, facets)`` from ``conf/trait/<trait>.yaml`` (the name itself if it is absent)."""
    path = CONF_DIR / "trait" / f"{trait}.yaml"
    if not path.is_file():
        log.warning("no %s: the rubric for '%s' lists no facets", path, trait)
        return trait[:1].upper() + trait[1:], []
    cfg = OmegaConf.load(path)
    return str(cfg.get("title") or trait), [str(f) for f in cfg.get("facets") or []]


def _rubric_body(rubric: str, trait: str | None = None, facets: list[str] | None = None) -> str:
    """The judge's rubric text (pkt.eval.judge) without the question and response slots."""
    text = build_rubric(rubric, "QUESTION", "RESPONSE", trait=trait, facets=facets)
    return text.split("\n### Question", 1)[0].strip()


def _quote(text: str) -> str:
    """A Markdown block quote that keeps the text's line breaks (the 1-5 scale lines)."""
    lines = text.splitlines()
    out = []
    for line, nxt in zip(lines, [*lines[1:], ""]):
        out.append(f"> {line}" + ("  " if line and nxt else "") if line else ">")
    return "\n".join(out)


def render_rubric(traits: list[str]) -> str:
    """``rubric.md``: instructions, one trait rubric per trait, the fluency rubric, the format."""
    lo, hi = RATING_MIN, RATING_MAX
    parts = [
        "# Annotation instructions",
        "",
        "Each item in `packet.csv` (or `packet.jsonl`) is a question and a response written by "
        "a language model. Rate every item twice, on whole numbers from "
        f"{lo} to {hi}:",
        "",
        "* **trait**: how strongly the response expresses the personality trait named in the "
        "item's `trait` column, using that trait's rubric below;",
        "* **fluency**: how fluently the response reads, using the fluency rubric below.",
        "",
        "Rate each item on its own. The items come in random order; some questions occur "
        "more than once, and identical responses may appear under different ids: rate each "
        "one as you see it. Do not try to guess how a response was produced.",
        "",
        "The rubric texts are the ones the LLM judge of `pkt` receives. They end by asking for "
        "a short explanation and a `Rating: [[r]]` line: that is for an LLM annotator; a human "
        "annotator only records the two numbers.",
        "",
    ]
    for trait in traits:
        title, facets = trait_facets(trait)
        parts += [f"## Trait rubric: {title} (`trait` = `{trait}`)", "",
                  _quote(_rubric_body("trait", trait, facets)), ""]
    parts += ["## Fluency rubric (every item)", "", _quote(_rubric_body("fluency")), "",
              "## What to hand back", "",
              "One file per annotator, with one line per item, either JSON lines:", "",
              "```", '{"id": "a0001", "trait": 4, "fluency": 5}',
              '{"id": "a0002", "trait": 2, "fluency": 3}', "```", "",
              "or CSV with this header (a spreadsheet saved as CSV is fine):", "",
              "```", ",".join(RATING_FIELDS), "a0001,4,5", "a0002,2,3", "```", "",
              f"Ratings are whole numbers from {lo} to {hi}. Every id must come from the packet "
              "and appear at most once. Fluency may be left empty if your study rates the "
              "trait only; an item left out entirely counts as not rated.", ""]
    return "\n".join(parts)


def _readme(n_items: int) -> str:
    return "\n".join([
        "# Annotation packet", "",
        f"{n_items} items made by `python -m pkt.annotate make`.", "",
        "Give annotators **only** `packet.csv` (or `packet.jsonl`) and `rubric.md`.", "",
        "**`key.json` must not be given to annotators**: it maps every item id to the run "
        "directory, method and aspect it came from, which would unblind the study. "
        "`manifest.json` names the run directories too; keep it with the key.", "",
        "When the ratings are back, one file per annotator:", "",
        "```", "python -m pkt.annotate score THIS_DIR ratings_A.csv ratings_B.jsonl "
        "--names A B", "```", ""])


# ---------------------------------------------------------------- make


def select(answers: list[Answer], per_condition: int, seed: int) -> list[Answer]:
    """Up to ``per_condition`` answers per condition (seeded), then all shuffled together.

    The result depends only on the answers and the seed, not on the order of the run dirs.
    """
    by_condition: dict[tuple, list[Answer]] = {}
    for a in answers:
        by_condition.setdefault(a.condition, []).append(a)
    rng = random.Random(seed)
    chosen = []
    for cond in sorted(by_condition):
        pool = sorted(by_condition[cond], key=lambda a: (a.run_dir, a.line))
        chosen += rng.sample(pool, min(per_condition, len(pool)))
    rng.shuffle(chosen)
    return chosen


def _packet_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=PACKET_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PktError(f"--out {out} exists and is not a directory")
    if not out.exists():
        return
    is_packet = (out / "key.json").exists() or (out / "packet.jsonl").exists()
    others = sorted(p.name for p in out.iterdir())
    if not is_packet and others:
        # never write a packet (and its README.md) among someone else's files, --force or not
        raise PktError(f"--out {out} is a folder that holds other files ({', '.join(others[:3])}"
                       f"{', ...' if len(others) > 3 else ''}); a packet needs a new or "
                       f"empty folder")
    held = [f for f in PACKET_FILES if (out / f).exists()]
    if held and not force:
        raise PktError(f"{out} already holds a packet ({', '.join(held)}); choose another "
                       f"--out or pass --force to replace it")


def run_dirs_in(path: Path) -> list[Path]:
    """``path`` itself when it is a run directory, else the run directories of a sweep
    (``outputs/multiruns/<date>/<time>``) or any folder above them, in natural order."""
    if (path / "generations.jsonl").exists() or not path.is_dir():
        return [path]
    from pkt.report import natural_key

    found = sorted((g.parent for g in path.rglob("generations.jsonl")), key=natural_key)
    return found or [path]  # read_run says what is missing


def shown_path(path: str | Path) -> str:
    """``path`` relative to the working folder when it lies inside it (files that are
    committed or shared then name no machine path), absolute otherwise."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def make_packet(run_dirs: list[str | Path], out: str | Path, per_condition: int = 20,
                seed: int = 0, force: bool = False, traits: list[str] | None = None) -> dict:
    """Write packet.jsonl/.csv, rubric.md, key.json, manifest.json, README.md; the manifest."""
    if not run_dirs:
        raise PktError("no run directories given")
    if per_condition < 1:
        raise PktError(f"--per-condition must be at least 1 (got {per_condition})")
    out = Path(out)
    _check_out(out, force)
    dirs = [r for d in run_dirs for r in run_dirs_in(Path(d))]
    answers = unique(label_variants([a for d in dirs for a in read_run(d)]))
    if traits:
        answers = [a for a in answers if a.trait in set(traits)]
    chosen = select(answers, per_condition, seed)
    if not chosen:
        raise PktError("nothing to annotate: the run directories hold no answers")
    width = max(4, len(str(len(chosen))))
    ids = [f"a{i:0{width}d}" for i in range(1, len(chosen) + 1)]
    rows = [{"id": i, "trait": a.trait, "question": a.record["question"],
             "response": a.record["response"]} for i, a in zip(ids, chosen)]
    key = {i: {"run_dir": a.run_dir, "method": a.method, "trait": a.trait, "aspect": a.aspect,
               "source": f"{Path(a.run_dir) / 'generations.jsonl'}:{a.line}", "line": a.line,
               "record_id": a.record.get("id"), "trait_score": a.record.get("trait_score"),
               "trait_scorer": a.scorer}
           for i, a in zip(ids, chosen)}
    counts: dict[str, int] = {}
    for a in chosen:
        label = "/".join(a.condition)
        counts[label] = counts.get(label, 0) + 1
    traits = sorted({a.trait for a in chosen})
    manifest = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "run_dirs": sorted({a.run_dir for a in answers}), "seed": seed,
                "per_condition": per_condition, "n_items": len(chosen),
                "n_conditions": len(counts), "traits": traits, "counts": dict(sorted(counts.items()))}
    out.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:
        (out / name).unlink(missing_ok=True)
    write_text_atomic(out / "packet.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                    for r in rows))
    write_text_atomic(out / "packet.csv", _packet_csv(rows))
    write_text_atomic(out / "rubric.md", render_rubric(traits))
    write_json_atomic(out / "key.json", {"warning": KEY_WARNING, "items": key})
    write_json_atomic(out / "manifest.json", manifest)
    write_text_atomic(out / "README.md", _readme(len(chosen)))
    return manifest


def load_key(packet_dir: str | Path) -> dict[str, dict]:
    """The key of a packet directory: id -> its condition and source."""
    path = Path(packet_dir) / "key.json"
    if not path.is_file():
        raise PktError(f"{packet_dir}: no key.json (not a packet made by python -m pkt.annotate make)")
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PktError(f"{path}: not valid JSON") from None
    items = key.get("items") if isinstance(key, dict) else None
    if not isinstance(items, dict) or not items:
        raise PktError(f"{path}: holds no items")
    for i, k in items.items():
        if not isinstance(k, dict) or any(not isinstance(k.get(f), str) for f in CONDITION_FIELDS):
            raise PktError(f"{path}: item '{i}' lacks method, trait or aspect")
    return items
