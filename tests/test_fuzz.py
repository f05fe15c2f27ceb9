"""Fuzz over the config surface: every numeric, string, bool and list key of every method,
data, eval and judge config and of gen / search_gen, set to a wrong type, a negative
number, NaN, zero, an absurdly large value, an empty or unknown string... Each case must
end either as a valid config (the validator passes AND the target's own constructor takes
it: the method on a tiny run context, the bench loader, the evaluator and judge, GenConfig)
or as one clean ``PktError`` line from the validator - before data or model are loaded.
Any other exception, or a value the validator lets through that the constructor then
refuses (which a real run would only find after loading the model), is a failure.

The cases run in process (composed with Hydra's compose API); a small sample, one per
group, also runs as ``python -m pkt.run`` on tiny_random: rc 0, or exactly one
``pkt: error:`` line.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import subprocess
import sys
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from pkt.cli import config_groups, user_error
from pkt.errors import PktError
from pkt.generation import GenConfig
from pkt.methods import registry
from pkt.models import TinyRandomModel
from pkt.validation import validate
from tests.conftest import CONF, MODEL_CACHE, ROOT, openness_context

BASE = ["model=tiny_random", "logger=none", "trait=openness"]
# per group: the overrides that make the shipped config usable on tiny_random without a
# network or a judge model (the fuzzed key itself is never among them)
NEEDS = {
    "method=actadd": ["method.layers=[1]"],  # [15] is SmolLM2's middle; tiny_random has 2
    "eval/judge=openai": ["eval.judge.preflight=false"],  # no request to api.openai.com
    "eval/judge=local": ["eval.judge.path=/some/judge"],  # ??? in the shipped config
}
# values a constructor may still refuse after the validator passed, because only the loaded
# model knows (the decoder block indices of actadd)
NEEDS_THE_MODEL = {("method=actadd", "method.layers"), ("method=dpn", "method.layers")}

NUMBER = ["abc", "-1", "nan", "0", "1e30", "1000000000000", "-inf"]
STRING = ["123", "[a,b]", "''", "zzz_not_a_choice"]
BOOL = ["maybe", "2"]
LIST = ["[]", "abc", "[abc]", "[-1]", "[nan]", "[1000000000000]"]
MIN_CASES = 400  # the surface today gives more; far fewer means keys were lost


@dataclass
class Case:
    group: str  # the config choice, e.g. "method=lora", "gen"
    key: str  # e.g. "method.lr"
    value: str
    base: tuple[str, ...] = ()  # the group's overrides; the fuzzed one comes last

    @property
    def line(self) -> str:
        return f"{self.key}={self.value}"

    @property
    def overrides(self) -> list[str]:
        return [*BASE, *self.base, self.line]

    @property
    def name(self) -> str:
        return f"{self.group} {self.line}"


@dataclass
class Outcome:
    case: Case
    status: str  # valid | rejected | late (constructor refused, needs the model) | FAIL
    detail: str = ""


# ---------------------------------------------------------------------------------------
# the surface


def _compose(overrides: list[str]) -> DictConfig:
    return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def _annotation_kinds(target: str | None, key: str) -> set[str]:
    """number / string / bool / list, as far as the parameter's annotation says."""
    if not target:
        return set()
    obj = get_object(target) if isinstance(target, str) else target
    fn = obj.__init__ if isinstance(obj, type) else obj
    p = inspect.signature(obj).parameters.get(key)
    if p is None:
        return set()
    try:
        tp = typing.get_type_hints(fn).get(key, p.annotation)
    except Exception:
        tp = p.annotation
    text = str(tp)
    words = {"number": ("int", "float"), "string": ("str",), "bool": ("bool",),
             "list": ("list", "tuple")}
    return {k for k, names in words.items() if any(n in text for n in names)}


