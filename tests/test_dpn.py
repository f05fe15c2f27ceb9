"""method=dpn (DPN-LE): the mlp.down_in site on every architecture, the statistics, the
selection rule and the weighting against hand-computed values, the edit (exact amounts,
where and when), the artifact, a two-trait profile, and the three front doors."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import pkt
from pkt.dataset import Bench
from pkt.errors import PktError
from pkt.generation import GenConfig
from pkt.hooks import Scope, hooked, site_modules
from pkt.methods import registry
from pkt.methods.dpn import DpnMethod
from pkt.models import TINY_ARCHS, TinyRandomModel
from pkt.neurons import identify
from pkt.neurons.dpn import band_layers, effect_sizes, rank_weights, select, statistics, unit_edit
from pkt.neurons.sites import decoder_layers
from pkt.profiles import Profile
from tests.conftest import CONF, openness_context, read_jsonl, run_dirs, run_pkt

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = ["Art?", "How do you spend a long, free afternoon when nobody needs you?",
             "Would you try a food you have never heard of?", "Poetry: yes or no?",
             "How do you feel about travelling alone to a country whose language you do not speak?"]
PERSONAS = {"high": ["You are curious and imaginative.",
                     "You love art, travel and new ideas of every kind."],
            "low": ["You like routine.", "You avoid anything unfamiliar or abstract."]}
# a selection that keeps several neurons of the 128 per layer of the tiny model
LOOSE = dict(quantile=0.8, d_threshold=0.3, band=[0.0, 1.0])


def _ctx(lm, root: Path, aspect: str = "high", bench_trait: str = "Openness") -> object:
    ctx = openness_context(lm, QUESTIONS, PERSONAS, root, GenConfig(max_new_tokens=6, batch_size=3),
                           aspect=aspect)
    ctx.bench.trait = bench_trait
    return ctx


# ------------------------------------------------------------------ the hook site


def _down_input_by_hand(arch: str, mlp, x: torch.Tensor) -> torch.Tensor:
    if arch == "gpt2":
        return mlp.act(mlp.c_fc(x))
    if arch == "phi3":
        gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)
        return up * mlp.activation_fn(gate)
    return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)


@pytest.mark.parametrize("arch", sorted(TINY_ARCHS))
def test_down_in_site_is_the_down_projection_input(arch):
    lm = TinyRandomModel(arch=arch, init_seed=3).load()
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45]])
    layers = decoder_layers(lm.model)
    mlps = [layer.mlp for layer in layers]
    xs, seen = {}, {}
    pre = [m.register_forward_pre_hook(lambda mod, a, i=i: xs.__setitem__(i, a[0].detach().clone()))
           for i, m in enumerate(mlps)]
    try:
        with torch.no_grad():
            base = lm.model(ids).logits
            with hooked(lm.model, {("mlp.down_in", i): (lambda mod, a, i=i: seen.__setitem__(
                    i, a[0].detach().clone())) for i in range(len(layers))}):
                again = lm.model(ids).logits
    finally:
        for h in pre:
            h.remove()
    assert torch.equal(again, base)  # a hook that returns None changes nothing
    sites = site_modules(lm.model, "mlp.down_in")
    assert len(sites) == len(layers)
    for i, m in enumerate(mlps):
        with torch.no_grad():
            want = _down_input_by_hand(arch, m, xs[i])
        assert seen[i].shape[-1] == want.shape[-1]
        assert torch.allclose(seen[i], want, atol=1e-6), (arch, i)
        assert sites[i] is (m.c_proj if arch == "gpt2" else m.down_proj)
    # an edit there is what the down projection sees; the hooks are gone afterwards
    v = torch.zeros(seen[0].shape[-1])
    v[5] = 2.0
    got = {}
    with torch.no_grad(), hooked(lm.model, {("mlp.down_in", 0): lambda mod, a: (a[0] + v,)}):
        h = sites[0].register_forward_pre_hook(lambda mod, a: got.__setitem__(0, a[0].clone()))
        try:
            lm.model(ids)
        finally:
            h.remove()
    assert torch.allclose(got[0] - seen[0], v.expand_as(seen[0]), atol=1e-6)
    assert all(len(s._forward_pre_hooks) == 0 for s in sites)


# ------------------------------------------------------------------ statistics


def _last_token_by_hand(lm, text: str) -> torch.Tensor:
    """[layers, width]: act(gate(x)) * up(x) at the last token, one unpadded forward."""
    ids = lm.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    xs = {}
    layers = lm.model.model.layers
    hs = [layer.mlp.register_forward_pre_hook(lambda m, a, i=i: xs.__setitem__(i, a[0]))
          for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            lm.model(ids)
            return torch.stack([_down_input_by_hand("llama", layer.mlp, xs[i])[0, -1]
                                for i, layer in enumerate(layers)]).double()
    finally:
        for h in hs:
            h.remove()


def test_statistics_equal_the_hand_computation(spread_tiny, tmp_path):
    lm = spread_tiny
    ctx = _ctx(lm, tmp_path)
    st = statistics(lm, ctx.bench, ctx.seed, batch_size=2, progress=False)  # padded batches
    rows = {a: torch.stack([_last_token_by_hand(lm, t)
                            for t in identify.roleplay_prompts(lm, ctx.bench, a, ctx.seed)]).numpy()
            for a in ("high", "low")}
    for a, x in rows.items():
        assert int(st[f"{a}.n"]) == len(QUESTIONS)
        assert np.allclose(st[f"{a}.mean"].numpy(), x.mean(0), atol=1e-5)
        assert np.allclose(st[f"{a}.m2"].numpy() / (len(x) - 1), x.var(0, ddof=1), atol=1e-5)
    delta, d = effect_sizes(st)
    hi, lo = rows["high"], rows["low"]
    pooled = ((len(hi) - 1) * hi.var(0, ddof=1) + (len(lo) - 1) * lo.var(0, ddof=1)) / (
        len(hi) + len(lo) - 2)
    assert np.allclose(delta.numpy(), hi.mean(0) - lo.mean(0), atol=1e-5)
    assert np.allclose(d.numpy(), (hi.mean(0) - lo.mean(0)) / np.sqrt(pooled + 1e-8),
                       rtol=1e-4, atol=1e-4)
    assert float(delta.abs().max()) > 1e-2


# ------------------------------------------------------------------ selection and weighting


def test_selection_needs_both_criteria_per_layer_with_the_sign_of_d():
    # 10 neurons; quantile 0.7 of |delta| = 1..10 (linear) is 7.3: only |delta| 8, 9, 10 pass
    mags = torch.tensor([10.0, 9.0, 8.0, 7.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64)
    sign = torch.tensor([1, -1, 1, 1, -1, 1, 1, 1, 1, 1], dtype=torch.float64)
    d0 = torch.tensor([2.0, -1.0, 0.8, 5.0, -3.0, 0, 0, 0, 0, 0], dtype=torch.float64)
    assert np.quantile(mags.numpy(), 0.7) == pytest.approx(7.3)
    # layer 1: the same pattern 100 times larger (a global quantile would leave layer 0
    # empty); layer 2: not in the band
    delta = torch.stack([sign * mags, 100 * sign * mags, sign * mags])
    d = torch.stack([d0, d0, d0])
    high, low = select(delta, d, [0, 1], quantile=0.7, d_threshold=0.8)
    for layer in (0, 1):
        # 0: |delta| 10 and d 2 -> high; 1: |delta| 9 and d -1 -> low; 2: d exactly 0.8 (the
        # test is strict); 3: d 5 but |delta| 7 < 7.3; 4: d -3 but |delta| 1
        assert high[layer].nonzero().flatten().tolist() == [0]
        assert low[layer].nonzero().flatten().tolist() == [1]
    assert not high[2].any() and not low[2].any()
    assert select(delta, d, [0], 0.7, 0.79)[0][0].nonzero().flatten().tolist() == [0, 2]


def test_rank_weights_and_the_edit_per_aspect_and_mode():
    d = torch.tensor([[3.0, -1.0, 2.0, -2.0, 9.0], [0.0, 0.0, 4.0, 0.0, 0.0]], dtype=torch.float64)
    delta = torch.tensor([[0.5, -0.25, 1.0, -2.0, 7.0], [0.0, 0.0, 3.0, 0.0, 0.0]],
                         dtype=torch.float64)
    high = torch.tensor([[True, False, True, False, False], [False, False, True, False, False]])
    low = torch.tensor([[False, True, False, True, False], [False] * 5])
    w = rank_weights(d, high | low)
    # layer 0: |d| 1 (n1) < 2 (n2) = 2 (n3, later index) < 3 (n0); neuron 4 is not chosen
    assert w[0].tolist() == pytest.approx([1.0, 0.75, 0.75 + 0.25 / 3, 0.75 + 0.5 / 3, 0.0])
    assert w[1].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]  # one neuron alone: the top weight
    e = unit_edit(delta, d, high, low, "high", "both", "none")
    assert e.tolist() == [[0.5, -0.25, 1.0, -2.0, 0.0], [0.0, 0.0, 3.0, 0.0, 0.0]]
    e = unit_edit(delta, d, high, low, "low", "both", "rank")
    assert e[0].tolist() == pytest.approx([-0.5, 0.25 * 0.75, -(0.75 + 0.25 / 3),
                                           2 * (0.75 + 0.5 / 3), 0.0])
    # directional: only the aspect's own set (ranked among that set alone)
    e = unit_edit(delta, d, high, low, "low", "directional", "rank")
    assert e[0].tolist() == pytest.approx([0.0, 0.25 * 0.75, 0.0, 2.0, 0.0])
    assert e[1].tolist() == [0.0] * 5
    assert unit_edit(delta, d, high, low, "high", "directional", "none")[0].tolist() == \
        [0.5, 0.0, 1.0, 0.0, 0.0]


def test_band_layers():
    assert band_layers(32, [0.375, 1.0]) == list(range(12, 32))  # the release's LLaMA-3-8B
    assert band_layers(28, [0.5, 1.0]) == list(range(14, 28))  # and Qwen2.5-7B
    assert band_layers(30, [0.375, 1.0]) == list(range(12, 30))
    assert band_layers(2, [0.375, 1.0]) == [1]


# ------------------------------------------------------------------ the edit


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    lm = TinyRandomModel(init_seed=3).load()
    root = tmp_path_factory.mktemp("dpn")
    m = DpnMethod(_ctx(lm, root), strength=2.5, weighting="rank", **LOOSE)
    m.prepare()
    return lm, root, m


def _down_inputs(lm, ids, ctxmgr=None) -> tuple[dict, dict]:
    """What every layer's down projection input is before and after any edit (hooks that
    run before and after the edit's own: pre-hooks run in the order they were added)."""
    before, after = {}, {}
    sites = site_modules(lm.model, "mlp.down_in")

    def rec(into, i):
        return lambda m, a: into.__setitem__(i, a[0].clone())

    hs = [s.register_forward_pre_hook(rec(before, i)) for i, s in enumerate(sites)]
    try:
        with ctxmgr or torch.no_grad():
            hs += [s.register_forward_pre_hook(rec(after, i)) for i, s in enumerate(sites)]
            with torch.no_grad():
                lm.model(ids)
    finally:
        for h in hs:
            h.remove()
    return before, after


