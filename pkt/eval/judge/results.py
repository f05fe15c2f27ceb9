"""What every judge takes and gives: items in, one result dict per item out.

An item is ``{"question": ..., "response": ...}``; a result is ``{"rating": float | None,
"raw": str | None, "error": str | None, "cached": bool}``, where a missing or unparsable
rating is ``None``, never a number.
"""

from __future__ import annotations

from pkt.errors import PktError

NO_RATING = "no rating in judge output"


def result(rating: float | None = None, raw: str | None = None, error: str | None = None,
           cached: bool = False) -> dict:
    return {"rating": rating, "raw": raw, "error": error, "cached": cached}


def check_items(items) -> list[tuple[str, str]]:
    """(question, response) pairs; a clear error for an item without both keys."""
    out = []
    for i, it in enumerate(items):
        if not isinstance(it, dict) or "question" not in it or "response" not in it:
            raise PktError(f"judge item {i} needs 'question' and 'response' keys")
        out.append((str(it["question"]), str(it["response"] if it["response"] is not None else "")))
    return out
