"""Methods: each builds prompts and/or an intervention, and answers test questions.

A method is created from its config group (``_target_`` + ``instantiate``) with the run's
:class:`RunContext`. ``prepare()`` does the expensive, cached work (identify neurons, train
an adapter); ``intervention()`` is a context manager that makes the model "the model under
this method" (used for generation and for capability probes); ``respond()`` answers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pkt import prompts
from pkt.bench import Bench
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
    metrics: dict = field(default_factory=dict)  # methods add their own figures here
    artifacts: dict = field(default_factory=dict)  # artifact kind -> key hash used
    gen_stats: GenStats = field(default_factory=GenStats)


class Method:
    def __init__(self, ctx: RunContext, name: str, **params):
        self.ctx, self.name, self.params = ctx, name, dict(params)

    @property
    def label(self) -> str:
        """Row label in reports (e.g. prompt_simple)."""
        return self.name

    def describe(self) -> dict:
        """The method's parameters, written beside every generation."""
        return {"method": self.name, **self.params}

    def prepare(self) -> None:
        pass

    def user_prompt(self, question: str, i: int) -> str:
        return prompts.neutral(question)

    def intervention(self, positions: dict | None = None) -> contextlib.AbstractContextManager:
        """The model under this method, while the context is open.

        ``positions``: for teacher-forced scoring (capability probes), a dict whose
        ``'mask'`` entry the caller sets to the bool [batch, seq] positions that stand for
        generated tokens before each forward pass; ``None`` means ordinary generation.
        """
        return contextlib.nullcontext()

    def respond(self, questions: list[str]) -> list[Generation]:
        tok = self.ctx.lm.tokenizer
        texts = [chat_prompt(tok, self.user_prompt(q, i)) for i, q in enumerate(questions)]
        with self.intervention():
            return generate(self.ctx.lm.model, tok, texts, self.ctx.gen,
                            desc=f"{self.label}:{self.ctx.aspect}", progress=self.ctx.progress,
                            stats=self.ctx.gen_stats)
