"""Methods: each is one class that turns a setting into a reusable intervention.

A method is built from plain arguments, a :class:`Setting` (a loaded model, the trait, its
aspect, a data source, a seed, generation settings, the cache folder) and its own keyword
parameters, and found by name in :mod:`pkt.methods.registry`. The three front doors (the
runner, the Python API, the server) only translate their input into those arguments, so
one personality is one object whichever door built it:

* ``prepare(out=None)`` does the expensive, cached work (identify neurons, compute a
  vector, train an adapter, choose a strength) through the artifact store on disk;
  ``out`` (a run folder and a tracker) receives plots and logs when a run asks for them;
* ``rewrite(question, i)`` is the user turn the method asks for question ``i``;
* ``intervention(scope)`` is a context manager that makes the model "the model under this
  method" (hooks or an adapter), for generation or for teacher-forced scoring;
* ``respond(questions)`` answers with both;
* ``describe()`` and ``prepared`` are its settings, figures and artifact keys.

A profile (several traits at once, :mod:`pkt.profiles`) is one method object per trait,
each prepared as in a single-trait run, composed by :class:`ProfileMethod` with the rules
of the method's class (``profile_prompt`` / ``profile_intervention``).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pkt import prompts
from pkt.generation import GenConfig, Generation, GenStats, chat_prompt, generate
from pkt.params import AT_LEAST_1, Rule, check_params


@dataclass
class Setting:
    """What a method is prepared for; plain objects, no config system.

    ``compute=False``: use cached artifacts only (a method that would have to identify a
    trait raises :class:`pkt.neurons.identify.NotIdentified` instead)."""

    lm: Any  # pkt.models.LoadedModel
    bench: Any  # pkt.dataset.Bench: the trait's search and test questions and personas
    trait: Any = None  # pkt.traits.Trait (name, title, facets, adjectives); None: no trait
    aspect: str | None = None
    seed: int = 0
    gen: GenConfig = field(default_factory=GenConfig)
    cache_dir: Path = Path(".cache")
    progress: bool = False
    compute: bool = True
    gen_stats: GenStats = field(default_factory=GenStats)


@dataclass
class Outputs:
    """Where a run wants a method's plots, exported sets and training logs."""

    run_dir: Path
    tracker: Any = None


@dataclass
class Prepared:
    """What ``Method.prepare()`` returns: its figures (into metrics.json) and the artifacts
    it used (artifact kind -> key hash, into run_info.json)."""

    metrics: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)
    # True when this prepare() computed an expensive part (not all from the cache)
    fresh: bool = False


