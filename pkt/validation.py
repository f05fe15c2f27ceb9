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
import importlib
import inspect
import logging
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from pkt.errors import PktError

log = logging.getLogger(__name__)

# parameters the runner passes itself (never from the config)
RUNTIME = {"method": ("ctx",), "data": ("trait",), "eval.judge": ("lm",)}


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a parameter accepts beyond its type: a numeric range (``lo``/``hi``, open or
    closed; ``also``: numbers allowed outside it, e.g. -1 for "no cap"), the strings it
    accepts (``choices``: a tuple, or ``"module:NAME"`` of a tuple or dict in the module that
    defines them; ``fold``: compared stripped and lower-cased), ``nonempty`` strings or
    lists, ``each``: the range applies to the elements of a list, ``check``: a function
    ``(where, value)`` raising PktError for what the rest cannot say; ``label``: the name
    an unknown choice goes by in the message (the method's own wording)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple = ()
    choices: tuple | str | Callable | None = None
    fold: bool = False
    nonempty: bool = False
    each: bool = False
    check: Callable | None = None
    label: str | None = None  # for "unknown <label> 'x'" where the method words it so

    def in_range(self, v) -> bool:
        if v in self.also:
            return True
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def range_words(self) -> str:
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            w = (f"in {'(' if self.lo_open else '['}{lo:g}, {hi:g}"
                 f"{')' if self.hi_open else ']'}")
        elif lo is not None:
            w = f"{'>' if self.lo_open else '>='} {lo:g}"
        elif hi is not None:
            w = f"{'<' if self.hi_open else '<='} {hi:g}"
        else:
            return ""
        return w + "".join(f" or {a:g}" for a in self.also)

    def has_range(self) -> bool:
        return self.lo is not None or self.hi is not None

    def allowed(self) -> tuple | None:
        c = self.choices
        if c is None:
            return None
        if callable(c):
            c = c()
        elif isinstance(c, str):
            mod, _, name = c.partition(":")
            c = getattr(importlib.import_module(mod), name)
        return tuple(c)


def _lightning_precisions() -> tuple:
    from lightning.fabric.connector import (
        _PRECISION_INPUT_INT,
        _PRECISION_INPUT_STR,
        _PRECISION_INPUT_STR_ALIAS,
    )

    return tuple(typing.get_args(_PRECISION_INPUT_STR) + typing.get_args(_PRECISION_INPUT_STR_ALIAS)
                 + typing.get_args(_PRECISION_INPUT_INT))


def _lightning_accelerators() -> tuple:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))


def _check_precision(where: str, v) -> None:
    allowed = _lightning_precisions()
    if v not in allowed or isinstance(v, bool):
        raise PktError(f"unknown {where} {_show(v)} (choose from: "
                       f"{', '.join(str(a) for a in allowed)})")


