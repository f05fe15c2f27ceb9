from pkt import PktError, prompts
from pkt.methods import Method, RunContext

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
