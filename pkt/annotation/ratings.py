"""One annotator's ratings file (JSON lines or CSV), validated line by line.

Each problem is reported as ``file:line: what is wrong``: a line that is not JSON, an
unknown or duplicate id, a trait rating that is missing, not a whole number or outside
1..5, a fluency rating that is given but invalid. Packet ids the file leaves out are
counted (allowed, with a warning). A file with no usable line at all is one error.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pkt.annotation.packet import RATING_FIELDS, iter_jsonl, read_text
from pkt.errors import PktError
from pkt.eval.judge import RATING_MAX, RATING_MIN

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv", ".tsv", ".txt")
_INT_RE = re.compile(r"^\s*[+-]?\d+\s*$")
SHOW_PROBLEMS = 3


@dataclass
class Ratings:
    """The valid ratings of one annotator, and what was wrong with the rest."""

    name: str
    path: str
    trait: dict[str, int] = field(default_factory=dict)
    fluency: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"name": self.name, "file": self.path, "n_rated": len(self.trait),
                "n_fluency": len(self.fluency), "n_missing": len(self.missing),
                "n_problems": len(self.problems)}


def _rating(value, what: str, required: bool) -> tuple[int | None, str | None]:
    """``(rating, None)`` or ``(None, problem)``; an empty optional rating is ``(None, None)``."""
    if value is None or isinstance(value, str) and not value.strip():
        return None, (f"missing {what} rating" if required else None)
    if isinstance(value, bool):
        return None, f"{what} rating {json.dumps(value)} is not a whole number"
    if isinstance(value, int):
        r = value
    elif isinstance(value, str) and _INT_RE.match(value):
        r = int(value)
    else:
        return None, f"{what} rating {json.dumps(value)} is not a whole number"
    if not RATING_MIN <= r <= RATING_MAX:
        return None, f"{what} rating {r} is out of range ({RATING_MIN}..{RATING_MAX})"
    return r, None


def _csv_rows(text: str, path: str):
    first = text.splitlines()[0] if text.strip() else ""
    try:
        dialect = csv.Sniffer().sniff(first, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if "id" not in header or "trait" not in header:
        raise PktError(f"{path}:1: a CSV ratings file needs a header with columns "
                       f"{','.join(RATING_FIELDS)} (found: {first.strip()[:60]!r})")
    reader.fieldnames = header
    for row in reader:
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        yield reader.line_num, row, None


def _is_jsonl(path: Path, text: str) -> bool:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return True
    if suffix in CSV_SUFFIXES:
        return False
    return text.lstrip().startswith("{")


def read_ratings(path: str | Path, packet_ids, name: str | None = None) -> Ratings:
    """Read one annotator's file against the packet's ids; problems are collected, not raised.

    Raises :class:`PktError` only for a file that cannot be used at all (unreadable, empty,
    a CSV without the header, or no valid line).
    """
    path = Path(path)
    label = str(path)
    text = read_text(path, "ratings file")
    if not text.strip():
        raise PktError(f"{label}: empty ratings file")
    ids = set(packet_ids)
    out = Ratings(name=name or path.stem, path=label)
    seen: dict[str, int] = {}
    rows = iter_jsonl(text) if _is_jsonl(path, text) else _csv_rows(text, label)
    for n, row, problem in rows:
        if problem is None:
            problem = _take(row, n, ids, seen, out)
        if problem is not None:
            out.problems.append(f"{label}:{n}: {problem}")
    if not out.trait:
        first = f" (first problem: {out.problems[0]})" if out.problems else ""
        raise PktError(f"{label}: no valid rating in the file{first}")
    out.missing = sorted(ids - set(out.trait))
    return out


def _take(row: dict, n: int, ids: set, seen: dict, out: Ratings) -> str | None:
    """Validate one row and store it in ``out``; the problem with it, if any."""
    item = row.get("id")
    item = item.strip() if isinstance(item, str) else item
    if item is None or item == "":
        return "missing id"
    if not isinstance(item, str):
        return f"id {json.dumps(item)} is not a string"
    if item not in ids:
        return f"unknown id '{item}' (not in this packet)"
    if item in seen:
        return f"duplicate id '{item}' (first at line {seen[item]})"
    seen[item] = n
    trait, problem = _rating(row.get("trait"), "trait", required=True)
    if problem is None:
        fluency, problem = _rating(row.get("fluency"), "fluency", required=False)
    if problem is not None:
        return f"id '{item}': {problem}"
    out.trait[item] = trait
    if fluency is not None:
        out.fluency[item] = fluency
    return None


def check(ratings: Ratings, skip_invalid: bool = False) -> list[str]:
    """Warnings for usable ratings; a :class:`PktError` naming the first problems otherwise."""
    warnings = []
    if ratings.problems:
        if not skip_invalid:
            shown = "; ".join(ratings.problems[:SHOW_PROBLEMS])
            more = len(ratings.problems) - SHOW_PROBLEMS
            tail = f"; and {more} more" if more > 0 else ""
            raise PktError(f"{len(ratings.problems)} invalid line(s): {shown}{tail} "
                           f"(fix them, or pass --skip-invalid to leave them out)")
        warnings += [f"skipped {p}" for p in ratings.problems]
    if ratings.missing:
        warnings.append(f"{ratings.path}: {len(ratings.missing)} of "
                        f"{len(ratings.missing) + len(ratings.trait)} packet items not rated")
    return warnings
