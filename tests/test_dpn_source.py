"""Where the statistics come from (experiments/dpn_study): DPN-LE over NPTI's persona
answers (``method=dpn method.source=answers``) and NPTI over the last role-play prompt token
(``method=neuron method.source=prompts``), against activations recorded by hand, one
sequence at a time, on the tiny model; their cache keys; the published defaults' keys
unchanged."""

from __future__ import annotations

import inspect

import pytest
import torch
from omegaconf import OmegaConf

from pkt.artifacts import ArtifactStore, key_hash, read_meta
from pkt.errors import PktError
from pkt.generation import GenConfig
from pkt.hooks import hooked
from pkt.methods.dpn import DpnMethod
from pkt.methods.neuron import NeuronMethod
from pkt.models import TinyRandomModel
from pkt.neurons import identify
from pkt.neurons.dpn import answer_moments, answer_statistics, effect_sizes, select
from pkt.neurons.select import select_sets
from pkt.neurons.sites import decoder_layers
from pkt.neurons.stats import ActivationStats
from tests.conftest import CONF
from tests.test_dpn import LOOSE, QUESTIONS, _ctx

pytestmark = pytest.mark.usefixtures("one_thread")

# NPTI's persona answers in the model's own precision, one process (exact comparisons)
SEARCH = {"max_new_tokens": 6, "batch_size": 3, "dtype": "model", "workers": 1}


@pytest.fixture(scope="module")
def lm():
    return TinyRandomModel(init_seed=3).load()


def _by_hand(model, site: str, seqs: list[tuple[list[int], list[int]]]) -> torch.Tensor:
    """``site``'s activations ([rows, layers, width]) at the positions that produce each
    answer token, one unpadded sequence at a time."""
    n = len(decoder_layers(model))
    rows = []
    for prompt, answer in seqs:
        if not answer:
            continue
        got = {}
        pre = site == "mlp.down_in"

        def make(i, got=got, pre=pre):
            if pre:
                return lambda mod, a: got.__setitem__(i, a[0][0].clone())
            return lambda mod, a, out: got.__setitem__(i, out[0].clone())

        ids = torch.tensor([prompt + answer[:-1]])
        with hooked(model, {(site, i): make(i) for i in range(n)}), torch.no_grad():
            model(ids)
        start = len(prompt) - 1
        rows.append(torch.stack([got[i][start:] for i in range(n)], 1))
    return torch.cat(rows).double()


def _seqs(lm, ctx, st: dict, aspect: str) -> list[tuple[list[int], list[int]]]:
    texts = identify.roleplay_prompts(lm, ctx.bench, aspect, ctx.seed)
    ids = lm.tokenizer(texts, add_special_tokens=False)["input_ids"]
    answers = [r for r in st["responses"] if r["aspect"] == aspect]
    return [(list(p), r["response_ids"]) for p, r in zip(ids, answers)]


# ------------------------------------------------------------------ NPTI's answers keep their ids


def test_npti_answers_keep_their_ids_and_those_are_the_recorded_positions(lm, tmp_path):
    ctx = _ctx(lm, tmp_path)
    store = ArtifactStore(tmp_path / "artifacts")
    st, path, hit = identify.load_or_compute(store, lm, ctx.bench, 0, GenConfig.search(lm, SEARCH),
                                             progress=False)
    assert not hit
    for aspect in ("high", "low"):
        rows = [r for r in identify.read_responses(path) if r["aspect"] == aspect]
        assert [len(r["response_ids"]) for r in rows] == [r["n_tokens"] for r in rows]
        assert all(lm.tokenizer.decode(r["response_ids"], skip_special_tokens=True).strip()
                   == r["response"] for r in rows)
        # teacher-forced at those positions, mlp.act gives what was recorded while generating
        acts = _by_hand(lm.model, "mlp.act", _seqs(lm, ctx, st, aspect))
        assert acts.shape[0] == st[f"{aspect}.tokens"]
        assert torch.allclose(acts.mean(0), st[f"{aspect}.mean"].double(), atol=1e-5)
        assert torch.allclose((acts > 0).double().mean(0), st[f"{aspect}.prob"].double(),
                              atol=1e-6)


# ------------------------------------------------------------------ DPN-LE over the answers


