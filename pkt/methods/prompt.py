from __future__ import annotations

from pkt import prompts
from pkt.methods import Method, Setting
from pkt.params import Rule
from pkt.profiles import adjective, adjective_phrase

VARIANTS = ("simple", "p2")
PERSONA_SEED = 7919  # P²'s persona draw is seeded with seed + this (apart from identification's)


class PromptMethod(Method):
    """Prompting baselines: ``simple`` (trait adjective, with an intensity word when a
    profile gives a strength) or ``p2`` (a persona description of the aspect)."""

    RULES = {**Method.RULES,
             "variant": Rule(choices="pkt.methods.prompt:VARIANTS", label="prompt variant")}

    def __init__(self, ctx: Setting, name: str = "prompt", variant: str = "simple"):
        super().__init__(ctx, name, variant=variant)
        self.variant = variant

    @property
    def label(self) -> str:
        return f"{self.name}_{self.variant}"

    def adjective(self) -> str:
        return adjective(self.ctx.trait.adjectives[self.ctx.aspect], self.profile_strength)

    def persona(self, question: str) -> str:
        """P²'s rule, the one place it lives: a persona description of the aspect drawn per
        question, seeded by the run's seed and the question's text (so the runner, the API
        and the server give one question the same persona)."""
        return self.ctx.bench.persona_for(self.ctx.aspect, question, self.ctx.seed + PERSONA_SEED)

    def rewrite(self, question: str, i: int = 0) -> str:
        return self.profile_prompt([self], question, i)

    # a profile: every trait's adjective, or every trait's persona sentence, in one prompt
    @classmethod
    def profile_prompt(cls, parts: list[PromptMethod], question: str, i: int) -> str:
        if parts[0].variant == "simple":
            return prompts.simple(adjective_phrase([m.adjective() for m in parts]), question)
        return prompts.p2(" ".join(m.persona(question) for m in parts), question)
