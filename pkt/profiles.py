"""Personality profiles: several traits induced at once, each with an aspect and a strength.

A profile is what a role-play user asks for ("very extraverted, calm, a bit disagreeable"):

    profile = Profile.parse("extraversion:high:1.2+neuroticism:low")
    profile = Profile.from_config({"traits": {"extraversion": {"aspect": "high"},
                                              "neuroticism": {"aspect": "low", "strength": 0.8}}})

A single ``trait=... aspect=...`` run is the one-trait profile of that trait. ``strength``
is optional: ``None`` means "the method's own strength" (``method.strength`` for NPTI,
1.0 × ``method.coefficient`` for ActAdd, no intensity word for prompting).

How each method composes a profile (documented in the README, tested in
``tests/test_profiles.py``):

- ``neuron``: the union of every trait's edits (:func:`pkt.neurons.induce.edit_tables`);
  a neuron that one trait raises and another clamps follows ``conflict``; additions on a
  neuron that two traits raise add up, capped by the larger ``p95 * strength``.
- ``actadd``: the sum of the per-trait vectors, each times its sign and strength.
- ``dpn``: the sum of the per-trait additions at the down projections' input (each
  trait's neurons, sign, weights and strength).
- ``prompt`` (simple and P²): every trait's adjective, or persona sentence, in one prompt.
- ``lora``: not supported (one adapter per profile is not trained); refused up front.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from pkt.errors import PktError

TRAIT_NAMES = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
ASPECTS = ("high", "low")
CONFLICTS = ("target_wins", "clamp_wins", "drop")
STRENGTH_MAX = 10.0


@dataclass(frozen=True)
class TraitEdit:
    """One trait of a profile: its lower-case name, the aspect, an optional strength."""

    trait: str
    aspect: str
    strength: float | None = None

    @property
    def label(self) -> str:
        s = "" if self.strength is None else f":{self.strength:g}"
        return f"{self.trait}:{self.aspect}{s}"


@dataclass(frozen=True)
class Profile:
    traits: tuple[TraitEdit, ...]
    name: str | None = None
    conflict: str = "target_wins"
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.conflict not in CONFLICTS:
            raise PktError(f"unknown profile.conflict '{self.conflict}' (choose from: "
                           f"{', '.join(CONFLICTS)})")
        seen = set()
        for t in self.traits:
            if t.trait in seen:
                raise PktError(f"profile: trait '{t.trait}' is listed twice")
            seen.add(t.trait)

    # -- construction --------------------------------------------------------------
    @classmethod
    def single(cls, trait: str, aspect: str, strength: float | None = None) -> Profile:
        return cls((make_edit(trait, aspect, strength, "profile"),))

    @classmethod
    def from_config(cls, node, where: str = "profile") -> Profile:
        """From a ``profile`` config node (dict or OmegaConf): ``traits`` as a mapping
        ``name -> {aspect, strength}`` or a list of ``{trait, aspect, strength}``."""
        node = _plain(node) or {}
        if not isinstance(node, dict):
            raise PktError(f"{where} must be a mapping with 'traits', got {type(node).__name__}")
        unknown = set(node) - {"name", "traits", "conflict", "description"}
        if unknown:
            raise PktError(f"unknown key {where}.{sorted(unknown)[0]} (profile keys: name, "
                           f"traits, conflict, description)")
        traits = node.get("traits") or {}
        edits = []
        if isinstance(traits, dict):
            for name, spec in traits.items():
                spec = {} if spec is None else spec
                if isinstance(spec, str):  # traits: {extraversion: high}
                    spec = {"aspect": spec}
                if not isinstance(spec, dict):
                    raise PktError(f"{where}.traits.{name} must be a mapping with aspect and "
                                   f"strength, got {spec!r}")
                _only(spec, ("aspect", "strength"), f"{where}.traits.{name}")
                edits.append(make_edit(name, spec.get("aspect"), spec.get("strength"),
                                       f"{where}.traits.{name}"))
        elif isinstance(traits, list):
            for i, spec in enumerate(traits):
                if not isinstance(spec, dict):
                    raise PktError(f"{where}.traits[{i}] must be a mapping with trait, aspect "
                                   f"and strength, got {spec!r}")
                _only(spec, ("trait", "aspect", "strength"), f"{where}.traits[{i}]")
                edits.append(make_edit(spec.get("trait"), spec.get("aspect"),
                                       spec.get("strength"), f"{where}.traits[{i}]"))
        else:
            raise PktError(f"{where}.traits must be a mapping (trait -> aspect, strength), "
                           f"got {traits!r}")
        conflict = node.get("conflict") or "target_wins"
        return cls(tuple(edits), node.get("name"), str(conflict))

    @classmethod
    def parse(cls, spec: str, conflict: str = "target_wins") -> Profile:
        """The shorthand ``extraversion:high:1.2+neuroticism:low`` (strength optional)."""
        if not isinstance(spec, str) or not spec.strip():
            raise PktError("empty personality (write e.g. extraversion:high:1.2+neuroticism:low)")
        edits = []
        for part in spec.split("+"):
            bits = [b.strip() for b in part.strip().split(":")]
            if len(bits) not in (2, 3) or not all(bits):
                raise PktError(f"bad personality term '{part}' (write trait:aspect or "
                               f"trait:aspect:strength, e.g. extraversion:high:1.2)")
            strength = bits[2] if len(bits) == 3 else None
            if strength is not None:
                try:
                    strength = float(strength)
                except ValueError:
                    raise PktError(f"bad strength '{bits[2]}' in '{part}' (a number >= 0)") from None
            edits.append(make_edit(bits[0], bits[1], strength, f"personality term '{part}'"))
        return cls(tuple(edits), conflict=conflict)

    # -- use ---------------------------------------------------------------------
    def __bool__(self) -> bool:
        return bool(self.traits)

    def __len__(self) -> int:
        return len(self.traits)

    def __iter__(self):
        return iter(self.traits)

    @property
    def label(self) -> str:
        return self.name or "+".join(t.label for t in self.traits)

    def aspect_of(self, trait: str) -> str | None:
        for t in self.traits:
            if t.trait == trait:
                return t.aspect
        return None

    def to_dict(self) -> dict:
        return {"name": self.name, "conflict": self.conflict,
                "traits": {t.trait: {"aspect": t.aspect, "strength": t.strength}
                           for t in self.traits}}


def _plain(node):
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(node, (DictConfig, ListConfig)):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return node


def _only(spec: dict, keys: tuple, where: str) -> None:
    extra = sorted(set(spec) - set(keys))
    if extra:
        raise PktError(f"unknown key {where}.{extra[0]} (allowed: {', '.join(keys)})")


def trait_name(name) -> str:
    n = str(name or "").strip().lower()
    if n not in TRAIT_NAMES:
        raise PktError(f"unknown trait '{name}' (choose from: {', '.join(TRAIT_NAMES)})")
    return n


def make_edit(trait, aspect, strength, where: str) -> TraitEdit:
    name = trait_name(trait)
    if aspect not in ASPECTS:
        raise PktError(f"{where}: unknown aspect '{aspect}' for {name} (choose from: high, low)")
    if strength is not None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)):
            raise PktError(f"{where}: strength must be a number >= 0, got {strength!r}")
        strength = float(strength)
        if not math.isfinite(strength) or strength < 0:
            raise PktError(f"{where}: strength must be a finite number >= 0, got {strength}")
        if strength > STRENGTH_MAX:
            raise PktError(f"{where}: strength {strength:g} is above {STRENGTH_MAX:g} (the "
                           f"edit would swamp the model)")
    return TraitEdit(name, aspect, strength)


def from_run_config(cfg) -> Profile:
    """The profile a run induces: ``profile.traits`` if any, else ``trait`` + ``aspect``."""
    node = cfg.get("profile") if hasattr(cfg, "get") else None
    prof = Profile.from_config(node) if node is not None else Profile(())
    if prof:
        return prof
    return Profile.single(cfg.trait.name, cfg.aspect)


def is_profile_run(cfg) -> bool:
    node = cfg.get("profile") if hasattr(cfg, "get") else None
    return bool(node is not None and (_plain(node) or {}).get("traits"))


INTENSITY = ((0.5, "slightly"), (0.999, "somewhat"), (1.5, None), (math.inf, "very"))


def intensity_word(strength: float | None) -> str | None:
    """How prompting renders a strength: <=0.5 slightly, <1 somewhat, 1-1.5 none, >1.5 very."""
    if strength is None:
        return None
    for bound, word in INTENSITY:
        if strength <= bound:
            return word
    return None  # pragma: no cover


def adjective(word: str, strength: float | None) -> str:
    """A trait adjective with the intensity word of its strength ("very extraverted")."""
    how = intensity_word(strength)
    return f"{how} {word}" if how else word


def adjective_phrase(words: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``: the adjectives of a prompted profile."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
