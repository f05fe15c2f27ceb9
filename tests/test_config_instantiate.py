"""Every shipped method and evaluator config, composed with Hydra on model=tiny_random and
instantiated the way the runner does it (no preparation, no generation, no request): the
configured class comes out, and the configured values reach it."""

from __future__ import annotations

import pytest
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from pkt.cli import config_groups
from pkt.eval.judge import LocalJudge, OpenAIJudge
from pkt.generation import GenConfig
from pkt.methods import registry
from tests.conftest import CONF, compose_cfg, openness_context

METHODS = config_groups()["method"]
# what makes a shipped config usable on tiny_random (2 layers) without a network or a model
NEEDS = {"actadd": ["method.layers=[1]"]}


def test_the_method_group_is_every_file():
    assert sorted(METHODS) == sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_config_instantiates_with_its_values(method, tiny, tmp_path):
    cfg = compose_cfg(["model=tiny_random", "trait=openness", f"method={method}",
                       *NEEDS.get(method, [])])
    node = OmegaConf.to_container(cfg.method, resolve=True)
    ctx = openness_context(tiny, ["Q?"], {"high": ["h"], "low": ["l"]}, tmp_path / "run",
                           GenConfig.from_cfg(cfg.gen))
    cls = registry.method_class(node["name"])
    m = cls(ctx, **{k: v for k, v in node.items() if k != "name"})
    assert m.name == node["name"] and m.ctx is ctx
    d = m.describe()
    assert d["method"] == node["name"]
    # what the run writes beside every generation is what the config said
    reported = {k: v for k, v in d.items() if k in node and node[k] is not None}
    assert reported == {k: node[k] for k in reported}
    if method != "base":  # every other method has parameters, and reports them
        assert reported, d
    prompt = m.rewrite("What do you do on a rainy Sunday?", 0)
    assert isinstance(prompt, str) and "rainy Sunday" in prompt


def test_the_p2_config_is_the_p2_prompt():
    cfg = compose_cfg(["model=tiny_random", "method=prompt_p2"])
    assert cfg.method.variant == "p2" and cfg.method.name == "prompt"


EVALS = {
    "default": [],
    "none": [],
    "default+openai": ["eval/judge=openai", "eval.judge.preflight=false"],
    "default+local": ["eval/judge=local", "eval.judge.path=/some/judge"],
}


@pytest.mark.parametrize("name", sorted(EVALS))
def test_every_evaluator_config_instantiates_with_its_values(name):
    ev_choice = name.split("+")[0]
    cfg = compose_cfg(["model=tiny_random", "paths.cache_dir=some/cache/dir",
                       f"eval={ev_choice}", *EVALS[name]])
    node = OmegaConf.to_container(cfg.eval, resolve=True)
    ev = instantiate(cfg.eval, _convert_="all")
    assert type(ev) is get_object(node["_target_"])
    if ev_choice == "none":
        return
    assert ev.fluency is node["fluency"] and ev.capability is node["capability"]
    assert ev.n_mc == node["capability_n_mc"] and ev.batch_size == cfg.gen.batch_size
    assert ev.cache_dir == "some/cache/dir"
    j = node.get("judge")
    if j is None:
        assert ev.judge is None and ev.trait_scorer == "offline"
        return
    assert ev.trait_scorer == "judge" and type(ev.judge) is get_object(j["_target_"])
    if isinstance(ev.judge, OpenAIJudge):
        assert ev.judge.describe() == {"backend": "openai", "model": j["model"],
                                       "base_url": j["base_url"]}
        assert (ev.judge.timeout, ev.judge.max_retries, ev.judge.concurrency) == (
            j["timeout"], j["max_retries"], j["concurrency"])
        assert ev.judge.preflight is False and ev.judge.api_key_env == j["api_key_env"]
        assert ev.judge.cache.root is not None and str(ev.judge.cache.root) == "some/cache/dir"
    else:
        assert isinstance(ev.judge, LocalJudge)
        assert ev.judge.describe() == {"backend": "local", "model": j["name"],
                                       "path": "/some/judge"}  # nothing loaded yet
        assert ev.judge.batch_size == j["batch_size"] and ev.judge._lm is None
