"""Profiles: parsing and rejection, each method's composition rule against a hand
computation, a one-trait profile equal to the plain run, identification reuse."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from pkt import prompts
from pkt.errors import PktError
from pkt.methods.actadd import ActAddMethod
from pkt.methods.prompt import PromptMethod
from pkt.neurons.induce import Induction, edit_tables
from pkt.neurons.select import NeuronSet
from pkt.profiles import Profile, intensity_word
from pkt.traits import Trait
from pkt.validation import validate
from tests.conftest import compose_cfg, read_jsonl, run_dirs, run_pkt, stderr_lines


def ns(rows):
    """rows: (layer, index, diff, p95)."""
    return NeuronSet.from_rows([[lay, i, d, 0.9, p] for lay, i, d, p in rows])


def sig(x):
    return 1 / (1 + math.exp(-x))


# ------------------------------------------------------------------ parsing


def test_parse_shorthand_and_config_agree():
    a = Profile.parse("extraversion:high:1.2+neuroticism:low")
    b = Profile.from_config({"traits": {"extraversion": {"aspect": "high", "strength": 1.2},
                                        "neuroticism": {"aspect": "low"}}})
    c = Profile.from_config({"traits": [{"trait": "Extraversion", "aspect": "high", "strength": 1.2},
                                        {"trait": "neuroticism", "aspect": "low"}]})
    assert a == b == c
    assert [t.trait for t in a] == ["extraversion", "neuroticism"]
    assert a.traits[0].strength == 1.2 and a.traits[1].strength is None
    assert a.label == "extraversion:high:1.2+neuroticism:low"
    assert a.aspect_of("neuroticism") == "low" and a.aspect_of("openness") is None


@pytest.mark.parametrize("spec,msg", [
    ("charisma:high", "unknown trait 'charisma'"),
    ("extraversion:middle", "unknown aspect 'middle'"),
    ("extraversion:high:-1", "strength must be a finite number >= 0"),
    ("extraversion:high:nan", "strength must be a finite number >= 0"),
    ("extraversion:high:lots", "bad strength 'lots'"),
    ("extraversion:high+Extraversion:low", "trait 'extraversion' is listed twice"),
    ("extraversion", "bad personality term"),
    ("", "empty personality"),
])
def test_bad_shorthand_is_one_clear_error(spec, msg):
    with pytest.raises(PktError, match=msg):
        Profile.parse(spec)


@pytest.mark.parametrize("overrides,msg", [
    (["+profile.traits.charisma.aspect=high"], "unknown trait 'charisma'"),
    (["+profile.traits.extraversion.aspect=middle"], "unknown aspect 'middle'"),
    (["+profile.traits.extraversion.aspect=high", "+profile.traits.extraversion.strength=-0.5"],
     "strength must be a finite number >= 0"),
    (["+profile.traits.extraversion.aspect=high", "+profile.traits.extraversion.colour=red"],
     "unknown key profile.traits.extraversion.colour"),
    (["profile=extraverted_calm", "profile.conflict=vote"], "unknown profile.conflict 'vote'"),
    (["method=lora", "profile=extraverted_calm"], "method=lora does not compose profiles"),
    (["score_traits=some"], "unknown score_traits 'some'"),
])
def test_bad_profile_config_is_rejected_by_validation(overrides, msg):
    cfg = compose_cfg(["model=tiny_random", *overrides])
    with pytest.raises(PktError, match=msg):
        validate(cfg)


def test_trait_listed_twice_in_a_profile_file_is_rejected():
    with pytest.raises(PktError, match="listed twice"):
        Profile.from_config({"traits": [{"trait": "openness", "aspect": "high"},
                                        {"trait": "openness", "aspect": "low"}]})


def test_shipped_profiles_validate():
    for name in ("extraverted_calm", "sharp_critic"):
        validate(compose_cfg(["model=tiny_random", f"profile={name}"]))


# ------------------------------------------------------------------ NPTI composition

A_T = ns([(0, 1, 0.25, 2.0), (1, 2, 0.15, 1.0)])  # trait A raises (0,1) and (1,2)
A_O = ns([(0, 3, 0.3, 1.0)])  # ... and clamps (0,3)
B_T = ns([(0, 1, 0.35, 4.0), (0, 3, 0.2, 1.0)])  # trait B raises (0,1) too, and (0,3)
B_O = ns([(1, 0, 0.2, 1.0)])  # ... and clamps (1,0)
PARTS = [(A_T, A_O, 1.0), (B_T, B_O, 0.5)]


def hand_tables(conflict):
    add = torch.zeros(2, 4)
    opp = torch.zeros(2, 4, dtype=torch.bool)
    # (0,1): raised by both: 2*1*sig(1.0) + 4*0.5*sig(2.0) = 3.22, capped at max(2*1, 4*0.5) = 2
    add[0, 1] = min(2 * sig(1.0) + 2 * sig(2.0), 2.0)
    add[1, 2] = 1.0 * sig(0.0)
    opp[1, 0] = True
    b03 = 1.0 * 0.5 * sig(0.5)  # B raises (0,3), which A clamps: the conflict
    if conflict == "target_wins":
        add[0, 3] = b03
    elif conflict == "clamp_wins":
        opp[0, 3] = True
    return add, opp


@pytest.mark.parametrize("conflict", ["target_wins", "clamp_wins", "drop"])
def test_edit_tables_match_the_hand_computation(conflict):
    add, opp, info = edit_tables(PARTS, 2, 4, deactivate=True, conflict=conflict)
    want_add, want_opp = hand_tables(conflict)
    assert torch.allclose(add, want_add, atol=1e-6), (add, want_add)
    assert torch.equal(opp, want_opp)
    assert info["shared"] == 1 and info["conflicts"] == 1
    assert info["raised"] == 3


def test_one_trait_is_never_capped_and_equals_the_single_trait_formula():
    # a negative p95 would be 'capped' by p95 * strength if the cap applied to one trait
    t = ns([(0, 0, 0.3, -0.5), (1, 3, 0.12, 2.0)])
    o = ns([(0, 2, 0.2, 1.0)])
    add, opp, info = edit_tables([(t, o, 1.5)], 2, 4)
    assert add[0, 0] == pytest.approx(-0.5 * 1.5 * sig(1.5))
    assert add[1, 3] == pytest.approx(2.0 * 1.5 * sig(-0.3))
    assert opp[0, 2] and int(opp.sum()) == 1
    assert info == {"raised": 2, "clamped": 1, "shared": 0, "conflicts": 0}


def test_profile_induction_edits_activations_as_the_tables_say(tiny, one_thread):
    n_layers = len(tiny.model.model.layers)
    width = tiny.model.config.intermediate_size
    a_t = ns([(0, 5, 0.3, 1.0), (1, 7, 0.2, 2.0)])
    a_o = ns([(0, 9, 0.2, 1.0)])
    b_t = ns([(0, 9, 0.4, 3.0)])  # raises what A clamps
    b_o = ns([(1, 7, 0.3, 1.0)])  # clamps what A raises
    parts = [(a_t, a_o, 1.0), (b_t, b_o, 2.0)]
    for conflict in ("target_wins", "clamp_wins", "drop"):
        ind = Induction(tiny.model, None, None, keep_prob=1.0, parts=parts, conflict=conflict)
        add, opp, _ = edit_tables(parts, n_layers, width, True, conflict)
        x = torch.randn(1, 1, width)
        for layer in (0, 1):
            got = ind.edit(layer, x.clone())
            want = torch.where(opp[layer], torch.minimum(x, torch.zeros(())), x) + add[layer]
            assert torch.allclose(got, want, atol=1e-6)
        if conflict == "target_wins":
            assert add[0, 9] > 0 and not opp[0, 9]
        elif conflict == "clamp_wins":
            assert add[0, 9] == 0 and opp[0, 9] and add[1, 7] == 0 and opp[1, 7]
        else:
            assert add[0, 9] == 0 and not opp[0, 9] and add[1, 7] == 0 and not opp[1, 7]


# ------------------------------------------------------------------ ActAdd and prompts


def fake_actadd(vec, aspect, strength, coefficient=4.0):
    m = object.__new__(ActAddMethod)
    m.ctx = SimpleNamespace(aspect=aspect)
    m.layers, m.coefficient, m.vectors = [0], coefficient, {0: torch.tensor(vec)}
    m.profile_strength = strength
    return m


def test_actadd_profile_is_the_signed_weighted_sum():
    a = fake_actadd([1.0, 2.0], "high", None)  # +4 * [1, 2]
    b = fake_actadd([3.0, -1.0], "low", 0.5)  # -0.5 * 4 * [3, -1] = [-6, 2]
    adds = ActAddMethod.profile_additions([a, b])
    assert torch.equal(adds[0], torch.tensor([-2.0, 10.0]))
    # one trait without a strength: exactly the single-trait vector
    assert torch.equal(ActAddMethod.profile_additions([a])[0], a.additions()[0])


def fake_prompt(variant, trait, aspect, strength, personas=None):
    m = object.__new__(PromptMethod)
    bench = SimpleNamespace(persona_for=lambda asp, i, seed: f"[{trait} {asp} {i}]")
    m.ctx = SimpleNamespace(trait=Trait.load(trait), aspect=aspect, bench=bench, seed=0)
    m.variant, m.profile_strength = variant, strength
    return m


def test_prompt_profiles_combine_every_trait():
    q = "What do you do on Sundays?"
    parts = [fake_prompt("simple", "extraversion", "high", 2.0),
             fake_prompt("simple", "neuroticism", "low", None),
             fake_prompt("simple", "agreeableness", "low", 0.5)]
    assert PromptMethod.profile_prompt(parts, q, 0) == prompts.simple(
        "very extraverted, calm and slightly disagreeable", q)
    # one trait without a strength: the single-trait prompt
    one = fake_prompt("simple", "openness", "high", None)
    assert PromptMethod.profile_prompt([one], q, 3) == prompts.simple(
        Trait.load("openness").adjectives["high"], q)
    p2 = [fake_prompt("p2", "extraversion", "high", None),
          fake_prompt("p2", "neuroticism", "low", None)]
    assert PromptMethod.profile_prompt(p2, q, 4) == prompts.p2(  # drawn per question text
        f"[extraversion high {q}] [neuroticism low {q}]", q)


def test_intensity_words():
    assert [intensity_word(s) for s in (None, 0.3, 0.5, 0.8, 1.0, 1.5, 1.6, 3.0)] == \
        [None, "slightly", "slightly", "somewhat", None, None, "very", "very"]


# ------------------------------------------------------------------ through the CLI

TINY = ["model=tiny_random", "data.n_search=4", "data.n_test=3", "gen.max_new_tokens=8",
        "search_gen.max_new_tokens=8", "logger=none", "eval.capability_n_mc=5"]


FIVE = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")


def test_one_trait_profile_equals_the_plain_run_and_reuses_identification(tmp_path,
                                                                          seed_scorers):
    cache = seed_scorers(tmp_path / "cache", *FIVE)  # the scorers' fit is not checked here
    # the capability figures are not compared here: measured in the two-trait run below
    no_cap = "eval.capability=false"
    plain = run_pkt([*TINY, no_cap, "method=neuron", "trait=extraversion", "aspect=high"],
                    tmp_path / "a", cache)
    assert plain.returncode == 0, plain.stderr[-2000:]
    prof = run_pkt([*TINY, no_cap, "method=neuron", "+profile.traits.extraversion.aspect=high",
                    "score_traits=own"], tmp_path / "b", cache)
    assert prof.returncode == 0, prof.stderr[-2000:]
    (da,), (db,) = run_dirs(tmp_path / "a"), run_dirs(tmp_path / "b")
    ga, gb = read_jsonl(da / "generations.jsonl"), read_jsonl(db / "generations.jsonl")
    assert [g["response"] for g in ga] == [g["response"] for g in gb]
    assert [g["trait_score"] for g in ga] == [g["trait_score"] for g in gb]
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (da, db))
    assert mb["traits"]["extraversion"]["score"] == ma["trait_score"]
    assert mb["parts"]["extraversion"]["neuron_stats_cached"] is True
    stats = cache / "artifacts" / "statistics"
    assert len(list(stats.iterdir())) == 1
    # a two-trait profile: the cached trait is reused, the new one computed once
    two = run_pkt([*TINY, "method=neuron", "profile=extraverted_calm"], tmp_path / "c", cache)
    assert two.returncode == 0, two.stderr[-2000:]
    (dc,) = run_dirs(tmp_path / "c")
    mc = json.loads((dc / "metrics.json").read_text())
    assert mc["parts"]["extraversion"]["neuron_stats_cached"] is True
    assert mc["parts"]["neuroticism"]["neuron_stats_cached"] is False
    assert len(list(stats.iterdir())) == 2
    # all five traits scored, each with its change against the cached base answers
    assert set(mc["traits"]) == set(FIVE)
    assert mc["capability"]["n_mc"] == 5 and mc["capability"]["mc_ratio"] is not None
    assert mc["traits"]["extraversion"]["aspect"] == "high"
    assert mc["traits"]["openness"]["aspect"] is None
    for row in mc["traits"].values():
        assert row["delta"] == pytest.approx(row["score"]["mean"] - row["base"]["mean"])
    assert mc["profile"]["label"] == "extraverted_calm"
    assert mc["profile_composition"]["conflict_rule"] == "target_wins"
    gens = read_jsonl(dc / "generations.jsonl")
    assert len(gens) == 15 and {g["trait"] for g in gens} == set(mc["traits"])
    assert all(g["profile"] == "extraverted_calm" for g in gens)
    # rescore: every answer and base answer by its own trait's scorer, table rebuilt
    from pkt import records as rio
    from pkt.eval.rescore import rescore_run

    spoiled = [{**g, "trait_score": 0.0, "base_trait_score": 0.0} for g in gens]
    rio.write_generations(dc, spoiled)
    assert rescore_run(dc, str(cache))
    again = json.loads((dc / "metrics.json").read_text())
    for t, row in mc["traits"].items():
        assert again["traits"][t]["score"]["mean"] == pytest.approx(row["score"]["mean"])
        assert again["traits"][t]["delta"] == pytest.approx(row["delta"])
    assert "trait_score" not in again
    # a blind packet of a profile run: induced and base conditions per trait, base only once
    from pkt.annotation.packet import make_packet

    man = make_packet([dc, dc], tmp_path / "packet", per_condition=3,
                      traits=["extraversion", "neuroticism"])
    assert man["counts"] == {"base/extraversion/none": 3, "base/neuroticism/none": 3,
                             "neuron [extraverted_calm]/extraversion/high": 3,
                             "neuron [extraverted_calm]/neuroticism/low": 3}


def test_lora_profile_is_refused_with_one_line(tmp_path):
    r = run_pkt([*TINY, "method=lora", "profile=extraverted_calm"], tmp_path)
    assert r.returncode != 0
    lines = stderr_lines(r)
    assert lines[-1].startswith("pkt: error: method=lora does not compose profiles"), lines
    assert "Traceback" not in r.stderr


def test_profile_strength_auto_scales_the_union_into_the_bounds(tmp_path, seed_scorers):
    """Each trait's strength=auto choice, then one common factor for the composed edit."""
    auto = ["method=neuron", "profile=extraverted_calm", "method.strength=auto",
            "method.strength_grid=[0.5,2.0]", "method.auto_n_mc=4", "eval.capability=false",
            "score_traits=own"]
    seed_scorers(tmp_path / "cache", "extraversion", "neuroticism")
    loose = run_pkt([*TINY, *auto, "method.max_ppl_ratio=1e9", "method.min_mc_ratio=0"],
                    tmp_path / "loose", tmp_path / "cache")
    assert loose.returncode == 0, loose.stderr[-2000:]
    (d,) = run_dirs(tmp_path / "loose")
    m = json.loads((d / "metrics.json").read_text())
    pa = m["profile_strength_auto"]
    assert pa["auto_factor"] == 1.0 and len(pa["auto_trials"]) == 1 and pa["auto_cached"] is False
    assert m["params"]["strengths"] == {"extraversion": 2.0, "neuroticism": 2.0}
    # bounds nothing can meet: every factor is tried, the smallest is used
    tight = run_pkt([*TINY, *auto, "method.max_ppl_ratio=0.5"], tmp_path / "tight",
                    tmp_path / "cache")
    assert tight.returncode == 0, tight.stderr[-2000:]
    (d,) = run_dirs(tmp_path / "tight")
    m = json.loads((d / "metrics.json").read_text())
    pa = m["profile_strength_auto"]
    assert [t["factor"] for t in pa["auto_trials"]] == [1.0, 0.85, 0.7, 0.55, 0.4]
    assert not any(t["within"] for t in pa["auto_trials"]) and pa["auto_factor"] == 0.4
    # each trait's own choice was the grid's first (nothing within bounds), times 0.4
    assert m["params"]["strengths"] == pytest.approx({"extraversion": 0.2, "neuroticism": 0.2})
