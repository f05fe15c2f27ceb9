"""``python -m pkt.eval.rescore <run or sweep dirs>``: recompute offline trait scores.

For runs scored by the offline scorer, re-score ``generations.jsonl`` with the scorer as it
is now (e.g. after its corpus changed) and update ``metrics.json``; nothing is generated
again. Runs scored by an LLM judge are left alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pkt import PktError
from pkt.artifacts import write_json_atomic, write_text_atomic
from pkt.eval import summary
from pkt.eval.scorer import NAME, TraitScorer


def rescore_run(run_dir: Path, cache_dir: str | None = None) -> bool:
    mf, gf = run_dir / "metrics.json", run_dir / "generations.jsonl"
    metrics = json.loads(mf.read_text())
    if metrics.get("trait_scorer") not in (None, NAME) or not gf.is_file():
        return False
    records = [json.loads(x) for x in gf.read_text(encoding="utf-8").splitlines() if x.strip()]
    scores = TraitScorer(metrics["trait"], cache_dir).score([r["response"] for r in records])
    for r, s in zip(records, scores):
        r["trait_score"] = s
    metrics["trait_score"] = summary(scores)
    metrics["trait_scorer"] = NAME
    write_text_atomic(gf, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_json_atomic(mf, metrics)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args(argv)
    try:
        runs = []
        for p in map(Path, args.paths):
            if not p.exists():
                raise PktError(f"no such run or sweep dir: {p}")
            runs += sorted(m.parent for m in p.rglob("metrics.json"))
        if not runs:
            raise PktError("no metrics.json under the given paths")
        n = sum(rescore_run(r, args.cache_dir) for r in runs)
    except PktError as e:
        print(f"pkt: error: {e}", file=sys.stderr)
        return 2
    print(f"re-scored {n} of {len(runs)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
