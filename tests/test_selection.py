"""Effect-size selection on a hand-built case, and strength=auto choosing by its bound."""

import pytest
import torch

from pkt.errors import PktError
from pkt.generation import GenConfig
from pkt.methods.neuron import NeuronMethod
from pkt.neurons.select import effect_size, select_effect_size, select_sets
from tests.conftest import openness_context


def test_effect_size_by_hand():
    mean_a = torch.tensor([[1.0, 0.5, 0.2, 0.0]])
    var_a = torch.tensor([[1.0, 0.01, 0.04, 0.0]])
    mean_o = torch.tensor([[0.0, 0.4, 0.3, 0.0]])
    var_o = torch.tensor([[1.0, 0.01, 0.04, 0.0]])
    d = effect_size(mean_a, var_a, mean_o, var_o)
    # (1 - 0) / 1 = 1; (0.5 - 0.4) / 0.1 = 1; (0.2 - 0.3) / 0.2 = -0.5; no variance: 0
    assert torch.allclose(d, torch.tensor([[1.0, 1.0, -0.5, 0.0]]), atol=1e-6)


def test_effect_size_selection_differs_from_the_paper_rule():
    # neuron 0: active far more often under A but with a tiny, noisy shift in value;
    # neuron 1: active as often under both, but with a large, clean shift in value
    st = {"high.prob": torch.tensor([[0.9, 0.5, 0.5]]), "low.prob": torch.tensor([[0.5, 0.5, 0.5]]),
          "high.p95": torch.tensor([[1.0, 2.0, 3.0]]), "low.p95": torch.tensor([[1.0, 1.0, 1.0]]),
          "high.mean": torch.tensor([[0.11, 1.0, 0.2]]), "low.mean": torch.tensor([[0.10, 0.2, 0.2]]),
          "high.var": torch.tensor([[1.0, 0.04, 0.1]]), "low.var": torch.tensor([[1.0, 0.04, 0.1]])}
    npti = select_sets(st, "npti", 1, 0.1)
    es = select_sets(st, "effect_size", 1, 0.1)
    assert npti["high"].index.tolist() == [0]
    assert es["high"].index.tolist() == [1]
    assert es["high"].p95.tolist() == [2.0] and es["high"].diff.tolist() == [0.0]
    # low: only neurons with d > 0 for low (none here but neuron 0's -0.01 and 1's -4)
    assert len(es["low"]) == 0
    d = effect_size(st["high.mean"], st["high.var"], st["low.mean"], st["low.var"])
    two = select_effect_size(d, st["high.prob"], st["low.prob"], st["high.p95"], 2)
    assert sorted(two.index.tolist()) == [0, 1]  # neuron 2 has d = 0: never kept
    assert two.diff.tolist() == sorted(two.diff.tolist(), reverse=True)
    with pytest.raises(PktError, match="unknown method.selection"):
        select_sets(st, "nope", 1)
    with pytest.raises(PktError, match="moments"):
        select_sets({k: v for k, v in st.items() if "mean" not in k}, "effect_size", 1)


def _auto_method(tiny, tmp_path, **kw):
    from pkt.neurons.select import NeuronSet

    ctx = openness_context(tiny, ["q"], {"high": ["p"], "low": ["p"]}, tmp_path / "run",
                           GenConfig(8, 4, 1.1), cache_dir=tmp_path / "cache")
    m = NeuronMethod(ctx, strength="auto", auto_n_mc=10, keep_prob=1.0,
                     strength_grid=[0.0, 1.0, 4.0, 16.0, 64.0], **kw)
    g = torch.Generator().manual_seed(0)
    n = 40
    layer = torch.randint(0, 2, (n,), generator=g)
    index = torch.randperm(tiny.model.config.intermediate_size, generator=g)[:n]
    ones = torch.ones(n)
    m.sets = {"high": NeuronSet(layer, index, 0.3 * ones, 0.5 * ones, ones),
              "low": NeuronSet(layer[:0], index[:0], ones[:0], ones[:0], ones[:0])}
    m.prepared.artifacts["neuron_sets"] = "hand-made"
    return m


