"""Half precision on CPU: the tiny Llama in bfloat16 and float16 through identification,
induction and capability scoring, against the same model in float32.

Statistics accumulate in float32 (histogram bins computed from upcast activations, integer
counts, float64 sums) and NPTI's edits are applied in the model's own dtype. The half
models agree with float32 within these tolerances, measured on this tiny model (2 layers,
256 neurons) over the same 128 teacher-forced answer tokens (8 extraversion search
questions x 16 tokens; measured value in brackets, bfloat16 / float16):

- P(activation > 0) per neuron, max abs difference: 0.04 / 0.02 (0.016 / 0.008, i.e. 2 / 1
  of 128 tokens change sign);
- 95th percentile per neuron, max abs difference: 0.02 / 0.02, two bins (0.009 / 0.002);
- mean activation per neuron, max abs difference: 2e-3 / 5e-4 (4e-4 / 8.5e-5);
- NPTI selection from the half statistics: no kept neuron's float32 diff more than twice
  the P tolerance below the float32 k-th diff (0.008 / 0 below);
- NPTI's edit (after - before) at the edited positions, max abs difference: 5e-3 / 1e-3
  (1.4e-3 / 1.5e-4; the edits reach 0.23); the edited activations: 5e-3 / 1e-3
  (1.9e-3 / 2.8e-4); the other positions: untouched, exactly;
- perplexity, plain and induced, relative difference: 1e-3 / 1e-4 (9.3e-5 / 1.1e-5);
- MC option scores (mean token log-prob), plain and induced, max abs difference: 5e-3 /
  1e-3 (1.6e-3 / 1.6e-4); MC accuracy over 16 items: one item (one near tie flips in
  bfloat16, none in float16).

The other architectures of the site table, measured the same way, stay within these bounds
except P(a > 0) (Gemma 2: 0.063 in bfloat16; OLMo 2: 0.094 / 0.039; their activations
cluster nearer 0), Gemma 2's edited activations in bfloat16 (5.3e-3) and OLMo 2's
perplexity in bfloat16 (4.1e-4); this file tests the project's tiny Llama.
"""

from __future__ import annotations

import pytest
import torch

import pkt
from pkt.dataset import load_bench
from pkt.eval.capability import MC_PROMPT, load_mc, measure
from pkt.eval.likelihood import choice_logprobs
from pkt.generation import GenConfig, generate
from pkt.hooks import Scope, hooked
from pkt.models import tiny_model
from pkt.neurons import identify
from pkt.neurons.induce import Induction
from pkt.neurons.select import select
from pkt.neurons.sites import shape
from pkt.neurons.stats import N_BINS, ActivationStats, collect_stats
from pkt.resources import DATA_DIR

HALF = ["bfloat16", "float16"]
TOL = {  # see the module docstring
    "bfloat16": dict(prob=0.04, p95=0.02, mean=2e-3, delta=5e-3, after=5e-3, ppl=1e-3, mc=5e-3),
    "float16": dict(prob=0.02, p95=0.02, mean=5e-4, delta=1e-3, after=1e-3, ppl=1e-4, mc=1e-3),
}
N_MC = 16
STRENGTH = 4.0


def _mc_scores(lm, scope=None) -> torch.Tensor:
    """Every MC option's mean token log-prob (what capability scoring ranks)."""
    tok = lm.tokenizer
    groups = [(tok(MC_PROMPT.format(question=r["question"]), add_special_tokens=False)["input_ids"],
               [tok(" " + str(c), add_special_tokens=False)["input_ids"] for c in r["choices"]])
              for r in load_mc(N_MC)]
    lp = choice_logprobs(lm.model, groups, tok.pad_token_id, 16, scope)
    return torch.tensor([s / max(n, 1) for scored in lp for s, n in scored])


