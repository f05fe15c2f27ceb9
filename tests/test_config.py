import itertools

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pkt.cli import config_groups
from pkt.errors import PktError
from pkt.methods import registry
from pkt.run import preflight
from tests.conftest import compose_cfg

GROUPS = config_groups()
TRAITS = GROUPS["trait"]
METHODS = GROUPS["method"]
MODELS = GROUPS["model"]


def test_groups_present():
    assert set(TRAITS) == {"openness", "conscientiousness", "extraversion", "agreeableness",
                           "neuroticism"}
    assert {"base", "prompt", "neuron"} <= set(METHODS)
    assert {"smollm2_135m", "tiny_random", "llama3_8b_instruct", "qwen2_5_7b_instruct",
            "mistral_7b_instruct"} <= set(MODELS)


@pytest.mark.parametrize("method,trait,aspect", list(itertools.product(METHODS, TRAITS, ["high", "low"])))
def test_compose_every_combination(method, trait, aspect):
    cfg = compose_cfg(["model=tiny_random", f"method={method}", f"trait={trait}", f"aspect={aspect}"])
    c = OmegaConf.to_container(cfg, resolve=False)
    assert cfg.method.name == method.split("_")[0]
    assert cfg.trait.name == trait and cfg.aspect == aspect
    assert len(cfg.trait.facets) == 6 and set(cfg.trait.adjectives) == {"high", "low"}
    resolved = OmegaConf.to_container(cfg.method, resolve=True)
    assert "_target_" not in resolved  # methods are found by name, in the registry
    assert registry.method_class(resolved["name"]).__module__.startswith("pkt.methods.")
    assert c["model"]["name"] == "tiny_random"


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_instantiates(model):
    cfg = compose_cfg([f"model={model}"])
    loader = instantiate(cfg.model)
    assert hasattr(loader, "load") and loader.name == model
    assert getattr(loader, "device_map", None) is None  # one device unless asked otherwise


def test_default_is_the_design_card_command():
    cfg = compose_cfg([])
    assert cfg.method.name == "neuron" and cfg.trait.name == "agreeableness"
    assert cfg.model.name == "smollm2_135m" and cfg.logger.mode == "offline"


@pytest.mark.parametrize("args,msg", [
    (["trait=nonsense"], "unknown trait 'nonsense'"),
    (["model=gpt9"], "unknown model 'gpt9'"),
    (["method=magic"], "unknown method 'magic'"),
    (["aspect=medium"], "unknown aspect 'medium'"),
    (["-m", "trait=openness,nonsense"], "unknown trait 'nonsense'"),
])
def test_preflight_rejects_unknown_choices(args, msg):
    with pytest.raises(PktError, match=msg):
        preflight(args)


def test_preflight_accepts_valid():
    preflight(["-m", "method=base,prompt", "trait=openness", "aspect=high,low", "gen.batch_size=4"])


@pytest.mark.parametrize("args,msg", [
    (["--trait", "openness"], "unknown option '--trait': python -m pkt.run takes Hydra "
                              "overrides written key=value, e.g. trait=openness"),
    (["--trait=openness"], "unknown option '--trait'"),
    (["trait", "openness"], "'trait' is not an override: write key=value, e.g. trait=openness"),
    (["-m", "trait=openness", "neuron"], "'neuron' is not an override"),
    (["--cfg", "job", "extra"], "'extra' is not an override"),
])
def test_preflight_rejects_words_that_are_not_overrides(args, msg):
    with pytest.raises(PktError, match=msg):
        preflight(args)


@pytest.mark.parametrize("args", [
    ["--cfg", "job", "trait=openness"], ["--info"], ["--info", "config"], ["-m", "~logger"],
    ["--config-name=config", "-m", "method=base"], ["--help"], ["--multirun", "seed=1,2"],
])
def test_preflight_lets_hydra_flags_through(args):
    preflight(args)