def test_edit_is_the_hand_amount_at_the_selected_neurons_on_decode_steps_only(prepared):
    lm, _, m = prepared
    assert m.prepared.metrics["neurons_edited"] >= 4
    # by hand: 2.5 * (+1 for high) * delta * w(rank of |d| among the layer's selected)
    chosen = m.high | m.low
    want = torch.zeros(chosen.shape, dtype=torch.float64)
    for layer in range(chosen.shape[0]):
        idx = chosen[layer].nonzero().flatten().tolist()
        by_d = sorted(idx, key=lambda j: (abs(float(m.d[layer, j])), j))
        for r, j in enumerate(by_d):
            w = 1.0 if len(idx) == 1 else 0.75 + 0.25 * r / (len(idx) - 1)
            want[layer, j] = 2.5 * float(m.delta[layer, j]) * w
    ids = lm.tokenizer("Tell me about your weekend plans.", return_tensors="pt",
                       add_special_tokens=False)["input_ids"]
    step = ids[:, -1:]
    plain, _ = _down_inputs(lm, ids)
    before, prefill = _down_inputs(lm, ids, m.intervention())
    pre_step, edited = _down_inputs(lm, step, m.intervention())
    for layer in range(chosen.shape[0]):
        assert torch.equal(prefill[layer], plain[layer])  # the prompt is untouched
        diff = (edited[layer] - pre_step[layer])[0, 0].double()
        assert torch.allclose(diff, want[layer], atol=1e-6)
        assert not diff[~chosen[layer]].any()  # exactly nothing elsewhere
    # teacher-forced scoring: the marked positions only
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    mask[:, -2:] = True
    scope = Scope.marked()
    scope.mark(mask)
    before, scored = _down_inputs(lm, ids, m.intervention(scope=scope))
    for layer in range(chosen.shape[0]):
        diff = (scored[layer] - before[layer])[0].double()
        assert not diff[:-2].any()
        assert torch.allclose(diff[-2:], want[layer].expand(2, -1), atol=1e-6)
    # include_prompt: every position
    m.include_prompt = True
    try:
        before, every = _down_inputs(lm, ids, m.intervention())
    finally:
        m.include_prompt = False
    for layer in range(chosen.shape[0]):
        assert torch.allclose((every[layer] - before[layer])[0].double(),
                              want[layer].expand(ids.shape[1], -1), atol=1e-6)


