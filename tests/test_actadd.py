"""method=actadd: the steering vector against a hand computation, where the hook acts, cleanup."""

import json
from pathlib import Path

import pytest
import torch

from pkt.errors import PktError
from pkt.generation import GenConfig
from pkt.hooks import Scope
from pkt.methods import Setting
from pkt.methods.actadd import ActAddMethod
from pkt.models import TinyRandomModel
from pkt.neurons import identify
from pkt.neurons.sites import decoder_layers
from tests.conftest import openness_context, read_jsonl, run_dirs, run_pkt

QUESTIONS = ["Art?", "How do you spend a long, free afternoon when nobody needs you?",
             "Would you try a food you have never heard of?", "Poetry: yes or no?",
             "How do you feel about travelling alone to a country whose language you do not speak?"]


pytestmark = pytest.mark.usefixtures("one_thread")


PERSONAS = {"high": ["You are curious and imaginative.",
                     "You love art, travel and new ideas of every kind."],
            "low": ["You like routine.", "You avoid anything unfamiliar or abstract."]}


def _ctx(lm, root: Path, aspect: str = "high") -> Setting:
    return openness_context(lm, QUESTIONS, PERSONAS, root, GenConfig(max_new_tokens=6, batch_size=3),
                            aspect=aspect)


def _by_hand(lm, ctx, layer: int, position: str) -> torch.Tensor:
    """Hook-free: one unpadded forward per prompt, hidden_states[layer + 1] = block output."""
    means = {}
    for aspect in ("high", "low"):
        acc = []
        for text in identify.roleplay_prompts(lm, ctx.bench, aspect, ctx.seed):
            ids = lm.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                h = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0]
            acc.append(h.mean(0) if position == "mean" else h[-1])
        means[aspect] = torch.stack(acc).mean(0)
    return means["high"] - means["low"]


@pytest.mark.parametrize("position", ["mean", "last"])
def test_vector_is_the_mean_difference(tmp_path, position):
    # 3 layers: the last entry of hidden_states is after the final norm, so test blocks 0 and 1
    lm = TinyRandomModel(num_layers=3).load()
    ctx = _ctx(lm, tmp_path)
    m = ActAddMethod(ctx, layers=[1, 0], position=position, batch_size=3)  # 5 prompts: 2 batches
    prep = m.prepare()
    for layer in (0, 1):
        want = _by_hand(lm, ctx, layer, position)
        assert want.norm() > 1e-3
        assert torch.allclose(m.vectors[layer], want, atol=1e-5, rtol=0), \
            (m.vectors[layer] - want).abs().max()
    assert prep.metrics["actadd_cached"] is False
    assert prep.artifacts["actadd_vector"]
    assert prep.metrics["actadd_vector_norm"] == pytest.approx(
        [float(m.vectors[1].norm()), float(m.vectors[0].norm())])
    # cached: a second method reuses the artifact; low is the negated direction
    ctx2 = _ctx(lm, tmp_path, aspect="low")
    m2 = ActAddMethod(ctx2, layers=[1, 0], position=position, batch_size=3, coefficient=2.0)
    assert m2.prepare().metrics["actadd_cached"] is True
    assert torch.equal(m2.vectors[0], m.vectors[0])
    assert torch.equal(m2.additions()[1], -2.0 * m.vectors[1])
    assert m2.describe()["coefficient"] == 2.0 and m2.describe()["layers"] == [1, 0]


def _forward(lm, ids):
    with torch.no_grad():
        return lm.model(input_ids=ids, output_hidden_states=True)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    lm = TinyRandomModel().load()  # 2 layers
    root = tmp_path_factory.mktemp("actadd")
    ids = lm.tokenizer("Tell me about your weekend plans.", return_tensors="pt",
                       add_special_tokens=False)["input_ids"]
    return lm, root, ids


def test_hook_acts_only_downstream_of_its_layer(prepared):
    lm, root, ids = prepared
    m = ActAddMethod(_ctx(lm, root), layers=[1], include_prompt=True)
    m.prepare()
    base = _forward(lm, ids)
    with m.intervention():
        steered = _forward(lm, ids)
    assert torch.equal(steered.hidden_states[1], base.hidden_states[1])  # output of block 0
    assert not torch.allclose(steered.logits, base.logits, atol=1e-4)
    assert torch.equal(_forward(lm, ids).logits, base.logits)


def test_decode_only_leaves_the_prefill_alone(prepared):
    lm, root, ids = prepared
    m = ActAddMethod(_ctx(lm, root), layers=[1], include_prompt=False)
    m.prepare()
    base_prefill, base_step = _forward(lm, ids), _forward(lm, ids[:, -1:])
    with m.intervention():
        prefill, step = _forward(lm, ids), _forward(lm, ids[:, -1:])
    assert ids.shape[1] > 1
    assert torch.equal(prefill.logits, base_prefill.logits)
    assert not torch.allclose(step.logits, base_step.logits, atol=1e-4)
    # teacher-forced scoring: only the positions marked as generated are steered
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    mask[:, -3:] = True
    scope = Scope.marked()
    scope.mark(mask)
    with m.intervention(scope=scope):
        scored = _forward(lm, ids)
    assert torch.equal(scored.logits[:, :-3], base_prefill.logits[:, :-3])
    assert not torch.allclose(scored.logits[:, -3:], base_prefill.logits[:, -3:], atol=1e-4)


def test_hooks_removed_after_the_block_and_after_an_error(prepared):
    lm, root, ids = prepared
    m = ActAddMethod(_ctx(lm, root), layers=[0, 1], include_prompt=True)
    m.prepare()
    blocks = decoder_layers(lm.model)
    base = _forward(lm, ids).logits
    before = [len(b._forward_hooks) for b in blocks]
    with m.intervention():
        assert [len(b._forward_hooks) for b in blocks] == [n + 1 for n in before]
    assert [len(b._forward_hooks) for b in blocks] == before
    with pytest.raises(RuntimeError, match="boom"):
        with m.intervention():
            raise RuntimeError("boom")
    assert [len(b._forward_hooks) for b in blocks] == before
    assert torch.equal(_forward(lm, ids).logits, base)


def test_bad_settings_are_clear_errors(prepared):
    lm, root, _ = prepared
    with pytest.raises(PktError, match="method.layers: 15 is out of range for a model with 2"):
        ActAddMethod(_ctx(lm, root), layers=[15])
    assert ActAddMethod(_ctx(lm, root)).layers == [1]  # the default: the middle block
    with pytest.raises(PktError, match="unknown method.position 'middle'"):
        ActAddMethod(_ctx(lm, root), layers=[1], position="middle")
    with pytest.raises(PktError, match="call prepare"):
        ActAddMethod(_ctx(lm, root), layers=[1]).intervention()
    assert ActAddMethod(_ctx(lm, root), layers=-1).layers == [1]


@pytest.mark.embedded
def test_actadd_run_on_embedded_model(tmp_path):
    r = run_pkt(["method=actadd", "trait=openness", "data.n_test=2", "data.n_search=8",
                 "gen.max_new_tokens=24", "logger=none", "eval=none"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (d,) = run_dirs(tmp_path)
    gens = read_jsonl(d / "generations.jsonl")
    assert len(gens) == 2 and all(g["method"] == "actadd" and g["response"].strip() for g in gens)
    m = json.loads((d / "metrics.json").read_text())
    assert m["actadd_cached"] is False and len(m["actadd_vector_norm"]) == 1
    assert m["actadd_vector_norm"][0] > 0 and m["params"]["layers"] == [15]