def test_answer_moments_are_the_hand_moments_in_any_batch(lm, tmp_path):
    ctx = _ctx(lm, tmp_path)
    store = ArtifactStore(tmp_path / "artifacts")
    st, _, _ = identify.load_or_compute(store, lm, ctx.bench, 0, GenConfig.search(lm, SEARCH),
                                        progress=False)
    seqs = _seqs(lm, ctx, st, "high") + [(lm.tokenizer("Hi", add_special_tokens=False)
                                          ["input_ids"], [])]  # no answer: skipped
    want = _by_hand(lm.model, "mlp.down_in", seqs)
    for bs in (1, 2, 8):
        mom = answer_moments(lm.model, seqs, lm.tokenizer.pad_token_id, bs, progress=False)
        assert mom.n == want.shape[0] == st["high.tokens"]
        assert torch.allclose(mom.mean, want.mean(0), atol=1e-5)
        assert torch.allclose(mom.m2, ((want - want.mean(0)) ** 2).sum(0), atol=1e-4, rtol=1e-5)


def test_dpn_from_answers_selects_from_the_answer_statistics(lm, tmp_path):
    ctx = _ctx(lm, tmp_path)
    m = DpnMethod(ctx, strength=1.5, source="answers", search_gen=SEARCH, **LOOSE)
    m.prepare()
    npti_name = m.prepared.artifacts["statistics"]  # NPTI's identification, made on the way
    st = identify.read_statistics(tmp_path / "cache" / "artifacts" / "statistics" / npti_name)
    want = answer_statistics(lm, ctx.bench, 0, st["responses"], batch_size=3, progress=False)
    for a in ("high", "low"):
        assert int(want[f"{a}.n"]) == st[f"{a}.tokens"] == m.prepared.metrics[f"search_tokens_{a}"]
    delta, d = effect_sizes(want)
    assert torch.allclose(m.delta, delta, atol=1e-6) and torch.allclose(m.d, d, atol=1e-4)
    high, low = select(m.delta, m.d, m.layers, m.quantile, m.d_threshold)
    assert torch.equal(m.high, high) and torch.equal(m.low, low)
    assert m.prepared.metrics["neurons_edited"] >= 1 and m.params["source"] == "answers"
    # the key names the source and the answers; the prompts' statistics are another artifact
    name = m.prepared.artifacts["dpn_statistics"]
    key = read_meta(tmp_path / "cache" / "artifacts" / "dpn_statistics" / name,
                    "dpn_statistics")["key"]
    assert key["source"] == "answers" and key["position"] == "answers"
    assert key["answers"] == npti_name == key_hash(
        identify.stats_key(lm, ctx.bench, 0, GenConfig.search(lm, SEARCH)))
    p = DpnMethod(_ctx(lm, tmp_path), strength=1.5, **LOOSE)
    p.prepare()
    assert "source" not in p.stats_key()  # the published default's key is unchanged
    assert p.prepared.artifacts["dpn_statistics"] != name
    assert not torch.equal(p.delta, m.delta)
    # cached: the other aspect reuses both artifacts
    again = DpnMethod(_ctx(lm, tmp_path, aspect="low"), strength=1.5, source="answers",
                      search_gen=SEARCH, **LOOSE)
    assert again.prepare().metrics["dpn_stats_cached"] is True
    assert torch.equal(again.delta, m.delta)
    # answers of other search settings: other statistics
    other = DpnMethod(_ctx(lm, tmp_path), strength=1.5, source="answers",
                      search_gen={**SEARCH, "max_new_tokens": 4}, **LOOSE)
    assert other.stats_key()["answers"] != key["answers"]


def test_answers_need_their_ids_and_the_cache_only_mode_names_the_trait(lm, tmp_path):
    ctx = _ctx(lm, tmp_path)
    rows = [{"aspect": a, "response": "x"} for a in ("high", "low") for _ in QUESTIONS]
    with pytest.raises(PktError, match="needs NPTI's persona answers with their token ids"):
        answer_statistics(lm, ctx.bench, 0, rows, progress=False)
    ctx.compute = False
    with pytest.raises(identify.NotIdentified, match="no DPN statistics of Openness"):
        DpnMethod(ctx, strength=1.0, source="answers", search_gen=SEARCH, **LOOSE).prepare()