def test_edit_in_the_model_dtype_and_generation_keeps_the_first_token(tmp_path):
    lm = TinyRandomModel(init_seed=3, dtype="bfloat16").load()
    m = DpnMethod(_ctx(lm, tmp_path), strength=40.0, **LOOSE)
    m.prepare()
    step = torch.tensor([[70]])
    base, edited = _down_inputs(lm, step, m.intervention())
    layer = int((m.high | m.low).sum(1).argmax())
    assert edited[layer].dtype == torch.bfloat16
    want = (m.additions()[layer]).to(torch.bfloat16)
    j = int(want.abs().argmax())
    assert float(edited[layer][0, 0, j]) == pytest.approx(float(base[layer][0, 0, j] + want[j]),
                                                         rel=1e-2, abs=1e-2)
    # generation: the first token comes from the untouched prefill, later ones are steered
    plain = DpnMethod(_ctx(lm, tmp_path), strength=0.0, **LOOSE)
    plain.prepare()
    q = ["How do you spend a free afternoon?"] * 2
    a, b = plain.respond(q), m.respond(q)
    assert a[0].response_ids[0] == b[0].response_ids[0]
    assert a[0].response_ids != b[0].response_ids


def test_hooks_removed_after_the_block_and_after_an_error(prepared):
    lm, _, m = prepared
    sites = site_modules(lm.model, "mlp.down_in")
    edited = sorted(m.additions())
    with m.intervention():
        assert [len(s._forward_pre_hooks) for s in sites] == \
            [int(i in edited) for i in range(len(sites))]
    assert all(len(s._forward_pre_hooks) == 0 for s in sites)
    with pytest.raises(RuntimeError, match="boom"):
        with m.intervention():
            raise RuntimeError("boom")
    assert all(len(s._forward_pre_hooks) == 0 for s in sites)


