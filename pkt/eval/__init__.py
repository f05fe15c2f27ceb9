"""Evaluation of a run's responses: trait score, fluency, degeneration, capability retention.

Which scorer produced the trait score is always recorded (``trait_scorer``): the offline
MiniLM classifier (default, no network), or an LLM judge (``eval/judge=openai|local``).
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter

from pkt import PktError

log = logging.getLogger(__name__)


def summary(values) -> dict | None:
    v = [float(x) for x in values if x is not None]
    if not v:
        return None
    return {"mean": statistics.fmean(v), "sd": statistics.pstdev(v) if len(v) > 1 else 0.0,
            "n": len(v), "missing": sum(x is None for x in values)}


def check_judged(res: list[dict], rubric: str) -> None:
    """No rating for any answer fails the run; some missing is a warning with the count."""
    errors = [x["error"] for x in res if x["error"] is not None]
    if not errors:
        return
    reason = Counter(errors).most_common(1)[0][0]
    if len(errors) == len(res):
        raise PktError(f"the judge gave no {rubric} rating for any of the {len(res)} answers "
                       f"({reason})")
    log.warning("judge: %d of %d answers got no %s rating (%s); the %s score averages the "
                "other %d", len(errors), len(res), rubric, reason, rubric,
                len(res) - len(errors))


class NoEvaluation:
    """eval=none: responses and generation figures only."""

    def __init__(self, **_):
        pass

    def evaluate(self, ctx, method, records: list[dict], gens) -> dict:
        return {}


class Evaluation:
    def __init__(self, trait_scorer: str = "auto", judge=None, fluency: bool = True,
                 capability: bool = True, capability_n_mc: int | None = 100,
                 batch_size: int = 16, cache_dir: str | None = None):
        if trait_scorer not in ("auto", "offline", "judge"):
            raise PktError(f"unknown eval.trait_scorer '{trait_scorer}' (choose from: auto, offline, judge)")
        if trait_scorer == "judge" and judge is None:
            raise PktError("eval.trait_scorer=judge needs a judge (eval/judge=openai or eval/judge=local)")
        self.trait_scorer = "judge" if trait_scorer == "auto" and judge is not None else trait_scorer
        if self.trait_scorer == "auto":
            self.trait_scorer = "offline"
        self.judge, self.fluency, self.capability = judge, fluency, capability
        self.n_mc, self.batch_size, self.cache_dir = capability_n_mc, batch_size, cache_dir

    def evaluate(self, ctx, method, records: list[dict], gens) -> dict:
        from pkt.eval import capability, fluency
        from pkt.eval.scorer import TraitScorer

        m: dict = {}
        texts = [r["response"] for r in records]
        items = [{"question": r["question"], "response": r["response"]} for r in records]
        trait, facets = ctx.trait.name, list(ctx.trait.facets)
        if self.fluency:
            ppl = fluency.response_perplexity(ctx.lm, [r["question"] for r in records],
                                              [g.response_ids for g in gens], self.batch_size)
            for r, p in zip(records, ppl):
                r["ppl"] = p
                r["distinct_2"] = fluency.distinct_n(r["response"], 2)
                r["repetition"] = fluency.repetition(r["response"], 3)
            m["ppl"] = summary(ppl)
            m["distinct_2"] = (summary([r["distinct_2"] for r in records]) or {}).get("mean")
            m["repetition"] = (summary([r["repetition"] for r in records]) or {}).get("mean")
        if self.trait_scorer == "offline":
            scores = TraitScorer(trait, self.cache_dir).score(texts)
            m["trait_scorer"] = TraitScorer.name
        else:
            res = self.judge.rate(items, "trait", trait=trait, facets=facets,
                                  progress=ctx.progress)
            check_judged(res, "trait")
            scores = [x["rating"] for x in res]
            m["trait_scorer"] = "judge:" + self.judge.describe().get("model", "?")
            m["judge_errors"] = sum(x["error"] is not None for x in res)
        for r, s in zip(records, scores):
            r["trait_score"] = s
        m["trait_score"] = summary(scores)
        m["fluency"] = None
        if self.judge is not None:
            res = self.judge.rate(items, "fluency", progress=ctx.progress)
            check_judged(res, "fluency")
            for r, x in zip(records, res):
                r["fluency"] = x["rating"]
            m["fluency"] = summary([x["rating"] for x in res])
            m["judge"] = self.judge.describe()
        if self.capability:
            m["capability"] = capability.retention(ctx.lm, method, self.cache_dir, self.n_mc,
                                                   self.batch_size)
        return m
