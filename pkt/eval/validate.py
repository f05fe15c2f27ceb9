"""``python -m pkt.eval.validate``: cross-validated accuracy of the offline trait scorer."""

from __future__ import annotations

import argparse
import json

from pkt.dataset import TRAITS
from pkt.eval.scorer import cross_validate


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print JSON lines")
    args = ap.parse_args(argv)
    out = []
    for t in TRAITS:
        r = cross_validate(t.lower(), folds=args.folds, seed=args.seed)
        out.append(r)
        print(json.dumps(r) if args.json else
              f"{t:<18} n={r['n']:<4} {args.folds}-fold accuracy {r['accuracy']:.3f}")
    if not args.json:
        mean = sum(r["accuracy"] for r in out) / len(out)
        print(f"{'mean':<18} {'':<6} {args.folds}-fold accuracy {mean:.3f}")
    return out


if __name__ == "__main__":
    main()