# ------------------------------------------------------------------ artifacts


def test_statistics_are_cached_and_refused_for_another_model(prepared, tmp_path):
    lm, root, m = prepared
    again = DpnMethod(_ctx(lm, root, aspect="low"), strength=1.0, **LOOSE)
    assert again.prepare().metrics["dpn_stats_cached"] is True
    name = m.prepared.artifacts["dpn_statistics"]
    assert again.prepared.artifacts["dpn_statistics"] == name
    assert torch.equal(again.delta, m.delta) and torch.equal(again.high, m.high)
    path = root / "cache" / "artifacts" / "dpn_statistics" / name
    assert json.loads((path / "meta.json").read_text())["key"]["model_fingerprint"] == lm.fingerprint
    # neurons_from: the same model takes it, another one refuses it in one line
    same = DpnMethod(_ctx(lm, tmp_path), strength=1.0, neurons_from=str(path), **LOOSE)
    same.prepare()
    assert torch.equal(same.high, m.high) and same.prepared.artifacts["neurons_from"] == str(path)
    other = TinyRandomModel(init_seed=4).load()
    assert other.fingerprint != lm.fingerprint
    with pytest.raises(PktError) as e:
        DpnMethod(_ctx(other, tmp_path), strength=1.0, neurons_from=str(path), **LOOSE).prepare()
    msg = str(e.value)
    assert "were made for another model" in msg and "\n" not in msg
    with pytest.raises(PktError, match="are for trait Openness, not Extraversion"):
        DpnMethod(_ctx(lm, tmp_path, bench_trait="Extraversion"), strength=1.0,
                  neurons_from=str(path), **LOOSE).prepare()
    # cache only: nothing identified yet for another trait
    ctx = _ctx(lm, root, bench_trait="Extraversion")
    ctx.compute = False
    with pytest.raises(identify.NotIdentified, match="no DPN statistics of Extraversion"):
        DpnMethod(ctx, strength=1.0).prepare()