def test_strength_auto_picks_the_largest_strength_within_the_bound(tiny, tmp_path, one_thread):
    loose = _auto_method(tiny, tmp_path / "a", max_ppl_ratio=1e9, min_mc_ratio=0.0)
    s, trials = loose._auto_strength("high")
    assert s == 64.0 and len(trials) == 5 and all(t["within"] for t in trials)
    assert trials[0]["ppl_ratio"] == pytest.approx(1.0)  # strength 0 edits nothing
    ppl = [t["ppl_ratio"] for t in trials]
    # a bound between the largest ratio up to strength grid[j] and the next one
    j = next(j for j in range(4) if ppl[j + 1] > max(ppl[: j + 1]))
    bound = (max(ppl[: j + 1]) + ppl[j + 1]) / 2
    tight = _auto_method(tiny, tmp_path / "b", max_ppl_ratio=bound, min_mc_ratio=0.0)
    s, trials = tight._auto_strength("high")
    assert s == [0.0, 1.0, 4.0, 16.0, 64.0][j]
    assert [t["within"] for t in trials] == [True] * (j + 1) + [False]  # stops at the first miss
    # cached: the same choice, no second probe
    again = _auto_method(tiny, tmp_path / "b", max_ppl_ratio=bound, min_mc_ratio=0.0)
    assert again._auto_strength("high") == (s, trials)
    assert again.prepared.metrics["strength_auto_cached"] is True


def test_strength_auto_and_bad_strengths_are_checked(tiny, tmp_path):
    ctx = openness_context(tiny, ["q"], {"high": ["p"], "low": ["p"]}, tmp_path, GenConfig())
    for bad in ("abc", "nan", -1):
        with pytest.raises(PktError, match="method.strength"):
            NeuronMethod(ctx, strength=bad)
    with pytest.raises(PktError, match="strength_grid"):
        NeuronMethod(ctx, strength="auto", strength_grid=[1.0, float("nan")])
    assert NeuronMethod(ctx, strength="AUTO").auto


def test_choose_strength_scans_perplexity_then_bisects_mc():
    from pkt.methods.auto import choose_strength

    grid = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0]
    ppl = {0.5: 1.01, 1.0: 1.03, 1.5: 1.05, 2.0: 1.08, 2.5: 1.10, 3.0: 1.13, 4.0: 1.2,
           5.0: 1.3, 6.0: 1.4}
    mc = {0.5: 1.0, 1.0: 0.99, 1.5: 0.97, 2.0: 0.96, 2.5: 0.93, 3.0: 0.90}
    asked = {"ppl": [], "mc": []}

    def p(s):
        asked["ppl"].append(s)
        return ppl[s]

    def m(s):
        asked["mc"].append(s)
        return mc[s]

    s, trials = choose_strength(grid, p, m, max_ppl_ratio=1.15, min_mc_ratio=0.95)
    assert s == 2.0
    # perplexity up to the first miss (4.0); MC at the largest candidate (3.0: fails), then
    # by bisection over 0.5 .. 2.5 (1.5 passes, 2.0 passes, 2.5 fails)
    assert asked["ppl"] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0]
    assert asked["mc"] == [3.0, 1.5, 2.0, 2.5]
    by = {t["strength"]: t for t in trials}
    assert [t["strength"] for t in trials] == asked["ppl"]
    assert by[2.0]["within"] and by[2.0]["mc_ratio"] == 0.96
    assert not by[2.5]["within"] and not by[4.0]["within"] and by[4.0]["mc_ratio"] is None
    assert by[0.5]["mc_ratio"] is None and by[0.5]["within"]  # not probed: passed perplexity
    # the same choice as a full scan of both probes, for every MC bound
    for bound in (0.0, 0.9, 0.92, 0.95, 0.97, 0.99, 1.0, 1.01):
        full = [g for g in grid if ppl[g] <= 1.15 and mc.get(g, 0) >= bound]
        want = max(full) if full else 0.5
        got, _ = choose_strength(grid, ppl.get, mc.get, max_ppl_ratio=1.15, min_mc_ratio=bound)
        assert got == want, bound
    # the largest candidate passes MC: one MC probe
    asked["mc"].clear()
    s, _ = choose_strength(grid, ppl.get, m, max_ppl_ratio=1.15, min_mc_ratio=0.85)
    assert s == 3.0 and asked["mc"] == [3.0]
    # nothing within the perplexity bound: the smallest, marked out of bounds
    s, trials = choose_strength(grid, lambda s: 2.0, m, max_ppl_ratio=1.15, min_mc_ratio=0.95)
    assert s == 0.5 and trials == [{"strength": 0.5, "ppl_ratio": 2.0, "mc_ratio": None,
                                    "within": False}]
