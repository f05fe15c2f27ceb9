"""What a completion asks for and gives back, and the per-token pieces of decoding.

:class:`Sampling` (temperature, top-p, seed, stop strings, ``max_tokens``, repetition
penalty, ``ignore_eos``: EOS is never picked, a fixed length for benchmarks) and
:class:`Completion` (token ids, text, finish reason, decode steps); :func:`sample_next`
draws a token from one row's penalised logits with that row's seeded generator;
:func:`stop_cut` and :func:`held_back` decide what text may go out. The decoding loop
itself is the batch's (:mod:`pkt.serve.batcher`).

Text is produced by decoding all generated ids at every step and handing out what is new;
text that might be the start of a stop string, or an unfinished UTF-8 sequence, is held
back until the next token settles it. The concatenated deltas are exactly the final text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

REPLACEMENT = "\ufffd"  # what a tokenizer decodes half a UTF-8 character to


@dataclass
class Sampling:
    """How one completion is decoded (``temperature == 0`` is greedy)."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.15
    ignore_eos: bool = False


@dataclass
class Completion:
    """What a finished (or stopped) decoding produced; filled in while it runs."""

    prompt_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # stop | length | cancelled
    steps: int = 0  # forward passes after the prefill

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def stop_cut(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop string starts in ``text``, or None."""
    best = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best):
            best = i
    return best


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` could still become a stop string or a
    complete character, so must not be sent yet."""
    n = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), n, -1):
            if text.endswith(s[:k]):
                n = k
                break
    if text.endswith(REPLACEMENT):
        n = max(n, len(text) - len(text.rstrip(REPLACEMENT)))
    return n


def sample_next(scores: torch.Tensor, s: Sampling, gen: torch.Generator | None) -> torch.Tensor:
    """The next token from penalised logits [1, vocab]: argmax, or a draw at temperature
    ``s.temperature`` from the smallest set of tokens whose probability reaches ``s.top_p``."""
    if s.temperature <= 0:
        return scores.argmax(-1)
    probs = torch.softmax(scores / s.temperature, dim=-1)
    if s.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the tokens ranked above each one
        sorted_p = sorted_p.masked_fill(before >= s.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)