# ------------------------------------------------------------------ profiles


def test_two_trait_profile_adds_the_sum_of_the_traits_edits(tmp_path):
    lm = TinyRandomModel(init_seed=3).load()

    def bench_for(trait: str) -> Bench:
        qs = QUESTIONS if trait == "openness" else [q + " Why?" for q in QUESTIONS]
        return Bench(trait=trait.title(), test=[], personas=PERSONAS, data_hash=trait,
                     search=[{"question": q, "_line": i + 1} for i, q in enumerate(qs)])

    profile = Profile.parse("openness:high:2+extraversion:low")
    pm = registry.compose(lm, profile, "dpn", bench_for, cache_dir=tmp_path,
                          params={"strength": 1.5, **LOOSE})
    pm.prepare()
    a, b = pm.parts
    assert (a.strength, b.strength) == (2.0, 1.5)  # the profile's strength replaces gamma
    assert pm.params["strengths"] == {"openness": 2.0, "extraversion": 1.5}
    ua, ub = a.unit_edit("high"), b.unit_edit("low")
    assert not torch.equal(ua != 0, ub != 0)
    want = 2.0 * ua + 1.5 * ub  # the sum per neuron
    step = torch.tensor([[70]])
    base, edited = _down_inputs(lm, step, pm.intervention())
    for layer in range(want.shape[0]):
        assert torch.allclose((edited[layer] - base[layer])[0, 0], want[layer], atol=1e-6)
    info = pm.prepared.metrics["profile_composition"]
    both = (ua != 0) & (ub != 0)
    assert info == {"rule": "sum", "edited": int(((ua != 0) | (ub != 0)).sum()),
                    "shared": int(both.sum())}
    # a one-trait profile is the single-trait edit
    one = registry.compose(lm, Profile.parse("openness:high"), "dpn", bench_for,
                           cache_dir=tmp_path, params={"strength": 1.5, **LOOSE}, as_profile=True)
    one.prepare()
    alone = one.parts[0].additions()
    composed = DpnMethod.profile_additions(one.parts)
    assert set(alone) == set(composed) and all(torch.equal(alone[i], composed[i]) for i in alone)


# ------------------------------------------------------------------ settings


def test_the_config_states_the_class_defaults():
    node = OmegaConf.to_container(OmegaConf.load(CONF / "method" / "dpn.yaml"))
    assert node.pop("name") == "dpn"
    assert node.pop("search_gen") == "${search_gen}"  # the runner's block (source=answers)
    assert inspect.signature(DpnMethod).parameters["search_gen"].default is None
    params = inspect.signature(DpnMethod).parameters
    assert set(node) == set(params) - {"ctx", "name", "search_gen"}
    for k, v in node.items():
        default = params[k].default
        assert (list(default) if isinstance(default, tuple) else default) == v, k
    assert registry.method_class("dpn") is DpnMethod
    from pkt.serve.personas import parse_shorthand, served_methods

    assert "dpn" in served_methods() and "dpn" in registry.profile_methods()
    assert parse_shorthand("openness:high@dpn", "neuron", "personality").method == "dpn"
    assert registry.accepts("dpn", "search_gen")  # NPTI's answers, for source=answers


