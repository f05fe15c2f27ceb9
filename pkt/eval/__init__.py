"""Evaluation of a run's responses (trait score, fluency, capability retention)."""

from __future__ import annotations


class NoEvaluation:
    """eval=none: responses and generation figures only."""

    def __init__(self, **_):
        pass

    def evaluate(self, ctx, method, records: list[dict]) -> dict:
        return {}