def _kinds(v, target: str | None, key: str) -> set[str]:
    """The kinds of the shipped value and of the parameter's annotation (strength: a number
    or 'auto' - both get fuzzed whichever one the config ships)."""
    out = _annotation_kinds(target, key)
    if isinstance(v, bool):
        out.add("bool")
    elif isinstance(v, (int, float)):
        out.add("number")
    elif isinstance(v, str):
        out.add("string")
    elif isinstance(v, (list, tuple)):
        out.add("list")
    elif isinstance(v, dict):
        return set()  # mappings (method.search_gen: checked as gen blocks)
    return out


VALUES = {"number": NUMBER, "string": STRING, "bool": BOOL, "list": LIST}


_BASES: dict[tuple, DictConfig] = {}
PARSER = OverridesParser.create()


def _base(extra: tuple) -> DictConfig:
    if extra not in _BASES:
        _BASES[extra] = _compose([*BASE, *extra])
    return _BASES[extra]


def with_override(case: Case) -> DictConfig:
    """The group's composed config with the fuzzed override applied by Hydra's own code (as
    compose() would: same parser, same update; test_fast_route_matches_compose checks)."""
    cfg = copy.deepcopy(_base(case.base))
    ConfigLoaderImpl._apply_overrides_to_config(PARSER.parse_overrides([case.line]), cfg)
    return cfg


def _node_cases(group: str, prefix: str, extra: list[str]) -> list[Case]:
    node = OmegaConf.to_container(OmegaConf.select(_base(tuple(extra)), prefix), resolve=True)
    target = registry.method_class(node["name"]) if prefix == "method" else node.get("_target_")
    out = []
    for key, v in node.items():
        if str(key).startswith("_") or key == "judge":
            continue
        values = [x for kind in sorted(_kinds(v, target, key)) for x in VALUES[kind]]
        for value in dict.fromkeys(values):  # once each, in order
            # the fuzzed override comes last: it wins over one of NEEDS for the same key
            out.append(Case(group, f"{prefix}.{key}", value, tuple(extra)))
    return out


def all_cases() -> list[Case]:
    cases: list[Case] = []
    groups = config_groups()
    for m in groups["method"]:
        extra = [f"method={m}", "eval=none", *NEEDS.get(f"method={m}", [])]
        cases += _node_cases(f"method={m}", "method", extra)
    for d in groups["data"]:
        cases += _node_cases(f"data={d}", "data", [f"data={d}", "eval=none"])
    cases += _node_cases("eval=default", "eval", ["eval=default"])
    for j in sorted(p.stem for p in (CONF / "eval" / "judge").glob("*.yaml")):
        group = f"eval/judge={j}"
        cases += _node_cases(group, "eval.judge", [group, *NEEDS.get(group, [])])
    for block in ("gen", "search_gen"):
        cases += _node_cases(block, block, ["eval=none"])
    return cases


# ---------------------------------------------------------------------------------------
# one case in process


def _one_line(e: BaseException) -> str | None:
    """The problem with an error that should be a clean line, or None if it is one."""
    msg = str(e)
    if not msg.strip():
        return "empty message"
    if "\n" in msg:
        return f"message of several lines: {msg!r}"
    return None


