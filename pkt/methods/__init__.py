"""Methods: each builds prompts and/or an intervention, and answers test questions.

A method is created from its config group (``_target_`` + ``instantiate``) with the run's
:class:`RunContext`. ``prepare()`` does the expensive, cached work (identify neurons, train
an adapter); ``intervention()`` is a context manager that makes the model "the model under
this method" (used for generation and for capability probes); ``respond()`` answers.

A profile (several traits at once, :mod:`pkt.profiles`) is one method object per trait,
each prepared as in a single-trait run (so identification, vectors and caches are shared),
composed by :class:`ProfileMethod` with the rules of the method's class
(``profile_prompt`` / ``profile_intervention``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pkt import prompts
from pkt.dataset import Bench
from pkt.generation import GenConfig, Generation, GenStats, chat_prompt, generate
from pkt.models import LoadedModel


@dataclass
class RunContext:
    lm: LoadedModel
    bench: Bench
    trait: Any  # the trait config node (name, title, facets, adjectives)
    aspect: str
    seed: int
    gen: GenConfig
    run_dir: Path
    cache_dir: Path
    tracker: Any = None
    progress: bool = True
    gen_stats: GenStats = field(default_factory=GenStats)


@dataclass
class Prepared:
    """What ``Method.prepare()`` returns: its figures (into metrics.json) and the artifacts
    it used (artifact kind -> key hash, into run_info.json)."""

    metrics: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)


class Method:
    # False: the method cannot compose a profile (the runner refuses with this reason)
    profile_support: bool | str = True

    def __init__(self, ctx: RunContext, name: str, **params):
        self.ctx, self.name, self.params = ctx, name, dict(params)
        self.profile_strength: float | None = None
        self.prepared = Prepared()

    @property
    def label(self) -> str:
        """Row label in reports (e.g. prompt_simple)."""
        return self.name

    def describe(self) -> dict:
        """The method's parameters, written beside every generation."""
        return {"method": self.name, **self.params}

    def prepare(self) -> Prepared:
        """The expensive, cached work; returns the method's figures and artifact keys."""
        return self.prepared

    def user_prompt(self, question: str, i: int) -> str:
        return prompts.neutral(question)

    def intervention(self, scope=None) -> contextlib.AbstractContextManager:
        """The model under this method, while the context is open.

        ``scope``: for teacher-forced scoring (capability probes), a marked
        :class:`pkt.hooks.Scope` whose mask the caller sets before each forward pass to the
        positions that stand for generated tokens; ``None`` means ordinary generation.
        """
        return contextlib.nullcontext()

    def respond(self, questions: list[str]) -> list[Generation]:
        tok = self.ctx.lm.tokenizer
        texts = [chat_prompt(tok, self.user_prompt(q, i)) for i, q in enumerate(questions)]
        with self.intervention():
            return generate(self.ctx.lm.model, tok, texts, self.ctx.gen,
                            desc=f"{self.label}:{self.ctx.aspect or 'profile'}", progress=self.ctx.progress,
                            stats=self.ctx.gen_stats)

    def use_profile_strength(self, strength: float | None) -> None:
        """A profile's per-trait strength, set before ``prepare()`` (None: the method's own)."""
        self.profile_strength = strength

    # -- composition of a profile: one prepared method per trait ------------------------
    @classmethod
    def profile_prompt(cls, parts: list[Method], question: str, i: int) -> str:
        return prompts.neutral(question)

    @classmethod
    def profile_intervention(cls, parts: list[Method], profile,
                             scope=None) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @classmethod
    def profile_finish(cls, parts: list[Method], profile) -> dict:
        """After every part is prepared: adjust the composition (NPTI's strength=auto scales
        the traits' strengths to keep the union within the capability bounds)."""
        return {}

    @classmethod
    def profile_info(cls, parts: list[Method], profile) -> dict:
        """Figures about the composition (e.g. NPTI's conflicting neurons) for metrics.json."""
        return {}


class ProfileMethod(Method):
    """A profile's method: one prepared method per trait, composed by their class's rules."""

    def __init__(self, ctx: RunContext, parts: list[Method], profile):
        kinds = {type(m) for m in parts}
        if len(kinds) != 1:
            raise ValueError("a profile composes methods of one class")
        first = parts[0]
        super().__init__(ctx, first.name, **{k: v for k, v in first.params.items()
                                             if k != "strength"},
                         profile=profile.to_dict())
        self.kind, self.parts, self.profile = type(first), parts, profile
        self._label = first.label

    @property
    def label(self) -> str:
        return self._label

    def prepare(self) -> Prepared:
        done = {m.ctx.bench.trait.lower(): m.prepare() for m in self.parts}
        finish = self.kind.profile_finish(self.parts, self.profile)
        if finish:
            self.prepared.metrics["profile_strength_auto"] = finish
        self.params["strengths"] = {m.ctx.bench.trait.lower(): getattr(m, "strength", None)
                                    for m in self.parts}
        self.prepared.metrics["profile_composition"] = self.kind.profile_info(self.parts, self.profile)
        self.prepared.metrics["parts"] = {t: p.metrics for t, p in done.items()}
        self.prepared.artifacts.update({f"{t}.{k}": v for t, p in done.items()
                                        for k, v in p.artifacts.items()})
        return self.prepared

    def user_prompt(self, question: str, i: int) -> str:
        return self.kind.profile_prompt(self.parts, question, i)

    def intervention(self, scope=None):
        return self.kind.profile_intervention(self.parts, self.profile, scope)