class Measured:
    """One dtype's figures over the float32 model's answers to the search questions."""

    def __init__(self, dtype: str, seqs: dict, sets: dict | None):
        self.lm = lm = tiny_model("llama", dtype=dtype)
        L, W = shape(lm.model)
        self.stats = {a: collect_stats(lm.model, s, lm.tokenizer.pad_token_id, progress=False,
                                       stats=ActivationStats(L, W, moments=True))
                      for a, s in seqs.items()}
        if sets is None:  # float32: the reference selection
            st = self.stats
            sets = {a: select(st[a].prob(), st[o].prob(), st[a].percentile(), 0.013)
                    for a, o in (("high", "low"), ("low", "high"))}
        self.sets = sets
        # one teacher-forced forward with NPTI on the answer's positions (keep_prob 1: the
        # same edit in every dtype): each layer's activations before and after the edit
        p, r = seqs["high"][0]
        self.ids = torch.tensor([p + r])
        self.mark = torch.zeros_like(self.ids, dtype=torch.bool)
        self.mark[0, len(p) - 1:] = True
        scope = Scope.marked()
        ind = Induction(lm.model, sets["high"], sets["low"], strength=STRENGTH, keep_prob=1.0,
                        scope=scope)
        self.edit_dtype = ind.add.dtype
        rows: dict = {}

        def record(key):
            def make(i):
                def hook(_m, _a, out):
                    rows.setdefault(i, {})[key] = out.detach().clone()
                return hook
            return make

        with hooked(lm.model, {("mlp.act", i): record("before")(i) for i in range(L)}):
            with ind.apply():
                with hooked(lm.model, {("mlp.act", i): record("after")(i) for i in range(L)}):
                    scope.mark(self.mark)
                    with torch.no_grad():
                        lm.model(input_ids=self.ids)
        self.rows = rows
        # capability: plain, and under NPTI (the scored positions stand for generated ones)
        self.base, self.mc = measure(lm, n_mc=N_MC), _mc_scores(lm)
        scope = Scope.marked()
        with Induction(lm.model, sets["high"], sets["low"], strength=STRENGTH,
                       scope=scope).apply():
            self.induced, self.mc_induced = measure(lm, n_mc=N_MC, scope=scope), _mc_scores(lm, scope)


@pytest.fixture(scope="module")
def measured(one_thread) -> dict[str, Measured]:
    ref = tiny_model("llama")
    bench = load_bench(str(DATA_DIR), "extraversion", n_search=8, n_test=None, seed=0)
    seqs = {}
    for a in identify.ASPECTS:
        gens = generate(ref.model, ref.tokenizer, identify.roleplay_prompts(ref, bench, a, 0),
                        GenConfig(16, 8, 1.1), progress=False)
        seqs[a] = [(g.prompt_ids, g.response_ids) for g in gens]
    out = {"float32": Measured("float32", seqs, None)}
    for dt in HALF:
        out[dt] = Measured(dt, seqs, out["float32"].sets)
    return out


def test_bins_are_computed_in_float32_from_half_activations():
    """1.2109375 is a bfloat16 value; 100 x it is 121.09375, which bfloat16 arithmetic
    rounds to 121 (bin 121): binned in float32 it lands in bin 122, (1.21, 1.22]."""
    for dt in (torch.bfloat16, torch.float16):
        st = ActivationStats(1, 2, moments=True)
        a = torch.tensor([[1.2109375, -0.5]], dtype=dt)
        st.update(0, a)
        h = st.histogram()[0]
        assert int(h[0, 122]) == 1 and int(h[0].sum()) == 1 and int(h[1, 0]) == 1
        assert st.sum.dtype == torch.float64 and float(st.sum[0, 0]) == 1.2109375
    assert N_BINS == 301


