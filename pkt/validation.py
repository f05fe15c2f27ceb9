"""Checks of a composed run config that need neither the data nor the model.

:func:`validate` runs before the runner loads anything, so that a bad value is one clear
``pkt: error:`` line instead of a traceback after minutes of work (and no half-finished run
dir that looks like a result). It checks, in the order the run would meet them:

* ``gen`` and ``search_gen``: only the GenConfig keys; ``max_new_tokens`` and ``batch_size``
  integers >= 1, ``repetition_penalty`` a finite number > 0. (Checked first because other
  values interpolate them: ``method.batch_size: ${gen.batch_size}``, so an error names the
  key the user set.)
* ``data``: the keys of its target, ``n_search`` / ``n_test`` integers >= 1 or null, and that
  ``data.path`` is a folder;
* ``model``: the keys of its target (values are checked by the loader);
* ``method``: the keys of the method class (from ``method._target_``) and the type of every
  value against the parameter's annotation (or its default), e.g. numbers must be finite
  numbers, bools true/false, ``layers`` a list of integers; then the ranges and choices of
  :data:`RULES` (``keep_prob`` in (0, 1], ``k_min`` > 0, ``lr`` > 0, ``position`` mean or
  last, ``precision`` one Lightning knows, ...);
* ``eval`` and ``eval.judge``: keys, types and rules the same way (``capability_n_mc`` >= 1,
  judge ``timeout`` in (0, 86400], ``concurrency`` >= 1, ...); the judge and the evaluator
  are then built (their constructors are cheap and check the rest, e.g. ``base_url``);
* last, the judge endpoint: one cheap request (see ``OpenAIJudge.check_endpoint``), unless
  ``eval.judge.preflight=false``.

A target whose signature takes ``**kwargs`` (e.g. ``method=base``) accepts any key; its
named parameters are still type-checked. What only the loaded model knows (e.g. whether
``method.layers`` exist in it) stays in the method. ``tests/test_fuzz.py`` tries wrong
types, negative, zero, NaN, huge and unknown values on every key against these rules.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from pkt.errors import PktError
from pkt.params import POSITIVE, Rule, _show, check_params, check_value

log = logging.getLogger(__name__)

# parameters the runner passes itself (never from the config)
RUNTIME = {"method": ("ctx",), "data": ("trait",), "eval.judge": ("lm",)}


# what a parameter accepts lives in its class (``RULES``, read by pkt.params.check_params)
GEN_RULES = {"max_new_tokens": ("int", Rule(lo=1, hi=32768)),
             "batch_size": ("int", Rule(lo=1, hi=4096)),
             "repetition_penalty": ("number", POSITIVE),
             "dtype": ("str", Rule(choices=("auto", "model", "float32", "bfloat16", "float16"),
                                   fold=True))}

# ---------------------------------------------------------------------------------------
# value kinds


# ---------------------------------------------------------------------------------------
# config nodes


def plain(cfg, key: str):
    """``cfg[key]`` as plain Python values (interpolations resolved); a '???' is an error."""
    node = OmegaConf.select(cfg, key) if isinstance(cfg, DictConfig) else None
    if not isinstance(node, DictConfig):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        raise PktError(f"{e.full_key or key} must be set (it has no default)") from None
    except OmegaConfBaseException as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PktError(f"cannot resolve {key}: {first}") from None


def target_of(group: str, node: dict):
    if group == "method":  # methods are found by name, in the registry
        from pkt.methods import registry

        return registry.method_class(node.get("name"))
    target = node.get("_target_")
    if not target:
        raise PktError(f"{group}._target_ is not set")
    try:
        return get_object(str(target))
    except Exception as e:  # hydra wraps import errors of every kind
        raise PktError(f"{group}._target_ '{target}' cannot be imported "
                       f"({type(e).__name__})") from None


def check_node(group: str, node: dict, label: str | None = None, types_too: bool = True):
    """The keys of a node against its target's signature, then their types and the
    target's declared rules (:func:`pkt.params.check_params`). Returns the target."""
    obj = target_of(group, node)
    check_params(obj, node, group, label, RUNTIME.get(group, ()), types_too)
    return obj


def check_gen(where: str, block) -> None:
    """A generation block (gen, search_gen, method.search_gen): GenConfig's keys only."""
    from pkt.generation import GenConfig

    if block is None:
        return
    if not isinstance(block, dict):
        raise PktError(f"{where} must be a mapping, got {_show(block)}")
    # workers: identification's processes (search_gen); evaluation generates in one
    valid = [f.name for f in dataclasses.fields(GenConfig) if f.name != "workers" or where != "gen"]
    for key in block:
        if key not in valid:
            raise PktError(f"unknown key {where}.{key} (valid: {', '.join(valid)})")
    for key, (kind, rule) in GEN_RULES.items():
        if key in block and not (key == "dtype" and block[key] is None):  # null: the model's
            check_value(f"{where}.{key}", block[key], [(kind, None)], rule)
    if "workers" in block:
        w = block["workers"]
        if w != "auto" and (isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= 2):
            raise PktError(f"{where}.workers must be 1, 2 or auto, got {_show(w)}")


def check_data(node: dict, obj) -> None:
    from pkt.dataset import check_data_folder, load_bench

    if obj is load_bench and isinstance(node.get("path"), str):
        check_data_folder(Path(node["path"]))


def _settable(node: dict) -> dict:
    return {k: v for k, v in node.items() if not str(k).startswith("_")}


def build_judge(node: dict, obj):
    """The judge itself (its constructor checks the rest and loads nothing), or None."""
    if not isinstance(obj, type):
        return None
    return obj(**_settable(node))