def _check_devices(where: str, v) -> None:
    """Lightning's ``devices``: auto, a count (>= 1, or -1: all), or device ids (a list, or a
    comma-separated string). Whether this machine has them is Lightning's to say."""
    def count(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and (1 <= x <= MAX_DEVICES
                                                                   or x == -1)

    def ids(xs) -> bool:
        return bool(xs) and all(isinstance(x, int) and not isinstance(x, bool)
                                and 0 <= x < MAX_DEVICES for x in xs)

    ok = v == "auto" or count(v)
    if isinstance(v, str) and not ok:
        parts = [x.strip() for x in v.split(",")]
        try:
            nums = [int(x) for x in parts if x]
        except ValueError:
            nums = None
        ok = nums is not None and len(nums) == len(parts) and (
            count(nums[0]) if len(nums) == 1 and "," not in v else ids(nums))
    if isinstance(v, (list, tuple)):
        ok = ids(list(v))
    if not ok:
        raise PktError(f"{where} must be auto, a device count in [1, {MAX_DEVICES}] (or -1: all), "
                       f"or a list of device ids >= 0, got {_show(v)}")


def _device_list(v) -> tuple[int | None, list[int] | None]:
    """Lightning's ``devices`` (already well formed) as (count, ids): one of them is set."""
    if isinstance(v, (list, tuple)):
        return None, [int(x) for x in v]
    if isinstance(v, str) and "," in v:
        return None, [int(x) for x in v.split(",") if x.strip()]
    return int(v), None


def _check_lora_devices(node: dict) -> None:
    """``method.devices`` against this machine, as Lightning will check it when training
    starts (after identification): CPU takes a process count, CUDA ids or counts that exist."""
    dev, acc = node.get("devices", "auto"), str(node.get("accelerator", "auto"))
    if dev == "auto" or acc not in ("auto", "cpu", "gpu", "cuda"):
        return
    import torch

    if acc in ("auto", "gpu"):
        mps = getattr(torch.backends, "mps", None)
        acc = ("cuda" if torch.cuda.is_available()
               else "mps" if mps is not None and mps.is_available() else "cpu")
    n, ids = _device_list(dev)
    if acc == "cpu":
        if ids is not None or n is None or n < 1:
            raise PktError(f"method.devices on CPU is a number of processes >= 1, got "
                           f"{_show(dev)} (accelerator {node.get('accelerator', 'auto')})")
    elif acc == "cuda":
        have = torch.cuda.device_count()
        missing = [i for i in ids if i >= have] if ids is not None else []
        if missing or (n is not None and n > have):
            raise PktError(f"method.devices={_show(dev)} asks for GPUs this machine does not have "
                           f"({have} visible)")


MAX_DEVICES = 1024  # per node


def _check_url(where: str, v) -> None:
    import urllib.parse

    parsed = urllib.parse.urlparse(str(v).strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise PktError(f"{where} must be an http(s) URL, got {_show(v)}")


def _check_folder(where: str, v) -> None:
    """A folder to read from (published neurons, a saved adapter); empty means none."""
    if not str(v).strip():
        return
    f = Path(str(v))
    if not f.is_dir():
        raise PktError(f"{where}: {'not a folder' if f.exists() else 'folder not found'}: {v}")


def _check_device(where: str, v) -> None:
    if v in (None, "auto"):
        return
    import torch

    try:
        torch.device(str(v))
    except (RuntimeError, ValueError):
        raise PktError(f"{where} must be auto or a torch device (cpu, cuda, cuda:1, mps), "
                       f"got {_show(v)}") from None


AT_LEAST_1 = Rule(lo=1)
POSITIVE = Rule(lo=0, lo_open=True)
NON_NEGATIVE = Rule(lo=0)
# ranges and choices by (group, target, parameter); "*" = any target of that group. The
# wording follows the methods' own checks, which still run (after the model is loaded).
NEURON, ACTADD, LORA = ("pkt.methods.neuron.NeuronMethod", "pkt.methods.actadd.ActAddMethod",
                        "pkt.methods.lora.LoraMethod")
OPENAI, LOCAL = "pkt.eval.judge.OpenAIJudge", "pkt.eval.judge.LocalJudge"
RULES = {
    ("method", "*", "name"): Rule(nonempty=True),
    ("method", "*", "batch_size"): AT_LEAST_1,
    ("method", NEURON, "strength"): Rule(lo=0, choices=("auto",), fold=True),
    ("method", NEURON, "k_min"): POSITIVE,
    ("method", NEURON, "keep_prob"): Rule(lo=0, hi=1, lo_open=True),
    ("method", NEURON, "neurons_from"): Rule(check=_check_folder),
    ("method", NEURON, "selection"): Rule(choices="pkt.neurons.select:SELECTIONS"),
    ("method", NEURON, "strength_grid"): Rule(lo=0, each=True, nonempty=True),
    ("method", NEURON, "max_ppl_ratio"): POSITIVE,
    ("method", NEURON, "min_mc_ratio"): NON_NEGATIVE,
    ("method", NEURON, "auto_n_mc"): AT_LEAST_1,
    ("method", ACTADD, "layers"): Rule(nonempty=True),
    ("method", ACTADD, "position"): Rule(choices="pkt.methods.actadd:POSITIONS"),
    # a rank above the model's width adds nothing; 10**12 would only fail allocating the
    # adapter after identification (no model this runs on is 65536 wide)
    ("method", LORA, "rank"): Rule(lo=1, hi=65536),
    ("method", LORA, "alpha"): POSITIVE,
    ("method", LORA, "dropout"): Rule(lo=0, hi=1, hi_open=True),
    ("method", LORA, "target_modules"): Rule(nonempty=True, each=True),
    ("method", LORA, "lr"): POSITIVE,
    ("method", LORA, "weight_decay"): NON_NEGATIVE,
    ("method", LORA, "max_epochs"): AT_LEAST_1,
    ("method", LORA, "max_steps"): Rule(lo=1, also=(-1,)),
    ("method", LORA, "val_fraction"): Rule(lo=0, hi=1, lo_open=True, hi_open=True),
    ("method", LORA, "patience"): NON_NEGATIVE,
    ("method", LORA, "max_length"): Rule(lo=2),
    ("method", LORA, "grad_clip"): NON_NEGATIVE,
    ("method", LORA, "accumulate_grad_batches"): AT_LEAST_1,
    ("method", LORA, "accelerator"): Rule(choices=_lightning_accelerators),
    ("method", LORA, "devices"): Rule(check=_check_devices),
    ("method", LORA, "strategy"): Rule(choices="pkt.methods.lora:STRATEGIES"),
    ("method", LORA, "precision"): Rule(check=_check_precision),
    ("method", LORA, "adapter_from"): Rule(check=_check_folder),
    ("method", "pkt.methods.prompt.PromptMethod", "variant"):
        Rule(choices="pkt.methods.prompt:VARIANTS", label="prompt variant"),
    ("data", "*", "n_search"): AT_LEAST_1,
    ("data", "*", "n_test"): AT_LEAST_1,
    ("data", "*", "path"): Rule(nonempty=True),
    ("eval", "*", "batch_size"): AT_LEAST_1,
    ("eval", "pkt.eval.Evaluation", "trait_scorer"): Rule(choices=("auto", "offline", "judge")),
    ("eval", "pkt.eval.Evaluation", "capability_n_mc"): AT_LEAST_1,
    ("eval.judge", "*", "batch_size"): AT_LEAST_1,
    ("eval.judge", OPENAI, "model"): Rule(nonempty=True),
    ("eval.judge", OPENAI, "base_url"): Rule(check=_check_url),
    ("eval.judge", OPENAI, "temperature"): Rule(lo=0, hi=2),  # the OpenAI API's range
    ("eval.judge", OPENAI, "max_tokens"): AT_LEAST_1,
    # a day per request at most (a socket timeout must fit in the platform's time_t)
    ("eval.judge", OPENAI, "timeout"): Rule(lo=0, hi=86400, lo_open=True),
    ("eval.judge", OPENAI, "max_retries"): NON_NEGATIVE,
    ("eval.judge", OPENAI, "concurrency"): AT_LEAST_1,
    ("eval.judge", LOCAL, "path"): Rule(nonempty=True),
    ("eval.judge", LOCAL, "dtype"): Rule(choices="pkt.models:_DTYPES"),
    ("eval.judge", LOCAL, "device"): Rule(check=_check_device),
}
# checks of several values of one node together: {(group, target): function(node)}
NODE_CHECKS = {("method", LORA): _check_lora_devices}
# values a parameter accepts beyond its annotation (the annotation is narrower than what
# the library behind it takes): Lightning's precision may be 16, 32 or 64
ALSO = {(LORA, "precision"): [("int", None)]}
# a budget beyond any model's context would generate for days before failing
GEN_RULES = {"max_new_tokens": ("int", Rule(lo=1, hi=32768)),
             "batch_size": ("int", Rule(lo=1, hi=4096)),
             "repetition_penalty": ("number", POSITIVE),
             "dtype": ("str", Rule(choices=("auto", "model", "float32", "bfloat16", "float16"),
                                   fold=True))}

_WORDS = {"null": "null", "bool": "true or false", "int": "an integer",
          "number": "a finite number", "str": "a string", "list": "a list",
          "dict": "a mapping"}


# ---------------------------------------------------------------------------------------
# value kinds


def _kinds(tp) -> list | None:
    """What an annotation accepts, as [(kind, element kinds)]; None means anything."""
    if tp is typing.Any or tp is inspect.Parameter.empty:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        out = []
        for arg in typing.get_args(tp):
            k = _kinds(arg)
            if k is None:
                return None
            out += k
        return out
    if tp is type(None):
        return [("null", None)]
    for kind, t in (("bool", bool), ("int", int), ("number", float), ("str", str)):
        if tp is t:
            return [(kind, None)]
    if tp in (list, tuple) or origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return [("list", _kinds(args[0]) if args else None)]
    if tp is dict or origin is dict:
        return [("dict", None)]
    return None


def _kinds_of_default(default) -> list | None:
    if default is inspect.Parameter.empty or default is None:
        return None
    for kind, t in (("bool", bool), ("int", int), ("number", float), ("str", str)):
        if isinstance(default, t):
            return [(kind, None)]
    return None


def _is(kind: str, v) -> bool:
    if kind == "null":
        return v is None
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind == "str":
        return isinstance(v, str)
    if kind == "list":
        return isinstance(v, (list, tuple))
    if kind == "dict":
        return isinstance(v, dict)
    return True


def _show(v) -> str:
    if isinstance(v, str):
        return repr(v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _describe(kinds: list, rule: Rule | None, v=None) -> str:
    words = []
    number = isinstance(v, (int, float)) and not isinstance(v, bool)  # nan and inf too
    if number and any(k in ("int", "number") for k, _ in kinds):
        kinds = [(k, e) for k, e in kinds if k != "str"]  # a number out of range: its range
    for kind, _ in kinds:
        w = _WORDS[kind]
        if rule is not None and kind in ("int", "number") and rule.has_range():
            w += f" {rule.range_words()}"
        if rule is not None and kind == "str" and rule.choices is not None:
            w = " or ".join(repr(c) for c in rule.allowed())
        elif rule is not None and kind == "str" and rule.nonempty:
            w = "a non-empty string"
        if w not in words:
            words.append(w)
    return " or ".join(words)


def _choice_error(where: str, v, rule: Rule) -> PktError:
    return PktError(f"unknown {rule.label or where} {_show(v)} (choose from: "
                    f"{', '.join(str(a) for a in rule.allowed())})")


def check_value(where: str, v, kinds: list | None, rule: Rule | None = None) -> None:
    """``v`` must be one of ``kinds``, and within ``rule`` (a range for numbers, choices or
    non-empty for strings, non-empty and element rules for lists, its own check)."""
    if kinds is None:
        if rule is not None and v is not None and rule.check is not None:
            rule.check(where, v)
        return
    only_choices = (rule is not None and rule.choices is not None
                    and [k for k, _ in kinds if k != "null"] == ["str"])
    for kind, elem in kinds:
        if not _is(kind, v):
            continue
        if rule is not None:
            if kind in ("int", "number") and rule.has_range() and not rule.in_range(v):
                break
            if kind == "str":
                allowed = rule.allowed()
                if allowed is not None:
                    key = v.strip().lower() if rule.fold else v
                    if key not in allowed:
                        if only_choices:
                            raise _choice_error(where, v, rule)
                        break
                if rule.nonempty and not v.strip():
                    break
            if kind == "list":
                if rule.nonempty and not v:
                    raise PktError(f"{where} must be a non-empty list, got []")
                if rule.each:
                    inner = (Rule(lo=rule.lo, hi=rule.hi, lo_open=rule.lo_open,
                                  hi_open=rule.hi_open) if rule.has_range()
                             else Rule(nonempty=rule.nonempty))
                    for i, x in enumerate(v):
                        check_value(f"{where}[{i}]", x, elem or (
                            [("number", None)] if rule.has_range() else None), inner)
        if kind == "list" and elem is not None and not (rule is not None and rule.each):
            for i, x in enumerate(v):
                check_value(f"{where}[{i}]", x, elem)
        if rule is not None and rule.check is not None and v is not None:
            rule.check(where, v)
        return
    if only_choices:
        raise _choice_error(where, v, rule)
    raise PktError(f"{where} must be {_describe(kinds, rule, v)}, got {_show(v)}")


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


def _target_name(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _signature(obj) -> tuple[dict, dict, bool]:
    """(parameters by name, type hints, whether it takes **kwargs)."""
    sig = inspect.signature(obj)
    fn = obj.__init__ if isinstance(obj, type) else obj
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not evaluate: fall back to the defaults
        hints = {}
    params = {n: p for n, p in sig.parameters.items()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"}
    open_ = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return params, hints, open_


def check_node(group: str, node: dict, label: str | None = None, types_too: bool = True):
    """The keys of a ``_target_`` node against its target's signature, then their types."""
    obj = target_of(group, node)
    name = _target_name(obj)
    params, hints, open_ = _signature(obj)
    runtime = RUNTIME.get(group, ())
    settable = [n for n in params if n not in runtime]
    for key in node:
        if str(key).startswith("_"):
            continue
        if key not in params and not open_ or key in runtime:
            valid = ", ".join(n for n in settable if n != "name") or "none"
            what = f" for {group} {label}" if label else ""
            raise PktError(f"unknown key {group}.{key}{what} (valid: {valid})")
    for n in settable:
        p = params[n]
        if p.default is p.empty and n not in node:
            raise PktError(f"{group}.{n} must be set (it has no default)")
    if not types_too:
        return obj
    for key, v in node.items():
        if str(key).startswith("_") or key not in params:
            continue
        kinds = _kinds(hints[key]) if key in hints else _kinds_of_default(params[key].default)
        if kinds is not None:
            kinds = kinds + ALSO.get((name, key), [])
        rule = RULES.get((group, name, key)) or RULES.get((group, "*", key))
        check_value(f"{group}.{key}", v, kinds, rule)
    if (group, name) in NODE_CHECKS:
        NODE_CHECKS[(group, name)](node)
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


def validate(cfg: DictConfig) -> None:
    """Every config value that can be checked without data or model; PktError on the first."""
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
        check_judge_endpoint(node, judge)
