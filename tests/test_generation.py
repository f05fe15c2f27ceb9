from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pkt import prompts
from pkt.dataset import Bench
from pkt.errors import PktError
from pkt.generation import GenConfig, chat_prompt, generate, strip_response
from pkt.methods import Setting
from pkt.methods.prompt import PromptMethod

QS = ["Hi there, how are you today?", "A much longer question about a neighbour who plays loud music "
      "at night and what you would do about it?", "Short?", "Tell me about your weekend plans."]


def test_batched_greedy_equals_unbatched(tiny):
    texts = [chat_prompt(tiny.tokenizer, prompts.neutral(q)) for q in QS]
    one = generate(tiny.model, tiny.tokenizer, texts, GenConfig(12, 1, 1.15), progress=False)
    many = generate(tiny.model, tiny.tokenizer, texts, GenConfig(12, 4, 1.15), progress=False)
    assert [g.response_ids for g in one] == [g.response_ids for g in many]
    assert all(len(g.response_ids) == 12 for g in one)
    assert [g.prompt_ids for g in one] == [g.prompt_ids for g in many]


def test_strip_response_stops_at_eos():
    assert strip_response([5, 6, 2, 0, 0], {2}, 0) == [5, 6, 2]
    assert strip_response([5, 6, 0, 0], {2}, 0) == [5, 6]
    assert strip_response([5, 6, 7], {2}, 0) == [5, 6, 7]


def _ctx(tiny, aspect):
    bench = Bench(trait="Extraversion", search=[], test=[],
                  personas={"high": ["You are lively A.", "You are lively B."],
                            "low": ["You are quiet A.", "You are quiet B."]}, data_hash="x")
    trait = OmegaConf.create({"name": "extraversion", "adjectives": {"high": "extraverted", "low": "introverted"}})
    return Setting(lm=tiny, bench=bench, trait=trait, aspect=aspect, seed=0, gen=GenConfig(),
                   cache_dir=Path("."))


@pytest.mark.parametrize("aspect,adj,article", [("high", "extraverted", "an"), ("low", "introverted", "an")])
def test_simple_prompt(tiny, aspect, adj, article):
    m = PromptMethod(_ctx(tiny, aspect), variant="simple")
    p = m.rewrite("What now?", 0)
    assert p.startswith(f"Imagine you are {article} {adj} person rather than a language model.")
    assert p.endswith("Question: What now?") and m.label == "prompt_simple"


def test_article_choice():
    assert prompts.simple("calm", "Q?").startswith("Imagine you are a calm person")
    assert prompts.simple("open", "Q?").startswith("Imagine you are an open person")


@pytest.mark.parametrize("aspect,word", [("high", "lively"), ("low", "quiet")])
def test_p2_prompt_uses_persona_of_aspect(tiny, aspect, word):
    m = PromptMethod(_ctx(tiny, aspect), variant="p2")
    ps = [m.rewrite("What now?", i) for i in range(6)]
    assert all(p.startswith(f"You are {word}") for p in ps)
    assert ps == [m.rewrite("What now?", i) for i in range(6)]  # seeded
    assert "Question: What now?" in ps[0]


def test_unknown_variant(tiny):
    with pytest.raises(PktError, match="unknown prompt variant 'fancy'"):
        PromptMethod(_ctx(tiny, "high"), variant="fancy")


def test_neutral_prompt_wording():
    p = prompts.neutral("Q?")
    assert "real person rather than a language model" in p and "300 words" in p