# ------------------------------------------------------------------ NPTI over the prompts


def test_npti_prompt_statistics_are_the_last_prompt_token_by_hand(lm, tmp_path):
    ctx = _ctx(lm, tmp_path)
    for bs in (1, 4):
        st = identify.prompt_statistics(lm, ctx.bench, 0, batch_size=bs, progress=False)
        assert st["responses"] == []
        for aspect in ("high", "low"):
            texts = identify.roleplay_prompts(lm, ctx.bench, aspect, 0)
            ids = lm.tokenizer(texts, add_special_tokens=False)["input_ids"]
            # the last prompt token = the position that produces the first answer token
            acts = _by_hand(lm.model, "mlp.act", [(list(p), [0]) for p in ids])
            assert acts.shape[0] == st[f"{aspect}.tokens"] == len(QUESTIONS)
            assert torch.allclose((acts > 0).double().mean(0), st[f"{aspect}.prob"].double())
            assert torch.allclose(acts.mean(0), st[f"{aspect}.mean"].double(), atol=1e-5)
            hist = ActivationStats(*acts.shape[1:])
            for layer in range(acts.shape[1]):
                hist.update(layer, acts[:, layer].float())
            assert torch.equal(st[f"{aspect}.counts"], hist.counts)
            assert torch.allclose(st[f"{aspect}.p95"], hist.percentile(0.95))


def test_npti_from_prompts_selects_from_the_prompt_statistics(lm, tmp_path):
    ctx = _ctx(lm, tmp_path)
    m = NeuronMethod(ctx, strength=1.0, k_min=10, source="prompts", search_gen=SEARCH)
    m.prepare()
    st = identify.prompt_statistics(lm, ctx.bench, 0, batch_size=SEARCH["batch_size"],
                                    progress=False)
    want = select_sets(st, "npti", 10, 0.1)
    for a in ("high", "low"):
        assert torch.equal(m.sets[a].layer, want[a].layer)
        assert torch.equal(m.sets[a].index, want[a].index)
        assert torch.allclose(m.sets[a].p95, want[a].p95)
        assert m.prepared.metrics[f"search_tokens_{a}"] == len(QUESTIONS)
    assert m.params["source"] == "prompts"
    key = read_meta(m.stats_dir, "statistics")["key"]
    assert key == identify.prompt_stats_key(lm, ctx.bench, 0)
    assert key["source"] == "prompts" and key["position"] == "last"
    # the paper's statistics: the key without a source, as before the option
    gen = GenConfig.search(lm, SEARCH)
    assert "source" not in identify.stats_key(lm, ctx.bench, 0, gen)
    a = NeuronMethod(_ctx(lm, tmp_path), strength=1.0, k_min=10, search_gen=SEARCH)
    a.prepare()
    assert a.stats_dir.name == key_hash(identify.stats_key(lm, ctx.bench, 0, gen))
    assert a.stats_dir != m.stats_dir
    assert a.prepared.artifacts["neuron_sets"] != m.prepared.artifacts["neuron_sets"]
    # cached
    b = NeuronMethod(_ctx(lm, tmp_path, aspect="low"), strength=1.0, k_min=10,
                     source="prompts", search_gen=SEARCH)
    assert b.prepare().metrics["neuron_stats_cached"] is True
    ctx2 = _ctx(lm, tmp_path / "empty")
    ctx2.compute = False
    with pytest.raises(identify.NotIdentified, match="statistics from the prompts"):
        NeuronMethod(ctx2, strength=1.0, source="prompts").prepare()


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize("cls,msg", [
    (DpnMethod, r"unknown method.source 'both' \(choose from: prompts, answers\)"),
    (NeuronMethod, r"unknown method.source 'both' \(choose from: answers, prompts\)"),
])
def test_a_bad_source_is_one_clear_error(lm, tmp_path, cls, msg):
    with pytest.raises(PktError, match=msg):
        cls(_ctx(lm, tmp_path), source="both")


def test_the_configs_state_the_sources():
    for name, cls, default in (("dpn", DpnMethod, "prompts"), ("neuron", NeuronMethod, "answers")):
        node = OmegaConf.load(CONF / "method" / f"{name}.yaml")
        assert node.source == default == inspect.signature(cls).parameters["source"].default