class Method:
    # False or a reason: the method cannot compose a profile
    profile_support: bool | str = True
    # False: the method leaves the model as it is (base), so it cannot carry a personality
    expresses_traits: bool = True
    # what parameters accept beyond their annotations (pkt.params; subclasses extend it)
    RULES: dict = {"name": Rule(nonempty=True), "batch_size": AT_LEAST_1}

    def __init_subclass__(cls, **kw):
        """A method's keyword parameters are checked against its signature and ``RULES``
        (pkt.params) before its constructor runs: the declarations the runner's
        pre-flight reads are the ones construction reads, whoever builds the method."""
        super().__init_subclass__(**kw)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_checked", False):
            return

        @functools.wraps(init)
        def checked(self, ctx, *args, **kwargs):
            if type(self) is cls and not args:
                check_params(cls, kwargs, "method", kwargs.get("name") or cls.__name__,
                             runtime=("ctx",))
            init(self, ctx, *args, **kwargs)

        checked._checked = True
        cls.__init__ = checked

    def __init__(self, ctx: Setting, name: str, **params):
        self.ctx, self.name, self.params = ctx, name, dict(params)
        self.profile_strength: float | None = None
        self.prepared = Prepared()
        self.out: Outputs | None = None

    @property
    def label(self) -> str:
        """Row label in reports (e.g. prompt_simple)."""
        return self.name

    def describe(self) -> dict:
        """The method's parameters, written beside every generation."""
        return {"method": self.name, **self.params}

    def prepare(self, out: Outputs | None = None) -> Prepared:
        """The expensive, cached work; returns the method's figures and artifact keys."""
        self.out = out
        return self.prepared

    def fresh_traits(self) -> list[str]:
        """The traits whose expensive parts this personality's prepare() computed."""
        return [self.ctx.bench.trait.lower()] if self.prepared.fresh else []

    def rewrite(self, question: str, i: int = 0) -> str:
        """The user turn this method asks for question ``i``."""
        return prompts.neutral(question)

    def intervention(self, scope=None) -> contextlib.AbstractContextManager:
        """The model under this method, while the context is open.

        ``scope``: for teacher-forced scoring (capability probes), a marked
        :class:`pkt.hooks.Scope` whose mask the caller sets before each forward pass to the
        positions that stand for generated tokens; ``None`` means ordinary generation.
        """
        return contextlib.nullcontext()

    @property
    def edits_model(self) -> bool:
        """Whether :meth:`intervention` changes the model (False for the plain model and
        prompting: their capability probe is the plain model's)."""
        return type(self).intervention is not Method.intervention

    def row_edit(self):
        """The intervention as one row of a shared batch (:class:`pkt.rows.RowEdit`, None
        for none): what the server decodes with, beside other rows' personalities. A method
        whose intervention cannot share a batch (an adapter) says so."""
        if self.edits_model:
            from pkt.errors import PktError

            raise PktError(f"method '{self.name}' cannot share a decoding batch with other "
                           f"personalities")
        return None

    def respond(self, questions: list[str], gen: GenConfig | None = None) -> list[Generation]:
        tok = self.ctx.lm.tokenizer
        texts = [chat_prompt(tok, self.rewrite(q, i)) for i, q in enumerate(questions)]
        with self.intervention():
            return generate(self.ctx.lm.model, tok, texts, gen or self.ctx.gen,
                            desc=f"{self.label}:{self.ctx.aspect or 'profile'}",
                            progress=self.ctx.progress, stats=self.ctx.gen_stats)

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
    def profile_row_edit(cls, parts: list[Method], profile):
        """A profile's :meth:`row_edit` (the same composition as ``profile_intervention``)."""
        return parts[0].row_edit()

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

    def __init__(self, ctx: Setting, parts: list[Method], profile):
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

    def prepare(self, out: Outputs | None = None) -> Prepared:
        self.out = out
        done = {}
        for m in self.parts:
            t = m.ctx.bench.trait.lower()
            part_out = None
            if out is not None:
                part_out = Outputs(Path(out.run_dir) / "parts" / t, out.tracker)
                part_out.run_dir.mkdir(parents=True, exist_ok=True)
            done[t] = m.prepare(part_out)
        finish = self.kind.profile_finish(self.parts, self.profile)
        if finish:
            self.prepared.metrics["profile_strength_auto"] = finish
        self.params["strengths"] = {m.ctx.bench.trait.lower(): getattr(m, "strength", None)
                                    for m in self.parts}
        self.prepared.metrics["profile_composition"] = self.kind.profile_info(self.parts, self.profile)
        self.prepared.metrics["parts"] = {t: p.metrics for t, p in done.items()}
        self.prepared.artifacts.update({f"{t}.{k}": v for t, p in done.items()
                                        for k, v in p.artifacts.items()})
        self.prepared.fresh = any(p.fresh for p in done.values())
        return self.prepared

    def fresh_traits(self) -> list[str]:
        return [m.ctx.bench.trait.lower() for m in self.parts if m.prepared.fresh]

    def rewrite(self, question: str, i: int = 0) -> str:
        return self.kind.profile_prompt(self.parts, question, i)

    def intervention(self, scope=None):
        return self.kind.profile_intervention(self.parts, self.profile, scope)

    def row_edit(self):
        return self.kind.profile_row_edit(self.parts, self.profile)
