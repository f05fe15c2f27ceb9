"""A parameter's type and range, declared once (a leaf module: standard library only).

A class declares what its keyword parameters accept beyond their annotations in a
``RULES`` class attribute, ``{parameter: Rule(...)}`` (and, where needed, ``ALSO``: kinds
accepted beyond the annotation, ``NODE_CHECK``: a check of several values together).
:func:`check_params` reads the class's signature and those declarations; the runner's
pre-flight (:mod:`pkt.validation`, on the composed Hydra config) and
:func:`pkt.methods.registry.compose` (every front door, before a method is built) both call
it, so a renamed class keeps its rules and every door refuses the same values with the
same line.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path

from pkt.errors import PktError


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


AT_LEAST_1 = Rule(lo=1)
POSITIVE = Rule(lo=0, lo_open=True)
NON_NEGATIVE = Rule(lo=0)


def check_url(where: str, v) -> None:
    import urllib.parse

    parsed = urllib.parse.urlparse(str(v).strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise PktError(f"{where} must be an http(s) URL, got {_show(v)}")


def check_folder(where: str, v) -> None:
    """A folder to read from (published neurons, a saved adapter); empty means none."""
    if not str(v).strip():
        return
    f = Path(str(v))
    if not f.is_dir():
        raise PktError(f"{where}: {'not a folder' if f.exists() else 'folder not found'}: {v}")


def check_device(where: str, v) -> None:
    if v in (None, "auto"):
        return
    import torch

    try:
        torch.device(str(v))
    except (RuntimeError, ValueError):
        raise PktError(f"{where} must be auto or a torch device (cpu, cuda, cuda:1, mps), "
                       f"got {_show(v)}") from None


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




def check_params(obj, node: dict, where: str, label: str | None = None,
                 runtime: tuple = (), types_too: bool = True) -> None:
    """The keys of ``node`` against ``obj``'s signature (a class or a function), then every
    value against its annotation and ``obj.RULES``; ``runtime``: parameters the caller
    passes itself (never from a config)."""
    params, hints, open_ = _signature(obj)
    settable = [n for n in params if n not in runtime]
    for key in node:
        if str(key).startswith("_"):
            continue
        if key not in params and not open_ or key in runtime:
            valid = ", ".join(n for n in settable if n != "name") or "none"
            what = f" for {where} {label}" if label else ""
            raise PktError(f"unknown key {where}.{key}{what} (valid: {valid})")
    for n in settable:
        p = params[n]
        if p.default is p.empty and n not in node:
            raise PktError(f"{where}.{n} must be set (it has no default)")
    if not types_too:
        return
    rules, also = getattr(obj, "RULES", {}), getattr(obj, "ALSO", {})
    for key, v in node.items():
        if str(key).startswith("_") or key not in params:
            continue
        kinds = _kinds(hints[key]) if key in hints else _kinds_of_default(params[key].default)
        if kinds is not None:
            kinds = kinds + also.get(key, [])
        check_value(f"{where}.{key}", v, kinds, rules.get(key))
    node_check = getattr(obj, "NODE_CHECK", None)
    if node_check is not None:
        node_check(node)
