"""``python -m pkt.eval.rescore <run or sweep dirs>``: recompute offline trait scores.

For runs scored by the offline scorer, re-score ``generations.jsonl`` with the scorer as it
is now (e.g. after its corpus changed) and update ``metrics.json``; nothing is generated
again. Runs scored by an LLM judge are left alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pkt import records as rio
from pkt.errors import PktError
from pkt.eval.scorer import NAME, TraitScorer


def rescore_run(run_dir: Path, cache_dir: str | None = None) -> bool:
    """Each answer (and its base answer, where the run has them) re-scored by the scorer of
    its question's trait; ``trait_score`` and the per-trait table recomputed."""
    if not (run_dir / rio.GENERATIONS).is_file():
        return False
    metrics = rio.read_metrics(run_dir)
    if metrics.get("trait_scorer") not in (None, NAME):
        return False
    records = rio.read_generations(run_dir)
    own = metrics.get("trait")
    for r in records:
        r.setdefault("trait", own)
    for trait in dict.fromkeys(r["trait"] for r in records):
        rs = [r for r in records if r["trait"] == trait]
        scorer = TraitScorer(trait, cache_dir)
        for r, s in zip(rs, scorer.score([r["response"] for r in rs])):
            r["trait_score"] = s
        based = [r for r in rs if "base_response" in r]
        for r, s in zip(based, scorer.score([r["base_response"] for r in based])):
            r["base_trait_score"] = s
    if own:
        metrics["trait_score"] = rio.own_trait_score(metrics, records)
    if "traits" in metrics:
        metrics["traits"] = rio.trait_table(records)
    metrics["trait_scorer"] = NAME
    rio.write_generations(run_dir, records)
    rio.write_metrics(run_dir, metrics)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args(argv)
    from pkt import cli as cmdline

    def work() -> None:
        runs = []
        for p in map(Path, args.paths):
            if not p.exists():
                raise PktError(f"no such run or sweep dir: {p}")
            runs += sorted(m.parent for m in p.rglob("metrics.json"))
        if not runs:
            raise PktError("no metrics.json under the given paths")
        n = sum(rescore_run(r, args.cache_dir) for r in runs)
        print(f"re-scored {n} of {len(runs)} runs")

    return cmdline.guarded(work)

if __name__ == "__main__":
    raise SystemExit(main())
