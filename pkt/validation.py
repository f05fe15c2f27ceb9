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
  numbers, bools true/false, ``layers`` a list of integers; ``batch_size`` >= 1;
* ``eval`` and ``eval.judge``: keys and types the same way, batch sizes >= 1;
* last, the judge endpoint: one cheap request (see ``OpenAIJudge.check_endpoint``), unless
  ``eval.judge.preflight=false``.

A target whose signature takes ``**kwargs`` (e.g. ``method=base``) accepts any key; its
named parameters are still type-checked. Range checks that only a method knows (e.g.
``method.keep_prob`` in (0, 1]) stay in the method.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import types
import typing
from pathlib import Path

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from pkt import PktError

log = logging.getLogger(__name__)

# parameters the runner passes itself (never from the config)
RUNTIME = {"method": ("ctx",), "data": ("trait",), "eval.judge": ("lm",)}
# lower bounds on numeric parameters: {(target, parameter): (operator, bound)}; "*" = any
# target of that group. The wording matches the methods' own checks.
BOUNDS = {
    ("method", "*", "batch_size"): (">=", 1),
    ("method", "pkt.methods.neuron.NeuronMethod", "strength"): (">=", 0),
    ("data", "*", "n_search"): (">=", 1),
    ("data", "*", "n_test"): (">=", 1),
    ("eval", "*", "batch_size"): (">=", 1),
    ("eval.judge", "*", "batch_size"): (">=", 1),
}
# values a parameter accepts beyond its annotation (the annotation is narrower than what
# the library behind it takes): Lightning's precision may be 16, 32 or 64
ALSO = {("pkt.methods.lora.LoraMethod", "precision"): [("int", None)]}
GEN_BOUNDS = {"max_new_tokens": ("int", (">=", 1)), "batch_size": ("int", (">=", 1)),
              "repetition_penalty": ("number", (">", 0))}

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


def _describe(kinds: list, bound) -> str:
    words = []
    for kind, _ in kinds:
        w = _WORDS[kind]
        if bound and kind in ("int", "number"):
            w += f" {bound[0]} {bound[1]:g}"
        if w not in words:
            words.append(w)
    return " or ".join(words)


def _in_bound(v, bound) -> bool:
    op, b = bound
    return v >= b if op == ">=" else v > b


def check_value(where: str, v, kinds: list | None, bound=None) -> None:
    """``v`` must be one of ``kinds`` (within ``bound`` if it is a number)."""
    if kinds is None:
        return
    for kind, elem in kinds:
        if not _is(kind, v):
            continue
        if kind in ("int", "number") and bound and not _in_bound(v, bound):
            break
        if kind == "list" and elem is not None:
            for i, x in enumerate(v):
                check_value(f"{where}[{i}]", x, elem)
        return
    raise PktError(f"{where} must be {_describe(kinds, bound)}, got {_show(v)}")


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
        bound = BOUNDS.get((group, name, key)) or BOUNDS.get((group, "*", key))
        check_value(f"{group}.{key}", v, kinds, bound)
    return obj


def check_gen(where: str, block) -> None:
    """A generation block (gen, search_gen, method.search_gen): GenConfig's keys only."""
    from pkt.generation import GenConfig

    if block is None:
        return
    if not isinstance(block, dict):
        raise PktError(f"{where} must be a mapping, got {_show(block)}")
    valid = [f.name for f in dataclasses.fields(GenConfig)]
    for key in block:
        if key not in valid:
            raise PktError(f"unknown key {where}.{key} (valid: {', '.join(valid)})")
    for key, (kind, bound) in GEN_BOUNDS.items():
        if key in block:
            check_value(f"{where}.{key}", block[key], [(kind, None)], bound)


def check_data(node: dict, obj) -> None:
    from pkt.bench import check_data_folder, load_bench

    if obj is load_bench and isinstance(node.get("path"), str):
        check_data_folder(Path(node["path"]))


def check_judge_endpoint(node: dict, obj) -> None:
    """One cheap request to the judge before any work (targets with ``check_endpoint``)."""
    if not isinstance(obj, type) or not hasattr(obj, "check_endpoint"):
        return
    if not node.get("preflight", True):
        log.info("judge endpoint check skipped (eval.judge.preflight=false)")
        return
    judge = obj(**{k: v for k, v in node.items() if not str(k).startswith("_")})
    judge.check_endpoint()


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
    if not isinstance(obj, type):
        raise PktError(f"method._target_ '{method['_target_']}' is not a class")
    if isinstance(method.get("search_gen"), dict):
        check_gen("method.search_gen", method["search_gen"])
    ev = plain(cfg, "eval")
    if not isinstance(ev, dict) or "_target_" not in ev:
        return
    check_node("eval", ev)
    judge = ev.get("judge")
    if isinstance(judge, dict) and "_target_" in judge:
        jobj = check_node("eval.judge", judge)
        check_judge_endpoint(judge, jobj)