def check_judge_endpoint(node: dict, judge) -> None:
    """One cheap request to the judge before any work (judges with ``check_endpoint``)."""
    if judge is None or not hasattr(judge, "check_endpoint"):
        return
    if not node.get("preflight", True):
        log.info("judge endpoint check skipped (eval.judge.preflight=false)")
        return
    judge.check_endpoint()


def build_evaluator(node: dict, obj, judge) -> None:
    """The evaluator's constructor (cheap) checks combinations, e.g. trait_scorer=judge
    without a judge, before the run instead of after every answer was generated."""
    if not isinstance(obj, type):
        return
    kw = {k: v for k, v in _settable(node).items() if k != "judge"}
    if "judge" in node:
        kw["judge"] = judge
    obj(**kw)


def check_profile(cfg: DictConfig, method_cls) -> None:
    """The profile (traits, aspects, strengths, conflict rule) and whether the method composes one."""
    from pkt.profiles import Profile

    mode = cfg.get("score_traits", "auto")
    if mode not in ("auto", "own", "all", None):
        raise PktError(f"unknown score_traits '{mode}' (choose from: auto, own, all)")
    node = plain(cfg, "profile")
    if node is None:
        return
    prof = Profile.from_config(node)
    support = getattr(method_cls, "profile_support", True)
    if prof and support is not True:
        raise PktError(str(support))


def validate(cfg: DictConfig, endpoint: bool = True) -> None:
    """Every config value that can be checked without data or model; PktError on the first.
    ``endpoint``: also one cheap request to a configured judge endpoint."""
    seed = cfg.get("seed")
    check_value("seed", seed, [("int", None)])
    check_gen("gen", plain(cfg, "gen"))
    check_gen("search_gen", plain(cfg, "search_gen"))
    data = plain(cfg, "data")
    if isinstance(data, dict):
        check_data(data, check_node("data", data))
    model = plain(cfg, "model")
    if isinstance(model, dict):
        check_node("model", model, types_too=False)
    method = plain(cfg, "method")
    if not isinstance(method, dict):
        raise PktError("no method configured (choose one with method=...)")
    label = method.get("name") or "?"
    obj = check_node("method", method, label)
    if isinstance(method.get("search_gen"), dict):
        check_gen("method.search_gen", method["search_gen"])
    check_profile(cfg, obj)
    ev = plain(cfg, "eval")
    if not isinstance(ev, dict) or "_target_" not in ev:
        return
    eobj = check_node("eval", ev)
    node, judge = ev.get("judge"), None
    if isinstance(node, dict) and "_target_" in node:
        judge = build_judge(node, check_node("eval.judge", node))
    build_evaluator(ev, eobj, judge)
    if judge is not None:
        if endpoint:
            check_judge_endpoint(node, judge)


def composition_error(e: BaseException) -> str:
    """Hydra's multi-line composition error as one line (its first line, and its hint)."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    if not lines:
        return type(e).__name__
    out = lines[0].rstrip(".")
    cause = str(e.__cause__ or "")
    if "not in struct" in cause or "not in struct" in str(e):
        out += " (no such key)"
    hint = next((x for x in lines[1:] if x.startswith("To append")), None)
    if hint:
        out += f"; {hint[0].lower()}{hint[1:]}"
    return out


def check_composes(argv: list[str], config_name: str = "config") -> None:
    """The command line's overrides compose (Hydra's own errors, e.g. an unknown key, as one
    line before Hydra prints them over several)."""
    from hydra import compose, initialize_config_dir

    from pkt.resources import CONF_DIR

    args = [a for a in argv if not a.startswith("-")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            compose(config_name=config_name, overrides=args, return_hydra_config=True)
        except Exception as e:  # Hydra's composition and override-parsing errors
            raise PktError(composition_error(e)) from None


def sweep_jobs(argv: list[str]) -> list[list[str]]:
    """The jobs a ``-m`` command line would run, as Hydra's basic sweeper splits them: the
    config's ``hydra.sweeper.params`` (e.g. an experiment's) then the command line's
    overrides, crossed. Warns (one line each) when a later override of a key replaces a
    sweep axis given before it."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pkt.resources import CONF_DIR

    args = [a for a in argv if not a.startswith("-")]
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(args)
    axes: dict[str, str] = {}  # key -> the sweep override that set it
    for o, text in zip(parsed, args):
        key = o.get_key_element()
        if key in axes and text != axes[key]:
            print(f"pkt: warning: {text} replaces the sweep axis {axes[key]} given before it "
                  f"(Hydra keeps the last value of a key)", file=sys.stderr, flush=True)
        if o.is_sweep_override():
            axes[key] = text
        else:
            axes.pop(key, None)
    fixed = [t for o, t in zip(parsed, args) if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = compose(config_name="config", overrides=fixed, return_hydra_config=True)
    node = base.hydra.sweeper.get("params")
    params = OmegaConf.to_container(node, resolve=False) if node is not None else {}
    every = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + args)
    return [job for batch in BasicSweeper.split_arguments(every, None) for job in batch]


def validate_sweep(argv: list[str]) -> int:
    """Every job of a ``-m`` sweep composed and validated before the first one runs: a bad
    value in any job is one line naming the job, before any work. Returns the job count."""
    from hydra import compose, initialize_config_dir

    from pkt.resources import CONF_DIR

    jobs = sweep_jobs(argv)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for i, job in enumerate(jobs):
            label = " ".join(a for a in job if not a.startswith("hydra."))
            try:
                cfg = compose(config_name="config", overrides=job, return_hydra_config=True)
            except Exception as e:  # Hydra's composition errors, e.g. an unknown key
                raise PktError(f"sweep job #{i} ({label}): {composition_error(e)}") from None
            try:
                validate(cfg, endpoint=i == 0)
            except PktError as e:
                raise PktError(f"sweep job #{i} ({label}): {e}") from None
    return len(jobs)
