"""Why NPTI's high aspect does not rise above the plain model (experiments/dpn_study).

    python experiments/dpn_study/diagnose.py --trait openness \
        --runs outputs/multiruns/dpn_study/npti --out experiments/dpn_study/results

NPTI's default sets of one trait (from the cache, made by the study's NPTI runs) and the
high aspect's edit at the strength ``strength=auto`` chose in that run (``s``), varied one
factor at a time: the clamp of the opposite (low) set alone (strength 0), the addition
alone (``deactivate=false``), larger strengths (2s, 4s), and random target sets (the same
number of neurons per layer, with the real set's amounts, so only *which* neurons differ).
Every cell answers the runner's test questions with the runner's generation settings
(``method.respond``, greedy, 96 tokens, penalty 1.15), is scored by the offline scorer
(the runner's), and gets the capability probe with the edit active (neutral-text
perplexity and ``--n-mc`` MC items, as ratios to the plain model). The cell ``default``
is the runner's own run again: its answers are compared with the run's (``same_answers``).
One JSON line per cell, with the answers, is appended to ``<out>/diagnosis.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import pkt
from pkt.dataset import load_bench
from pkt.eval import capability
from pkt.eval.scorer import TraitScorer
from pkt.hooks import Scope
from pkt.methods import registry
from pkt.neurons.select import NeuronSet
from pkt.profiles import Profile
from pkt.resources import DATA_DIR, cache_dir

# name -> (strength factor, deactivate, random target set)
CELLS = {
    "default": (1.0, True, False),
    "noclamp": (1.0, False, False),
    "clamponly": (0.0, True, False),
    "x2": (2.0, True, False),
    "x2noclamp": (2.0, False, False),
    "x4noclamp": (4.0, False, False),
    "random_noclamp": (1.0, False, True),
    "random_x2noclamp": (2.0, False, True),
}


def runner_run(runs: Path, trait: str, aspect: str) -> tuple[dict, list[dict]]:
    """The metrics and generations of the sweep's run of (trait, aspect)."""
    for m in sorted(runs.glob("*/metrics.json")):
        d = json.loads(m.read_text())
        if d.get("trait") == trait and d.get("aspect") == aspect:
            gens = [json.loads(x) for x in (m.parent / "generations.jsonl").read_text().splitlines()
                    if x.strip()]
            return d, gens
    raise SystemExit(f"no run of {trait} ({aspect}) in {runs}")


def random_like(ns: NeuronSet, width: int, seed: int = 0) -> NeuronSet:
    """As many neurons per layer as ``ns``, drawn at random among the layer's other
    neurons, carrying ``ns``'s diff, prob and p95 (the same amounts)."""
    g = torch.Generator().manual_seed(seed)
    index = ns.index.clone()
    for layer in ns.layer.unique().tolist():
        at = (ns.layer == layer).nonzero().squeeze(1)
        taken = set(ns.index[at].tolist())
        pool = torch.tensor([j for j in range(width) if j not in taken])
        index[at] = pool[torch.randperm(len(pool), generator=g)[: len(at)]]
    return NeuronSet(ns.layer.clone(), index, ns.diff.clone(), ns.prob.clone(), ns.p95.clone())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trait", required=True)
    ap.add_argument("--runs", required=True, help="the study's NPTI sweep folder")
    ap.add_argument("--aspect", default="high")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--n-test", type=int, default=16)
    ap.add_argument("--n-mc", type=int, default=100)
    ap.add_argument("--out", default="experiments/dpn_study/results")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = cache_dir()
    metrics, run_gens = runner_run(Path(a.runs), a.trait, a.aspect)
    s = float(metrics["params"]["strength"])
    lm = pkt.load_model("smollm2_135m")
    bench = load_bench(str(DATA_DIR), a.trait, n_search=None, n_test=a.n_test, seed=0)
    questions = [r["question"] for r in bench.test]
    assert questions == [g["question"] for g in run_gens], "not the run's questions"
    scorer = TraitScorer(a.trait, cache)
    base = capability.base_figures(lm, cache, a.n_mc)
    for name in a.cells.split(","):
        factor, deactivate, rand = CELLS[name]
        t0 = time.time()
        m = registry.compose(lm, Profile.parse(f"{a.trait}:{a.aspect}"), "neuron",
                             lambda t: bench, cache_dir=cache, compute=False,
                             params={"strength": s * factor, "deactivate": deactivate})
        m.prepare()
        if rand:
            m.sets[a.aspect] = random_like(m.sets[a.aspect], lm.model.config.intermediate_size)
        answers = [g.text for g in m.respond(questions)]
        scores = scorer.score(answers)
        scope = Scope.marked()
        with m.intervention(scope=scope):
            now = capability.measure(lm, a.n_mc, 16, scope)
        row = {"trait": a.trait, "aspect": a.aspect, "cell": name, "strength": s * factor,
               "auto_strength": s, "deactivate": deactivate, "random_target": rand,
               "neurons_target": len(m.sets[a.aspect]),
               "score": sum(scores) / len(scores), "scores": scores,
               "ppl_ratio": now["ppl"] / base["ppl"],
               "mc_ratio": now["mc_accuracy"] / base["mc_accuracy"], "n_mc": now["n_mc"],
               "same_answers": answers == [g["response"] for g in run_gens] if name == "default"
               else None,
               "answers": answers, "seconds": round(time.time() - t0, 1)}
        with open(out / "diagnosis.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{a.trait} {a.aspect} {name}: strength {row['strength']:.2f} score "
              f"{row['score']:.2f} ppl {row['ppl_ratio']:.3f} mc {row['mc_ratio']:.3f} "
              f"({row['seconds']:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