@pytest.mark.parametrize("kw,msg", [
    ({"strength": "lots"}, "method.strength must be a finite number >= 0 or 'auto', got 'lots'"),
    ({"strength": -1}, "method.strength must be a finite number >= 0"),
    ({"quantile": 1.0}, r"method.quantile must be a finite number in \(0, 1\), got 1.0"),
    ({"d_threshold": -0.1}, "method.d_threshold must be a finite number >= 0"),
    ({"weighting": "linear"}, "unknown method.weighting 'linear' \\(choose from: none, rank\\)"),
    ({"neuron_mode": "all"}, "unknown method.neuron_mode 'all'"),
    ({"band": [0.5, 0.5]}, "method.band must be \\[start, end\\] with 0 <= start < end <= 1"),
    ({"band": [0.1, 0.2]}, "method.band \\[0.1, 0.2\\] holds no layer of a model with 2"),
    ({"layers": [2]}, "method.layers: 2 is out of range for a model with 2 decoder layers"),
    ({"layers": [1, -1]}, "method.layers names a layer twice"),
    ({"strength_grid": []}, "method.strength_grid must be a non-empty list"),
])
def test_bad_settings_are_one_clear_error(tiny, tmp_path, kw, msg):
    with pytest.raises(PktError, match=msg):
        DpnMethod(_ctx(tiny, tmp_path), **kw)


def test_layers_and_band_resolve(tiny, tmp_path):
    assert DpnMethod(_ctx(tiny, tmp_path)).layers == [1]  # the default band on 2 layers
    assert DpnMethod(_ctx(tiny, tmp_path), layers=[-2]).layers == [0]
    assert DpnMethod(_ctx(tiny, tmp_path), band=[0.0, 1.0]).describe()["layers"] == [0, 1]
    with pytest.raises(PktError, match="call prepare"):
        DpnMethod(_ctx(tiny, tmp_path), strength=1.0).intervention()


# ------------------------------------------------------------------ three doors


def test_runner_api_and_server_give_the_same_tokens(tmp_path):
    """python -m pkt.run with strength=auto (a 10-item MC probe), both aspects; then the API
    and the server from the runner's cache only."""
    cache = tmp_path / "cache"
    r = run_pkt(["-m", "model=tiny_random", "method=dpn", "trait=openness", "aspect=high,low",
                 "data.n_search=6", "data.n_test=3", "gen.max_new_tokens=8", "gen.batch_size=1",
                 "method.auto_n_mc=10", "logger=none", "eval=none"], tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = {}
    for d in run_dirs(tmp_path):
        m = json.loads((d / "metrics.json").read_text())
        runs[m["aspect"]] = (d, m, read_jsonl(d / "generations.jsonl"))
    assert set(runs) == {"high", "low"}
    d, m, gens = runs["high"]
    assert m["method"] == "dpn" and len(gens) == 3 and all(g["method"] == "dpn" for g in gens)
    assert m["params"]["strength_mode"] == "auto"
    assert m["params"]["strength"] == m["strength_auto"]["chosen"]
    assert m["params"]["layers"] == [1] and m["params"]["band"] == [0.375, 1.0]
    assert m["search_prompts_high"] == 6 and m["neurons_edited"] >= 1
    assert m["dpn_stats_cached"] is False and runs["low"][1]["dpn_stats_cached"] is True
    arts = [json.loads((runs[a][0] / "run_info.json").read_text())["artifacts"] for a in runs]
    assert arts[0]["dpn_statistics"] == arts[1]["dpn_statistics"]  # one identification
    assert (d / "dpn_neurons.json").is_file() and (d / "neurons_per_layer.png").is_file()

    from pkt.serve import Settings
    from tests.test_serve import Running

    lm = pkt.load_model("tiny_random")
    qs = [g["question"] for g in gens]
    api = pkt.personality(lm, "openness:high", "dpn", n_search=6, cache=cache, compute=False,
                          auto_n_mc=10)
    assert api.info["settings"] == m["params"]
    assert api.answer(qs, max_new_tokens=8, batch_size=1) == [g["response"] for g in gens]
    settings = Settings(n_search=6, cache_dir=str(cache), max_tokens=8, identify=False,
                        params={"dpn": {"auto_n_mc": 10}})
    with Running(lm, settings) as srv:
        for q, g in zip(qs, gens):
            got = srv.chat(messages=[{"role": "user", "content": q}], max_tokens=8,
                           personality="openness:high@dpn")
            assert got.status_code == 200, got.text
            assert got.json()["choices"][0]["message"]["content"] == g["response"]
