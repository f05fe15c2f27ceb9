"""The on-disk cache of an HTTP judge's outputs, so that a re-run makes no request.

One JSON file per (judge model, endpoint, rubric and its version, trait, facets, question,
response), at ``<cache_dir>/judge/<model>/<key[:2]>/<key>.json``. Only the judge's raw
reply is trusted on reading: the rating is parsed again from it, so a parser fix applies
to old entries too. Failed requests are never cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from pkt.artifacts import write_json_atomic
from pkt.eval.judge.results import NO_RATING, result
from pkt.eval.judge.rubric import RUBRIC_VERSION, parse_rating

log = logging.getLogger(__name__)


class RatingCache:
    """Judge replies of one model behind one endpoint; ``cache_dir=None`` caches nothing."""

    def __init__(self, cache_dir: str | Path | None, model: str, base_url: str):
        self.root = Path(cache_dir) if cache_dir else None
        self.model, self.base_url = model, base_url

    def key(self, rubric: str, trait: str | None, facets: list | None, question: str,
            response: str) -> str:
        key = {"model": self.model, "base_url": self.base_url, "rubric": rubric,
               "rubric_version": RUBRIC_VERSION, "trait": trait,
               "facets": [str(f) for f in facets] if facets else None,
               "question": question, "response": response}
        return hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False)
                              .encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path | None:
        if self.root is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model).strip("._") or "model"
        return self.root / "judge" / safe / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The cached result (``cached=True``), or None if there is no usable entry."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            log.warning("ignoring unreadable judge cache entry %s", path)
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("raw"), str):
            return None
        rating = parse_rating(entry["raw"])
        return result(rating, entry["raw"], None if rating is not None else NO_RATING,
                      cached=True)

    def put(self, key: str, raw: str, rating: float | None, rubric: str,
            trait: str | None) -> None:
        """Store one reply; a cache that cannot be written is a warning, never an error."""
        path = self.path(key)
        if path is None:
            return
        try:
            write_json_atomic(path, {"model": self.model, "rubric": rubric, "trait": trait,
                                     "rating": rating, "raw": raw})
        except OSError as e:
            log.warning("could not write judge cache entry %s: %s", path, e.strerror or e)