def _lora_library_checks(m) -> None:
    """What Lightning and torch make of the LoRA values when training starts."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    p = m.params
    L.Trainer(accelerator=m.accelerator, devices=m.devices, strategy=m.strategy,
              precision=p["precision"], max_epochs=int(p["max_epochs"]),
              max_steps=int(p["max_steps"]), gradient_clip_val=p["grad_clip"],
              accumulate_grad_batches=int(p["accumulate_grad_batches"]),
              callbacks=[EarlyStopping(monitor="val_loss", patience=int(p["patience"]))],
              logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=str(m.ctx.cache_dir / "lightning"))
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=float(p["lr"]),
                      weight_decay=float(p["weight_decay"]))


def _own_checks(case: Case, cfg: DictConfig, lm, tmp: Path) -> None:
    """The target's own definition of valid: its constructor, and the checks that it (or the
    library behind it) runs later, where they need no data or model work."""
    GenConfig.from_cfg(cfg.gen)
    GenConfig.search(None, OmegaConf.to_container(cfg.search_gen, resolve=True))
    if case.key.startswith("data."):
        instantiate(cfg.data, trait=cfg.trait.name)
        return
    if case.key.startswith("eval."):
        from pkt.eval.capability import load_mc

        ev = instantiate(cfg.eval, _convert_="all")
        n = getattr(ev, "n_mc", None)
        if n is not None:  # the first n items of the probe set
            assert len(load_mc(n)) == min(n, len(load_mc())), f"n_mc={n} takes {len(load_mc(n))}"
        return
    ctx = openness_context(lm, ["Q?"], {"high": ["h"], "low": ["l"]}, tmp,
                           GenConfig.from_cfg(cfg.gen))
    node = OmegaConf.to_container(cfg.method, resolve=True)
    m = registry.method_class(node.pop("name"))(ctx, **node)
    if m.name == "neuron":  # selection and induction, on one neuron per aspect
        from pkt.neurons.select import NeuronSet, resolve_k

        resolve_k(m.k_min, 256)
        one = NeuronSet(torch.tensor([0]), torch.tensor([1]), torch.tensor([0.2]),
                        torch.tensor([0.5]), torch.tensor([1.0]))
        m.sets = {"high": one, "low": one}
        m.induction()
    elif m.name == "lora":
        _lora_library_checks(m)


def run_case(case: Case, lm, tmp: Path) -> Outcome:
    try:
        cfg = with_override(case)
    except Exception as e:  # the override itself does not parse: Hydra's own error
        return Outcome(case, "FAIL", f"compose: {type(e).__name__}: {e}")
    try:
        validate(cfg)
    except PktError as e:
        bad = _one_line(e)
        return Outcome(case, "FAIL" if bad else "rejected", bad or str(e))
    except Exception as e:
        return Outcome(case, "FAIL", f"validate raised {type(e).__name__}: {e}")
    try:
        _own_checks(case, cfg, lm, tmp)
    except Exception as e:
        err = user_error(e)
        if err is not None and case.key.startswith("data."):
            # the bench loader runs before the model: a PktError there is as early
            bad = _one_line(err)
            return Outcome(case, "FAIL" if bad else "rejected", bad or str(err))
        if err is not None and (case.group, case.key) in NEEDS_THE_MODEL:
            bad = _one_line(err)
            return Outcome(case, "FAIL" if bad else "late", bad or str(err))
        what = (f"a PktError that a run meets only after loading the model: {err}"
                if err is not None else f"{type(e).__name__}: {str(e)[:300]}")
        return Outcome(case, "FAIL", f"validator passed, then {what}")
    return Outcome(case, "valid")


@pytest.fixture(scope="session")
def outcomes(tmp_path_factory) -> list[Outcome]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    lm = TinyRandomModel().load()
    tmp = tmp_path_factory.mktemp("fuzz")
    env = dict(os.environ)
    os.environ["PKT_CACHE"] = str(tmp / "cache")  # cache_dir of any judge or evaluator
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return [run_case(c, lm, tmp / "run") for c in all_cases()]
    finally:
        os.environ.clear()
        os.environ.update(env)
        torch.set_num_threads(n)


GROUP_NAMES = ([f"method={m}" for m in config_groups()["method"]]
               + [f"data={d}" for d in config_groups()["data"]] + ["eval=default"]
               + [f"eval/judge={p.stem}" for p in sorted((CONF / "eval" / "judge").glob("*.yaml"))]
               + ["gen", "search_gen"])


@pytest.mark.parametrize("group", GROUP_NAMES)
def test_every_bad_value_is_valid_or_one_clean_line(outcomes, group):
    mine = [o for o in outcomes if o.case.group == group]
    assert mine, f"no fuzz cases for {group}"
    failures = [f"{o.case.name}: {o.detail}" for o in mine if o.status == "FAIL"]
    assert not failures, "\n".join(failures)


def test_fuzz_summary(outcomes, capsys):
    n = len(outcomes)
    count = {s: sum(o.status == s for o in outcomes) for s in ("valid", "rejected", "late", "FAIL")}
    line = (f"fuzz: {n} cases, {count['valid']} valid, {count['rejected']} rejected"
            f" ({count['late']} refused by the constructor where only the model knows),"
            f" {count['FAIL']} failed")
    with capsys.disabled():
        print(f"\n{line}")
    assert n >= MIN_CASES, line
    assert count["valid"] > 0 and count["rejected"] > n // 2, line
    # each kind of bad value was tried on each group
    for group in GROUP_NAMES:
        tried = {o.case.value for o in outcomes if o.case.group == group}
        assert tried & {"nan", "''", "maybe", "[]"}, (group, tried)


# ---------------------------------------------------------------------------------------
# a sample through the CLI: the same verdict as in process, as a user sees it

TINY = ["gen.max_new_tokens=4", "search_gen.max_new_tokens=6", "data.n_search=4",
        "data.n_test=2", "eval=none"]
SAMPLE = [
    # (overrides, the in-process verdict)
    (["method=neuron", "method.keep_prob=0"], "rejected"),
    (["method=actadd", "method.layers=[1]", "method.position=zzz_not_a_choice"], "rejected"),
    (["method=lora", "method.lr=-1"], "rejected"),
    (["method=base", "data.n_search=1000000000000"], "rejected"),  # by the bench loader
    (["method=base", "eval=default", "eval/judge=openai", "eval.judge.preflight=false",
      "eval.judge.timeout=1e30"], "rejected"),
    (["method=base", "gen.repetition_penalty=1e30"], "valid"),
]


def _cli(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PKT_CACHE=str(tmp / "cache"),
               PKT_MODEL_CACHE=str(MODEL_CACHE))
    cmd = [sys.executable, "-m", "pkt.run", f"paths.output_dir={tmp / 'out'}", *BASE, *TINY,
           *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_sample_through_the_cli(outcomes, tmp_path):
    by_line = {(o.case.group, o.case.line): o.status for o in outcomes}
    jobs = [(args, verdict, tmp_path / str(i)) for i, (args, verdict) in enumerate(SAMPLE)]
    with ThreadPoolExecutor(2) as pool:  # two at a time: most of each is Python start-up
        results = list(pool.map(lambda j: _cli(j[0], j[2]), jobs))
    for (args, verdict, _), r in zip(jobs, results):
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        errors = [x for x in lines if "pkt: error:" in x]
        assert "Traceback" not in r.stderr, (args, r.stderr[-3000:])
        if verdict == "valid":
            assert r.returncode == 0 and not errors, (args, r.stderr[-3000:])
        else:
            assert r.returncode != 0 and len(errors) == 1 and errors == lines, \
                (args, r.returncode, r.stderr[-3000:])
        # the in-process fuzz reached the same verdict for this override, where it tried it
        fuzzed = [s for (_, line), s in by_line.items() if line == args[-1]]
        assert all(s == verdict for s in fuzzed), (args, fuzzed)


def test_nan_and_inf_literals_reach_the_validator_as_floats():
    """The fuzz relies on Hydra parsing nan / -inf / 1e30 as floats, not strings."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = _compose([*BASE, "method.strength=nan", "method.k_min=-inf",
                        "method.diff_threshold=1e30"])
    assert math.isnan(cfg.method.strength) and cfg.method.k_min == -math.inf
    assert cfg.method.diff_threshold == 1e30


def test_fast_route_matches_compose(outcomes):
    """The fuzz applies each override to the group's composed config with Hydra's own code;
    for a sample, compose() with the same overrides gives the same config."""
    cases = [o.case for o in outcomes]
    sample = cases[:: max(1, len(cases) // 8)]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for c in sample:
            fast = OmegaConf.to_container(with_override(c), resolve=False)
            slow = OmegaConf.to_container(_compose(c.overrides), resolve=False)
            fast.pop("hydra"), slow.pop("hydra")
            assert repr(fast) == repr(slow), c.name  # repr: nan != nan
