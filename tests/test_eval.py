import contextlib
import json

import pytest
import torch

from pkt.artifacts import ArtifactStore
from pkt.dataset import TRAITS
from pkt.errors import PktError
from pkt.eval import Evaluation, capability, fluency, summary
from pkt.eval import scorer as scorer_module
from pkt.eval.likelihood import choice_logprobs, continuation_logprobs
from pkt.eval.scorer import TraitScorer, split_accuracy
from pkt.hooks import Scope, hooked
from pkt.methods import Method


def test_distinct_and_repetition():
    assert fluency.distinct_n("a b a b", 2) == 2 / 3
    assert fluency.distinct_n("one", 2) is None
    assert fluency.repetition("x y z x y z", 3) == 1 / 4
    assert fluency.repetition("the cat sat on the mat", 3) == 0.0


def test_continuation_logprobs_match_hand_computation(tiny):
    seqs = [([1, 40, 41], [50, 51, 2]), ([1, 60, 61, 62, 63, 64], [70])]
    got = continuation_logprobs(tiny.model, seqs, 0, batch_size=2)
    for (p, r), (s, n) in zip(seqs, got):
        ids = torch.tensor([p + r])
        with torch.no_grad():
            lp = torch.log_softmax(tiny.model(ids).logits[0].float(), -1)
        ref = sum(float(lp[len(p) - 1 + k, t]) for k, t in enumerate(r))
        assert n == len(r) and abs(s - ref) < 1e-4


def test_choice_logprobs_equal_one_pass_per_choice(tiny):
    """The shared-context route gives the per-pair figures, also under an edit that touches
    only the marked (scored) positions; a 1-token context and an empty choice included."""
    items = [([1, 40, 41, 42], [[50, 51, 2], [52], [53, 54]]),
             ([1, 60, 61, 62, 63, 64, 65, 66], [[70], [71, 72, 73, 74]]),
             ([7], [[80, 81], [82]]),
             ([1, 90, 91], [[92, 93], []]),
             ([1, 95, 96, 97, 98], [[99], [100], [101], [102, 103]])]
    pairs = [(c, x) for c, ch in items for x in ch]

    def flat(got):
        return [x for per in got for x in per]

    def sums(lp):
        return [x for x, _n in lp]

    ref = continuation_logprobs(tiny.model, pairs, 0, batch_size=3)
    got = flat(choice_logprobs(tiny.model, items, 0, batch_size=2))
    assert [n for _s, n in got] == [n for _s, n in ref] == [len(x) for _c, x in pairs]
    assert sums(got) == pytest.approx(sums(ref), abs=1e-4)

    def edited(fn):
        scope = Scope.marked()

        def hook(mod, inp, out):
            sel = scope.select(out)
            if sel is None:
                return out
            return out + 3.0 * (sel.unsqueeze(-1).to(out.dtype) if sel is not True else 1.0)

        with hooked(tiny.model, {("mlp.act", 1): hook}):
            return fn(scope)

    ref_e = edited(lambda sc: continuation_logprobs(tiny.model, pairs, 0, 3, sc))
    got_e = flat(edited(lambda sc: choice_logprobs(tiny.model, items, 0, 2, sc)))
    assert sums(got_e) == pytest.approx(sums(ref_e), abs=1e-4)
    assert max(abs(a[0] - b[0]) for a, b in zip(ref_e, ref)) > 0.01  # the edit did something


class _SharpLogits(Method):
    """A real intervention, hooked into the model: logits scaled up while it is active."""

    def __init__(self, lm, factor: float):
        super().__init__(ctx=None, name="sharp")
        self.lm, self.factor = lm, factor

    @contextlib.contextmanager
    def intervention(self, scope=None):
        h = self.lm.model.lm_head.register_forward_hook(lambda m, i, out: out * self.factor)
        try:
            yield
        finally:
            h.remove()


