import json
import math

import numpy as np
import pytest
import torch

from pkt.artifacts import ArtifactStore
from pkt.errors import PktError
from pkt.hooks import Scope
from pkt.neurons.induce import Induction, edit_amount
from pkt.neurons.release import export_release, import_release
from pkt.neurons.select import NeuronSet, resolve_k, select
from pkt.neurons.sites import neuron_sites, shape
from pkt.neurons.stats import N_BINS, ActivationStats, collect_stats, recording


def hand_activations(lm, ids: list[int]) -> list[torch.Tensor]:
    """act_fn(gate_proj(x)) per layer for one unpadded sequence, computed by hand."""
    xs = []
    hooks = [layer.mlp.register_forward_pre_hook(lambda m, a: xs.append(a[0].detach().clone()))
             for layer in lm.model.model.layers]
    try:
        with torch.no_grad():
            lm.model(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        return [layer.mlp.act_fn(layer.mlp.gate_proj(x))[0]
                for layer, x in zip(lm.model.model.layers, xs)]


def hand_stats(acts_per_layer: list[np.ndarray]):
    """counts > 0 and the 301-bin histogram, from first principles (numpy).

    Bin 0 is a <= 0; bin k in 1..299 is ((k-1)/100, k/100]; bin 300 is a > 2.99.
    """
    edges = np.round(np.arange(0, 300) * 0.01, 10)  # 0.00, 0.01, ..., 2.99
    counts, hist = [], []
    for a in acts_per_layer:
        counts.append((a > 0).sum(0))
        b = np.searchsorted(edges, a, side="left")  # edges[b-1] < a <= edges[b]
        h = np.zeros((a.shape[1], N_BINS), dtype=np.int64)
        for j in range(a.shape[1]):
            h[j] = np.bincount(b[:, j], minlength=N_BINS)
        hist.append(h)
    return np.stack(counts), np.stack(hist)


SEQS = [([1, 40, 41, 42, 43, 44], [50, 51, 52, 2]),
        ([1, 60, 61], [70, 71, 72, 73, 74, 75, 2]),
        ([1, 80, 81, 82, 83, 84, 85, 86, 87], [90])]


def test_recorded_activations_equal_act_of_gate(spread_tiny):
    lm = spread_tiny
    ids = SEQS[0][0] + SEQS[0][1]
    ref = hand_activations(lm, ids)
    L, N = shape(lm.model)
    st = ActivationStats(L, N)
    scope = Scope.marked()
    scope.mark(torch.ones(1, len(ids), dtype=torch.bool))
    with recording(lm.model, st, scope), torch.no_grad():
        lm.model(torch.tensor([ids]))
    counts, hist = hand_stats([r.numpy() for r in ref])
    assert torch.equal(st.counts, torch.from_numpy(counts))
    assert torch.equal(st.histogram(), torch.from_numpy(hist))
    assert st.histogram()[:, :, 1:].sum() > 0 and st.histogram()[:, :, 100:].sum() > 0


def test_only_generated_positions_count(spread_tiny):
    lm = spread_tiny
    p, r = SEQS[1]
    st = collect_stats(lm.model, [(p, r)], pad_id=0, progress=False)
    ref = hand_activations(lm, p + r)
    # positions producing generated tokens: last prompt position .. second-to-last response token
    sel = [a[len(p) - 1 : len(p) - 1 + len(r)].numpy() for a in ref]
    counts, hist = hand_stats(sel)
    assert st.tokens == len(r)
    assert torch.equal(st.counts, torch.from_numpy(counts))
    assert torch.equal(st.histogram(), torch.from_numpy(hist))


def test_batched_left_padded_stats_equal_per_sequence(spread_tiny):
    lm = spread_tiny
    batched = collect_stats(lm.model, SEQS, pad_id=0, batch_size=3, progress=False)
    L, N = shape(lm.model)
    single = ActivationStats(L, N)
    for s in SEQS:
        collect_stats(lm.model, [s], pad_id=0, batch_size=1, progress=False, stats=single)
    assert batched.tokens == single.tokens == sum(len(r) for _, r in SEQS)
    assert torch.equal(batched.counts, single.counts)
    assert (batched.hist != single.hist).sum() <= 2  # float noise may move a value across a bin edge


def test_percentile_from_histogram():
    st = ActivationStats(1, 3)
    vals = torch.tensor([[-1.0, 0.5, 5.0]]).repeat(100, 1)
    vals[:, 1] = torch.linspace(0, 0.999, 100)  # uniform on [0, 1)
    st.update(0, vals)
    st.tokens = 100
    p = st.percentile(0.95)[0]
    assert p[0] == 0.0 and abs(float(p[1]) - 0.95) < 0.011 and abs(float(p[2]) - 2.99) < 1e-6
    assert torch.allclose(st.prob()[0], torch.tensor([0.0, 0.99, 1.0]))


def test_bins_and_exact_zero():
    st = ActivationStats(1, 1)
    st.update(0, torch.tensor([[-0.5], [0.0], [0.005], [0.015], [0.02], [2.995], [10.0]]))
    h = st.histogram()[0, 0]
    assert h[0] == 2 and h[1] == 1 and h[2] == 2 and h[300] == 2 and h.sum() == 7
    assert int(st.counts[0, 0]) == 5  # 0.0 is not "active"


def test_selection_rule_k_min_binds_and_threshold_extends():
    pa = torch.zeros(2, 10)
    pb = torch.zeros(2, 10)
    pa[0, :4] = torch.tensor([0.30, 0.20, 0.12, 0.05])  # 3 neurons >= 0.1
    pa[1, 5] = 0.08
    p95 = torch.arange(20, dtype=torch.float32).view(2, 10) / 10
    few = select(pa, pb, p95, k_min=2, threshold=0.1)  # the threshold extends 2 -> 3
    assert len(few) == 3 and few.index.tolist() == [0, 1, 2]
    many = select(pa, pb, p95, k_min=5, threshold=0.1)  # k_min binds
    assert len(many) == 5 and (many.layer.tolist()[:5] == [0, 0, 0, 1, 0])
    assert many.index.tolist()[:4] == [0, 1, 2, 5]
    assert torch.allclose(many.p95[:2], torch.tensor([0.0, 0.1]))
    assert torch.all(many.diff[:-1] >= many.diff[1:])
    assert resolve_k(0.25, 20) == 5 and resolve_k(7, 20) == 7
    with pytest.raises(PktError):
        resolve_k(0, 20)


def _sets(lm):
    L, N = shape(lm.model)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(L * N, generator=g)
    def mk(ix):
        ix = ix.sort().values
        return NeuronSet(ix // N, ix % N, torch.rand(len(ix), generator=g) * 0.3,
                         torch.rand(len(ix), generator=g), torch.rand(len(ix), generator=g) + 0.5)
    return mk(perm[:40]), mk(perm[40:80])


def test_edit_equals_formula(tiny):
    target, opposite = _sets(tiny)
    ind = Induction(tiny.model, target, opposite, strength=1.3, keep_prob=1.0)
    L, N = shape(tiny.model)
    a = torch.randn(L, 1, 1, N)
    edited = torch.stack([ind.edit(l, a[l].clone()) for l in range(L)])
    expect = a.clone()
    amount = edit_amount(target, 1.3)
    for l, j in zip(opposite.layer.tolist(), opposite.index.tolist()):
        expect[l, 0, 0, j] = min(float(a[l, 0, 0, j]), 0.0)
    for (l, j), v in zip(zip(target.layer.tolist(), target.index.tolist()), amount.tolist()):
        expect[l, 0, 0, j] += v
    assert torch.allclose(edited, expect, atol=1e-6)
    v0 = float(target.p95[0] * 1.3 / (1 + math.exp(-10 * (float(target.diff[0]) - 0.15))))
    assert abs(float(amount[0]) - v0) < 1e-6


def test_keep_rate_and_seed(tiny):
    target, _ = _sets(tiny)
    L, N = shape(tiny.model)
    def kept(seed, draws=400):
        ind = Induction(tiny.model, target, None, strength=1.0, keep_prob=0.9, seed=seed)
        out = []
        for _ in range(draws):
            for l in range(L):
                out.append(ind.edit(l, torch.zeros(1, 1, N))[0, 0])
        return torch.stack(out)
    a, b, c = kept(5), kept(5), kept(6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    mask = torch.zeros(L, N, dtype=torch.bool)
    mask[target.layer, target.index] = True
    rows = a.view(-1, L, N)[:, mask]
    rate = float((rows != 0).float().mean())
    assert abs(rate - 0.9) < 0.02


def test_decode_only_and_hooks_removed(tiny):
    target, opposite = _sets(tiny)
    ind = Induction(tiny.model, target, opposite, strength=2.0, keep_prob=1.0)
    sites = neuron_sites(tiny.model)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        base_prefill = tiny.model(ids).logits
        base_step = tiny.model(ids[:, :1]).logits
        with ind.apply():
            assert all(len(s._forward_hooks) == 1 for s in sites)
            assert torch.equal(tiny.model(ids).logits, base_prefill)  # prompt prefill untouched
            assert not torch.allclose(tiny.model(ids[:, :1]).logits, base_step)  # a decode step
        assert all(len(s._forward_hooks) == 0 for s in sites)
        with pytest.raises(RuntimeError):
            with ind.apply():
                raise RuntimeError("boom")
        assert all(len(s._forward_hooks) == 0 for s in sites)
        assert torch.equal(tiny.model(ids[:, :1]).logits, base_step)
        with Induction(tiny.model, target, opposite, include_prompt=True, keep_prob=1.0).apply():
            assert not torch.allclose(tiny.model(ids).logits, base_prefill)


def test_hooked_decode_equals_edit_by_hand(tiny):
    """The generation hooks apply exactly ``edit`` (same keep-mask stream), with and without grad."""
    target, opposite = _sets(tiny)
    step = torch.tensor([[5]])  # the same decode step three times: only the mask changes
    sites = neuron_sites(tiny.model)

    def by_hand(ind):
        hs = [s.register_forward_hook(lambda m, i, o, layer=k: ind.edit(layer, o.clone()))
              for k, s in enumerate(sites)]
        try:
            return [tiny.model(step).logits for _ in range(3)]
        finally:
            for h in hs:
                h.remove()

    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            ref = by_hand(Induction(tiny.model, target, opposite, keep_prob=0.7, seed=3))
            ind = Induction(tiny.model, target, opposite, keep_prob=0.7, seed=3)
            with ind.apply():
                got = [tiny.model(step).logits for _ in range(3)]
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
        assert ind.forwards == 3 * len(sites)
        assert not torch.equal(got[0], got[1])  # a fresh mask per forward


def test_invalid_strength(tiny):
    target, opposite = _sets(tiny)
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(PktError, match="strength"):
            Induction(tiny.model, target, opposite, strength=bad)


def test_release_round_trip_and_range_check(tiny, tmp_path):
    target, opposite = _sets(tiny)
    export_release(tmp_path, "Openness", {"high": target, "low": opposite})
    data = json.loads((tmp_path / "Openness_dict.json").read_text())
    assert all(row[0] == int(k) and len(row) == 5 for k, rows in data.items() for row in rows)
    assert (tmp_path / "Openness_reversed_dict.json").exists()
    back = import_release(tmp_path, "Openness", *shape(tiny.model))
    for a, ns in {"high": target, "low": opposite}.items():
        got = back[a]
        order = torch.argsort(ns.diff, descending=True, stable=True)
        assert torch.equal(got.layer, ns.layer[order]) and torch.equal(got.index, ns.index[order])
        assert torch.allclose(got.p95, ns.p95[order]) and torch.allclose(got.diff, ns.diff[order])
    data["1"].append([1, 9999, 0.3, 0.5, 1.0])
    (tmp_path / "Openness_dict.json").write_text(json.dumps(data))
    with pytest.raises(PktError, match="neuron index 9999 out of range"):
        import_release(tmp_path, "Openness", *shape(tiny.model))
    (tmp_path / "Openness_dict.json").write_text(json.dumps(data)[:50])
    with pytest.raises(PktError, match="not valid JSON"):
        import_release(tmp_path, "Openness", *shape(tiny.model))


def test_artifact_cache_hit_miss_mismatch_corrupt(tmp_path):
    store = ArtifactStore(tmp_path)
    key = {"model_fingerprint": "abc", "trait": "Openness", "n": 3}
    assert store.load("statistics", key) is None  # miss
    calls = []
    def write(d):
        calls.append(1)
        (d / "x.txt").write_text("payload")
    p = store.save("statistics", key, write)
    assert store.load("statistics", key) == p  # hit
    assert store.load("statistics", {**key, "n": 4}) is None  # another key: miss
    meta = json.loads((p / "meta.json").read_text())
    meta["key"]["model_fingerprint"] = "zzz"
    (p / "meta.json").write_text(json.dumps(meta))
    assert store.load("statistics", key) is None  # not used: computed again
    p = store.save("statistics", key, write)
    assert store.load("statistics", key) == p
    (p / "x.txt").write_text("pay")  # truncated
    assert store.load("statistics", key) is None  # not used: computed again
    assert store.load("statistics", key) is None and len(calls) == 2
    # an interrupted write never publishes a directory
    def boom(d):
        (d / "x.txt").write_text("half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        store.save("other", key, boom)
    assert store.load("other", key) is None
    assert list((tmp_path / "other").iterdir()) == []  # no temporary folder left either
