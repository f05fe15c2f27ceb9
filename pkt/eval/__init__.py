"""Evaluation of a run's responses: trait score, fluency, degeneration, capability retention.

Which scorer produced the trait score is always recorded (``trait_scorer``): the offline
MiniLM classifier (default, no network), or an LLM judge (``eval/judge=openai|local``).
"""

from __future__ import annotations

import logging
from collections import Counter

from pkt.errors import PktError
from pkt.params import AT_LEAST_1, Rule
from pkt.records import summary, trait_table

log = logging.getLogger(__name__)


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
    RULES = {"batch_size": AT_LEAST_1}
    """eval=none: responses and generation figures only."""

    def __init__(self, **_):
        pass

    def evaluate(self, ctx, method, records: list[dict], gens) -> dict:
        return {}


class Evaluation:
    RULES = {"batch_size": AT_LEAST_1,
             "trait_scorer": Rule(choices=("auto", "offline", "judge")),
             "capability_n_mc": AT_LEAST_1}

    def __init__(self, trait_scorer: str = "auto", judge=None, fluency: bool = True,
                 capability: bool = True, capability_n_mc: int | None = 100,
                 batch_size: int = 16, cache_dir: str | None = None,
                 base_delta: bool | str = "auto"):
        if trait_scorer not in ("auto", "offline", "judge"):
            raise PktError(f"unknown eval.trait_scorer '{trait_scorer}' (choose from: auto, offline, judge)")
        if trait_scorer == "judge" and judge is None:
            raise PktError("eval.trait_scorer=judge needs a judge (eval/judge=openai or eval/judge=local)")
        if base_delta not in ("auto", True, False):
            raise PktError(f"eval.base_delta must be auto, true or false, got {base_delta!r}")
        self.trait_scorer = "judge" if trait_scorer == "auto" and judge is not None else trait_scorer
        if self.trait_scorer == "auto":
            self.trait_scorer = "offline"
        self.judge, self.fluency, self.capability = judge, fluency, capability
        self.n_mc, self.batch_size, self.cache_dir = capability_n_mc, batch_size, cache_dir
        self.base_delta = base_delta

    def score_traits(self, records: list[dict], progress: bool = True) -> tuple[list, dict]:
        """Each record's trait score, by the scorer of the trait its question is about."""
        from pkt.eval.scorer import TraitScorer
        from pkt.traits import Trait

        scores: list = [None] * len(records)
        extra: dict = {}
        by_trait: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            by_trait.setdefault(r["trait"], []).append(i)
        errors = 0
        for trait, idx in by_trait.items():
            if self.trait_scorer == "offline":
                got = TraitScorer(trait, self.cache_dir).score([records[i]["response"] for i in idx])
            else:
                facets = list(Trait.load(trait).facets)
                items = [{"question": records[i]["question"], "response": records[i]["response"]}
                         for i in idx]
                res = self.judge.rate(items, "trait", trait=trait, facets=facets, progress=progress)
                check_judged(res, "trait")
                got = [x["rating"] for x in res]
                errors += sum(x["error"] is not None for x in res)
            for i, v in zip(idx, got):
                scores[i] = v
        if self.trait_scorer == "offline":
            extra["trait_scorer"] = TraitScorer.name
        else:
            extra["trait_scorer"] = "judge:" + self.judge.describe().get("model", "?")
            extra["judge_errors"] = errors
        return scores, extra

    def evaluate(self, ctx, method, records: list[dict], gens) -> dict:
        from pkt.eval import capability, fluency

        m: dict = {}
        items = [{"question": r["question"], "response": r["response"]} for r in records]
        if self.fluency:
            ppl = fluency.response_perplexity(ctx.lm, [r["question"] for r in records],
                                              [g.response_ids for g in gens], self.batch_size,
                                              ctx.progress)
            for r, p in zip(records, ppl):
                r["ppl"] = p
                r["distinct_2"] = fluency.distinct_n(r["response"], 2)
                r["repetition"] = fluency.repetition(r["response"], 3)
            m["ppl"] = summary(ppl)
            m["distinct_2"] = (summary([r["distinct_2"] for r in records]) or {}).get("mean")
            m["repetition"] = (summary([r["repetition"] for r in records]) or {}).get("mean")
        scores, extra = self.score_traits(records, ctx.progress)
        m.update(extra)
        for r, s in zip(records, scores):
            r["trait_score"] = s
        own = ctx.trait.name if ctx.trait is not None else None
        if own is not None:  # a single-trait run: its own trait's questions
            m["trait_score"] = summary([s for r, s in zip(records, scores) if r["trait"] == own])
        self.base_cached = None
        m["traits"] = self.trait_table(ctx, method, records)
        if self.base_cached is not None:
            m["base_answers_cached"] = self.base_cached
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
                                                   self.batch_size, ctx.progress)
        return m

    def trait_table(self, ctx, method, records: list[dict]) -> dict:
        """Per scored trait: the induced aspect (None: untouched), the score, and with
        ``base_delta`` the plain model's score on the same questions and the change."""
        traits = list(dict.fromkeys(r["trait"] for r in records))
        want = self.base_delta is True or (self.base_delta == "auto" and len(traits) > 1)
        if want:
            if method.name == "base":
                for r in records:
                    r["base_trait_score"] = r["trait_score"]
            else:
                from pkt.eval.leakage import base_answers

                # per trait, so that runs listing the traits in another order share them
                texts: list = [None] * len(records)
                hits = []
                for t in traits:
                    idx = [i for i, r in enumerate(records) if r["trait"] == t]
                    got, hit = base_answers(ctx, [records[i]["question"] for i in idx])
                    hits.append(hit)
                    for i, a in zip(idx, got):
                        texts[i] = a
                self.base_cached = all(hits)
                base_recs = [{**r, "response": t} for r, t in zip(records, texts)]
                base, _ = self.score_traits(base_recs, ctx.progress)
                for r, t, b in zip(records, texts, base):
                    r["base_response"], r["base_trait_score"] = t, b
        return trait_table(records)