def test_capability_figures_are_sane_and_follow_the_intervention(tiny, tmp_path):
    plain = capability.measure(tiny, n_mc=12)
    vocab = tiny.model.config.vocab_size
    # a random model's perplexity is about its vocabulary size (a per-token mean, not a sum)
    assert vocab / 2 < plain["ppl"] < vocab * 2, plain
    assert plain["n_mc"] == 12 and (plain["mc_accuracy"] * 12).is_integer()
    assert 0.0 <= plain["mc_accuracy"] <= 1.0
    base = Method(ctx=None, name="base")
    r = capability.retention(tiny, base, tmp_path, n_mc=12)
    assert r["ppl_base"] == pytest.approx(plain["ppl"]) and r["ppl"] == pytest.approx(plain["ppl"])
    assert r["mc_accuracy_base"] == plain["mc_accuracy"] and r["n_mc"] == 12
    # the second time the base figures come from the cache: a value planted there shows up
    (cached,) = (tmp_path / "artifacts" / "capability_base").glob("*/value.json")
    key = json.loads((cached.parent / "meta.json").read_text())["key"]
    planted = {**json.loads(cached.read_text()), "ppl": 123.0}
    ArtifactStore(tmp_path / "artifacts").save(
        "capability_base", key, lambda tmp: (tmp / "value.json").write_text(json.dumps(planted)))
    again = capability.retention(tiny, base, tmp_path, n_mc=12)
    assert again["ppl_base"] == 123.0
    # a method that leaves the model alone (the plain model, prompting) is not probed again:
    # its figures are the plain model's (here the planted ones), ratios 1
    assert not base.edits_model and r["measured_by"] == again["measured_by"] == "plain_model"
    assert again["ppl"] == 123.0 and again["ppl_ratio"] == 1.0 and again["mc_ratio"] == 1.0
    # an intervention moves the measured figures (not the base ones), and the ratio with them
    sharp = capability.retention(tiny, _SharpLogits(tiny, 25.0), tmp_path / "fresh", n_mc=12)
    assert sharp["measured_by"] == "evaluation" and sharp["ppl_base"] == pytest.approx(plain["ppl"])
    assert sharp["ppl"] > 10 * plain["ppl"]
    assert sharp["ppl_ratio"] == pytest.approx(sharp["ppl"] / sharp["ppl_base"])
    assert capability.measure(tiny, n_mc=12)["ppl"] == pytest.approx(plain["ppl"])  # unhooked


def test_summary_counts_missing():
    s = summary([1.0, None, 3.0])
    assert s["mean"] == 2.0 and s["n"] == 2 and s["missing"] == 1
    assert summary([None]) is None


def test_evaluation_config_errors():
    with pytest.raises(PktError, match="needs a judge"):
        Evaluation(trait_scorer="judge")
    with pytest.raises(PktError, match="unknown eval.trait_scorer"):
        Evaluation(trait_scorer="vibes")


# Held-out accuracy threshold: the 5-fold CV accuracies measured on the shipped corpus are
# 0.60-0.78 per trait (README). On a fixed 20% held-out split (67 texts), chance is 0.5 with
# a binomial sd of 0.06; we require every trait above chance and the mean over traits >= 0.62,
# two sd above chance and below every measured mean.
def test_offline_scorer_separates_held_out_items(corpus_embeddings):
    accs = []
    for t in TRAITS:
        texts, y, emb = corpus_embeddings(t)  # embed(load_corpus(t)), once per session
        idx = list(range(len(texts)))
        test = idx[::5]
        train = [i for i in idx if i % 5]
        accs.append(split_accuracy(texts, y, emb, train, test))
    assert min(accs) > 0.5, accs
    assert sum(accs) / len(accs) >= 0.62, accs


def test_scorer_direction_and_cache(tmp_path, monkeypatch):
    s = TraitScorer("extraversion", tmp_path)
    hi = "I love meeting new people and I was the first on the dance floor, chatting with everyone all night."
    lo = "I prefer a quiet evening at home alone with a book; big crowds drain me and I avoid parties."
    a, b = s.score([hi, lo])
    assert 1 <= b < a <= 5
    assert len(list((tmp_path / "artifacts" / "scorer").iterdir())) == 1
    # the second scorer is read from the cache: it must not fit again on the corpus
    monkeypatch.setattr(scorer_module, "load_corpus", lambda *a: pytest.fail("refitted"))
    s2 = TraitScorer("extraversion", tmp_path)
    assert s2.score([hi, lo]) == pytest.approx([a, b], abs=1e-6)


def test_rescore_updates_offline_scores(tmp_path, seed_scorers):
    from pkt.eval.rescore import main as rescore

    seed_scorers(tmp_path / "c", "extraversion")  # the fit is test_scorer_direction_and_cache's

    run = tmp_path / "sweep" / "0_base_extraversion_high"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"trait": "extraversion", "trait_scorer": "offline-minilm",
                                                  "trait_score": {"mean": 9.0}}))
    texts = ["I adore parties and meeting strangers.", "I stay home alone; crowds tire me."]
    (run / "generations.jsonl").write_text("".join(json.dumps({"response": t}) + "\n" for t in texts))
    assert rescore([str(tmp_path / "sweep"), "--cache-dir", str(tmp_path / "c")]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert 1 <= m["trait_score"]["mean"] <= 5 and m["trait_score"]["n"] == 2
    g = [json.loads(x) for x in (run / "generations.jsonl").read_text().splitlines()]
    assert g[0]["trait_score"] > g[1]["trait_score"]
    assert rescore([str(tmp_path / "nope")]) == 2
