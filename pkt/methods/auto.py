"""strength=auto, once for every method with a strength (NPTI, DPN-LE): the largest strength
of a grid whose capability probe stays within the bounds, cached as an artifact.

:func:`choose_strength` is the search (pure: the probes are functions); :func:`auto_strength`
runs it with an edit active, through the artifact store (one process computes a key, the
others wait and reuse it; ``compute=False`` uses the cache only).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from pkt.hooks import Scope

log = logging.getLogger(__name__)

AUTO_GRID = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)
SEARCH = "ppl-scan+mc-top-then-bisect"  # the search (part of the cache keys)


class ProfileStrength:
    """For a method with ``strength`` (and ``auto``): a strength the profile gives replaces
    the method's own (and ``auto``)."""

    def use_profile_strength(self, strength: float | None) -> None:
        super().use_profile_strength(strength)
        if strength is not None:
            self.auto = False
            self.strength = float(strength)
            self.params["strength"] = self.strength


def choose_strength(grid, ppl_ratio, mc_ratio, max_ppl_ratio: float,
                    min_mc_ratio: float) -> tuple[float, list[dict]]:
    """strength=auto's search: the largest strength of ``grid`` within both bounds.

    1. Perplexity (cheap: a few seconds a probe) for each strength from the smallest up;
       the first one above ``max_ppl_ratio`` ends the scan.
    2. MC accuracy (most of the probe's time) at the largest strength that passed: when
       it passes too, that is the choice (one MC probe; on the embedded model perplexity
       is usually the bound that binds). Otherwise a bisection over the strengths below
       it, so at most log2(n) + 2 probes instead of n. Both assume that capability falls
       as strength rises (as the scan does for perplexity); a bound of 0 skips step 2.

    ``ppl_ratio(s)`` and ``mc_ratio(s)`` return the ratios to the plain model. Returns the
    choice and one trial per strength probed, in grid order: ``strength``, ``ppl_ratio``,
    ``mc_ratio`` (None where not probed) and ``within``. If no strength passes, the
    smallest is returned (its trial says it is out of bounds).
    """
    grid = sorted(float(x) for x in grid)
    trials = {}
    ok = []  # strengths within the perplexity bound, in order
    for s in grid:
        r = float(ppl_ratio(s))
        trials[s] = {"strength": s, "ppl_ratio": r, "mc_ratio": None, "within": r <= max_ppl_ratio}
        if r > max_ppl_ratio:
            break
        ok.append(s)
    lo, hi = -1, len(ok)  # ok[lo] passes MC (lo = -1: none known), ok[hi] fails (hi = len: none)
    if min_mc_ratio <= 0:
        lo = len(ok) - 1
    first = True  # the largest candidate first, then bisection below it
    while hi - lo > 1:
        mid = hi - 1 if first else (lo + hi) // 2
        first = False
        s = ok[mid]
        r = float(mc_ratio(s))
        trials[s]["mc_ratio"] = r
        trials[s]["within"] = r >= min_mc_ratio
        if r >= min_mc_ratio:
            lo = mid
        else:
            hi = mid
    # lo = -1 after the bisection: the smallest strength failed one of the probes
    chosen = ok[lo] if lo >= 0 else grid[0]
    return chosen, [trials[s] for s in grid if s in trials]


def auto_strength(method, kind: str, key: dict, grid, bounds: dict, n_mc: int | None,
                  edit: Callable[[float, Scope], AbstractContextManager],
                  what: str) -> tuple[float, list[dict]]:
    """``method``'s strength=auto choice under ``key`` (artifact ``kind``): cached, or
    searched with ``edit(strength, scope)`` active for each probe. Records the probes'
    figures in ``method._measured`` (the evaluation reuses them) and sets the method's
    ``strength_auto_cached`` metric and ``fresh`` flag."""
    from pkt.eval import capability
    from pkt.neurons.identify import NotIdentified

    ctx = method.ctx
    path = method.store.load(kind, key)
    if path is None and not ctx.compute:
        raise NotIdentified(f"strength=auto has not been chosen yet for {ctx.bench.trait} "
                            f"({ctx.aspect}) on {ctx.lm.name}")

    def search() -> Path:
        base = capability.base_figures(ctx.lm, ctx.cache_dir, n_mc, ctx.gen.batch_size,
                                       ctx.progress)

        def probe(s: float, part: str) -> float:
            scope = Scope.marked()
            with edit(s, scope):  # a bar per probe, saying which strength it probes
                now = capability.measure(ctx.lm, n_mc, ctx.gen.batch_size, scope,
                                         mc=part == "mc", ppl=part == "ppl",
                                         progress=ctx.progress,
                                         desc=f"{what} strength=auto: {s:g} "
                                              f"({'perplexity' if part == 'ppl' else 'MC'})")
            method._measured[(s, part)] = now
            if part == "ppl":
                r = now["ppl"] / base["ppl"]
            else:
                r = now["mc_accuracy"] / base["mc_accuracy"] if base["mc_accuracy"] else 1.0
            log.info("%s strength=auto: %.2f -> %s ratio %.3f", what, s,
                     "ppl" if part == "ppl" else "MC", r)
            return r

        chosen, trials = choose_strength(grid, lambda s: probe(s, "ppl"),
                                         lambda s: probe(s, "mc"), **bounds)
        if not next(t["within"] for t in trials if t["strength"] == chosen):
            log.warning("%s strength=auto: even strength %.2f is out of the capability "
                        "bounds; using it", what, chosen)
        return method.store.save(kind, key, lambda tmp: (tmp / "choice.json").write_text(
            json.dumps({"chosen": chosen, "trials": trials}, indent=2)))

    path, hit = (path, True) if path is not None else method.store.load_or_compute(kind, key,
                                                                                   search)
    d = json.loads((path / "choice.json").read_text())
    method.prepared.metrics["strength_auto_cached"] = hit
    method.prepared.fresh = method.prepared.fresh or not hit
    return float(d["chosen"]), d["trials"]