@pytest.mark.parametrize("dtype", HALF)
def test_identification_on_a_half_model(dtype, one_thread, tmp_path):
    lm = tiny_model("llama", dtype=dtype)
    sets = pkt.identify(lm, "extraversion", n_search=4, max_new_tokens=8, cache=tmp_path,
                        progress=False, workers=1)
    assert len(sets["high"]) > 0 and len(sets["low"]) > 0
    store = pkt.artifacts.ArtifactStore(tmp_path / "artifacts")
    bench = load_bench(str(DATA_DIR), "extraversion", n_search=4, n_test=None, seed=0)
    gen = GenConfig.search(lm, {"max_new_tokens": 8, "workers": 1})
    assert identify.stats_key(lm, bench, 0, gen)["dtype"] == dtype
    st, _path, hit = identify.load_or_compute(store, lm, bench, 0, gen, progress=False)
    assert hit
    for a in identify.ASPECTS:
        assert st[f"{a}.prob"].dtype == st[f"{a}.p95"].dtype == torch.float32
        assert st[f"{a}.mean"].dtype == st[f"{a}.var"].dtype == torch.float32
        assert st[f"{a}.counts"].dtype == torch.int64


@pytest.mark.parametrize("dtype", HALF)
def test_statistics_agree_with_float32(measured, dtype):
    tol, st, ref = TOL[dtype], measured[dtype].stats, measured["float32"].stats
    for a in identify.ASPECTS:
        assert st[a].tokens == ref[a].tokens == 128
        assert float((st[a].prob() - ref[a].prob()).abs().max()) <= tol["prob"]
        assert float((st[a].percentile() - ref[a].percentile()).abs().max()) <= tol["p95"]
        mean, mean32 = st[a].mean_var()[0], ref[a].mean_var()[0]
        assert float((mean - mean32).abs().max()) <= tol["mean"]
    # the half model's NPTI selection is a float32 top-k up to the P tolerance: no neuron
    # it keeps is further below float32's k-th diff than two probability errors
    for a, o in (("high", "low"), ("low", "high")):
        half = select(st[a].prob(), st[o].prob(), st[a].percentile(), 0.013)
        diff32 = (ref[a].prob() - ref[o].prob()).double()
        kth = float(diff32.flatten().sort(descending=True).values[len(measured["float32"].sets[a]) - 1])
        assert float(diff32[half.layer, half.index].min()) >= kth - 2 * tol["prob"]


@pytest.mark.parametrize("dtype", HALF)
def test_induction_edits_in_the_model_dtype_and_agrees(measured, dtype):
    m, ref, tol = measured[dtype], measured["float32"], TOL[dtype]
    want = getattr(torch, dtype)
    assert m.edit_dtype == want
    mark = m.mark[0]
    edited = 0
    for i, row in m.rows.items():
        before, after = row["before"][0], row["after"][0]
        assert after.dtype == want
        assert torch.equal(after[~mark], before[~mark])  # unmarked positions untouched
        delta = after.float() - before.float()
        delta32 = ref.rows[i]["after"][0] - ref.rows[i]["before"][0]
        assert float((delta - delta32)[mark].abs().max()) <= tol["delta"]
        assert float((after.float() - ref.rows[i]["after"][0])[mark].abs().max()) <= tol["after"]
        edited += int((delta32[mark] != 0).sum())
    assert edited > 0 and float(max((ref.rows[i]["after"] - ref.rows[i]["before"]).abs().max()
                                    for i in ref.rows)) > 0.1


@pytest.mark.parametrize("dtype", HALF)
def test_capability_scores_agree(measured, dtype):
    m, ref, tol = measured[dtype], measured["float32"], TOL[dtype]
    for now, now32 in ((m.base, ref.base), (m.induced, ref.induced)):
        assert abs(now["ppl"] / now32["ppl"] - 1) <= tol["ppl"]
        assert abs(now["mc_accuracy"] - now32["mc_accuracy"]) <= 1 / N_MC + 1e-9
    assert float((m.mc - ref.mc).abs().max()) <= tol["mc"]
    assert float((m.mc_induced - ref.mc_induced).abs().max()) <= tol["mc"]
    # the intervention moves the scores more than the precision does (so the agreement
    # above is about something)
    assert float((ref.mc_induced - ref.mc).abs().max()) > 2 * float((m.mc - ref.mc).abs().max())
