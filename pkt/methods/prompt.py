from __future__ import annotations

from pkt import prompts
from pkt.errors import PktError
from pkt.methods import Method, RunContext
from pkt.profiles import adjective, adjective_phrase

VARIANTS = ("simple", "p2")


class PromptMethod(Method):
    """Prompting baselines: ``simple`` (trait adjective) or ``p2`` (persona description)."""

    def __init__(self, ctx: RunContext, name: str = "prompt", variant: str = "simple"):
        if variant not in VARIANTS:
            raise PktError(f"unknown prompt variant '{variant}' (choose from: {', '.join(VARIANTS)})")
        super().__init__(ctx, name, variant=variant)
        self.variant = variant

    @property
    def label(self) -> str:
        return f"{self.name}_{self.variant}"

    def user_prompt(self, question: str, i: int) -> str:
        if self.variant == "simple":
            return prompts.simple(self.ctx.trait.adjectives[self.ctx.aspect], question)
        persona = self.ctx.bench.persona_for(self.ctx.aspect, i, self.ctx.seed + 7919)
        return prompts.p2(persona, question)

    # a profile: every trait's adjective (with an intensity word from its strength), or
    # every trait's persona sentence, in one prompt
    def adjective(self) -> str:
        return adjective(self.ctx.trait.adjectives[self.ctx.aspect], self.profile_strength)

    @classmethod
    def profile_prompt(cls, parts: list[PromptMethod], question: str, i: int) -> str:
        if parts[0].variant == "simple":
            return prompts.simple(adjective_phrase([m.adjective() for m in parts]), question)
        personas = [m.ctx.bench.persona_for(m.ctx.aspect, i, m.ctx.seed + 7919) for m in parts]
        return prompts.p2(" ".join(personas), question)
