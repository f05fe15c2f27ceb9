"""LLM-as-judge ratings (1-5) of responses: trait expression and fluency.

Two backends share one interface, ``rate(items, rubric, trait, facets) -> list[dict]``, and
``describe()``:

* :class:`OpenAIJudge` (``openai_judge``) talks to any OpenAI-compatible chat-completions
  endpoint through the official ``openai`` client, with bounded concurrency and an on-disk
  cache of judge outputs (``cache``) so that a re-run makes no request;
* :class:`LocalJudge` (``local_judge``) scores with any Hugging Face causal LM in one
  forward pass.

The rubric texts and the rating parser are in ``rubric``, the item and result shapes in
``results``. Each result is ``{"rating": float | None, "raw": str | None, "error": str |
None, "cached": bool}``; a missing or unparsable rating is ``None``, never a number.

The two judges are imported when first used (``from pkt.eval.judge import OpenAIJudge``
and the configs' ``_target_: pkt.eval.judge.OpenAIJudge`` both work), so that reading a
rubric loads neither the HTTP client nor torch.
"""

from __future__ import annotations

from pkt.eval.judge.results import check_items, result
from pkt.eval.judge.rubric import (
    RATING_MAX,
    RATING_MIN,
    RUBRIC_VERSION,
    RUBRICS,
    build_rubric,
    check_rubric,
    parse_rating,
)

_LAZY = {"OpenAIJudge": "pkt.eval.judge.openai_judge",
         "LocalJudge": "pkt.eval.judge.local_judge",
         "RatingCache": "pkt.eval.judge.cache"}

__all__ = ["RATING_MAX", "RATING_MIN", "RUBRICS", "RUBRIC_VERSION", "build_rubric",
           "check_items", "check_rubric", "parse_rating", "result", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
