"""PersonalityBench: questions and persona descriptions in the release's file format.

Layout of a data folder (JSON Lines, one object per line)::

    search/<Trait>.json   {"question": ..., ["BFI", "tag", "facet", "topic", "sign"]}
    test/<Trait>.json     {"question": ..., ...}
    description.json      {"Openness": ..., "Openness_reversed": ..., ...}  (ten keys)

Every line of the files a run uses is validated; a bad line is one error naming file:line.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from pkt.errors import PktError
from pkt.params import AT_LEAST_1, Rule

TRAITS = ("Openness", "Conscientiousness", "Extraversion", "Agreeableness", "Neuroticism")
PERSONA_KEYS = tuple(k for t in TRAITS for k in (t, f"{t}_reversed"))


@dataclass
class Bench:
    trait: str  # capitalised, e.g. "Agreeableness"
    search: list[dict]
    test: list[dict]
    personas: dict[str, list[str]]  # {"high": [...], "low": [...]}
    data_hash: str
    files: dict[str, str] = field(default_factory=dict)

    def persona_for(self, aspect: str, i: int | str, seed: int) -> str:
        """The persona description drawn (seeded) for question ``i`` (its index, or its
        text) under ``aspect``."""
        pool = self.personas[aspect]
        rng = random.Random(f"{seed}:{aspect}:{i}")
        return pool[rng.randrange(len(pool))]


def iter_jsonl(path: Path):
    """``(line number, object)`` for every non-blank line of a JSON Lines file; a line that
    is not a JSON object is one error naming ``file:line``."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PktError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise PktError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            yield n, obj


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    """Read and validate a JSON Lines file: every line an object with non-empty ``required``."""
    if not path.is_file():
        raise PktError(f"data file not found: {path}")
    rows = []
    for n, obj in iter_jsonl(path):
        for k in required:
            if k not in obj:
                raise PktError(f"{path}:{n}: missing key '{k}'")
            v = obj[k]
            if not isinstance(v, str) or not v.strip():
                raise PktError(f"{path}:{n}: empty or non-text value for '{k}'")
        obj["_line"] = n
        rows.append(obj)
    if not rows:
        raise PktError(f"{path}: no records")
    return rows


def _sample(rows: list[dict], n: int | None, seed: int, what: str, path: Path) -> list[dict]:
    if n is None:
        return list(rows)
    n = int(n)
    if n <= 0:
        raise PktError(f"{what} must be positive, got {n}")
    if n > len(rows):
        raise PktError(f"{what}={n} is larger than the {len(rows)} records in {path}")
    rng = random.Random(seed)
    idx = sorted(rng.sample(range(len(rows)), n))
    return [rows[i] for i in idx]


def trait_title(trait: str) -> str:
    t = str(trait).strip().capitalize()
    if t not in TRAITS:
        raise PktError(f"unknown trait '{trait}' (choose from: {', '.join(x.lower() for x in TRAITS)})")
    return t


def check_data_folder(root: Path) -> None:
    """``data.path`` must be an existing folder (not a file: a common slip is to give one of
    the JSON files inside it)."""
    if root.is_file():
        raise PktError(f"data folder {root} is a file, not a folder (data.path names the "
                       f"folder that holds search/, test/ and description.json)")
    if not root.is_dir():
        raise PktError(f"data folder not found: {root}")


def load_bench(path: str, trait: str, n_search: int | None = None, n_test: int | None = None,
               seed: int = 0) -> Bench:
    root = Path(path)
    check_data_folder(root)
    title = trait_title(trait)
    search_f, test_f, desc_f = (root / "search" / f"{title}.json", root / "test" / f"{title}.json",
                                root / "description.json")
    search = read_jsonl(search_f, ("question",))
    test = read_jsonl(test_f, ("question",))
    desc = read_jsonl(desc_f, (title, f"{title}_reversed"))
    personas = {"high": [d[title] for d in desc], "low": [d[f"{title}_reversed"] for d in desc]}
    h = hashlib.sha256()
    for f in (search_f, test_f, desc_f):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return Bench(
        trait=title,
        search=_sample(search, n_search, seed, "data.n_search", search_f),
        test=_sample(test, n_test, seed, "data.n_test", test_f),
        personas=personas,
        data_hash=h.hexdigest()[:16],
        files={"search": str(search_f), "test": str(test_f), "description": str(desc_f)},
    )


# what load_bench's parameters accept beyond their annotations (pkt.params)
load_bench.RULES = {"n_search": AT_LEAST_1, "n_test": AT_LEAST_1, "path": Rule(nonempty=True)}
