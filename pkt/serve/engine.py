"""One request's decoding: prefill, then one token per step on the KV cache, text streamed.

The loop mirrors :func:`pkt.generation.decode_batch` for a batch of one row (the same
forward calls, attention mask, position ids and repetition penalty), so a greedy answer
here is token for token the answer ``pkt.generation.generate`` gives for the same prompt.
On top of it: temperature and nucleus (top-p) sampling from a seeded ``torch.Generator``,
stop strings, ``ignore_eos`` (EOS is never picked: a fixed length, for benchmarks), and a
``cancel`` event checked before every step (a client that went away stops the decoding).

Text is produced by decoding all generated ids at every step and handing out what is new;
text that might be the start of a stop string, or an unfinished UTF-8 sequence, is held
back until the next token settles it. The concatenated deltas are exactly the final text.
"""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from pkt.generation import _eos_ids, _repetition_penalty

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


class Decoder:
    """Decodes one prompt at a time on ``lm`` (a :class:`pkt.models.LoadedModel`).

    Not thread-safe: the server runs it behind its generation lock.
    """

    def __init__(self, lm):
        self.lm = lm
        self.model, self.tokenizer = lm.model, lm.tokenizer
        self.eos = _eos_ids(self.model, self.tokenizer)
        self.device = next(self.model.parameters()).device
        cfg = self.model.config
        self.context_length = int(getattr(cfg, "max_position_embeddings", 0) or 0) or None

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Chat messages through the model's chat template, tokenised like pkt.generation."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode([t for t in ids if t not in self.eos],
                                     skip_special_tokens=True)

    @torch.no_grad()
    def stream(self, ids: list[int], s: Sampling, out: Completion | None = None,
               cancel: threading.Event | None = None) -> Iterator[str]:
        """Text deltas of the answer to prompt ``ids``; ``out`` receives the token ids,
        the full text, the finish reason (``stop``, ``length`` or ``cancelled``) and the
        number of decode steps."""
        from transformers import DynamicCache

        out = out if out is not None else Completion()
        out.prompt_tokens = len(ids)
        model, dev = self.model, self.device
        gen = None
        if s.temperature > 0:
            gen = torch.Generator(device=dev)
            gen.manual_seed(int(s.seed if s.seed is not None else secrets.randbits(63))
                            % (2**63))
        cache = DynamicCache(config=model.config)
        mask = torch.ones(1, len(ids), dtype=torch.long, device=dev)
        pos = torch.arange(len(ids), device=dev).unsqueeze(0)
        if cancel is not None and cancel.is_set():
            out.finish_reason = "cancelled"
            return
        logits = model(input_ids=torch.tensor([ids], dtype=torch.long, device=dev),
                       attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
        pos = pos[:, -1:]
        vocab = logits.shape[-1]
        seen = torch.zeros(1, vocab, dtype=torch.bool, device=dev)
        seen[0, torch.tensor([t for t in ids if t < vocab], dtype=torch.long, device=dev)] = True
        eos_t = torch.tensor(sorted(e for e in self.eos if e < vocab), dtype=torch.long,
                             device=dev)
        sent = 0  # characters of the text handed out so far
        for step in range(s.max_tokens):
            scores = _repetition_penalty(logits.float(), seen, s.repetition_penalty)
            if s.ignore_eos and eos_t.numel():
                scores[:, eos_t] = -math.inf
            nxt = sample_next(scores, s, gen)
            t = int(nxt)
            out.token_ids.append(t)
            text = self._text(out.token_ids)
            cut = stop_cut(text, s.stop) if s.stop else None
            if cut is not None:
                out.text, out.finish_reason = text[:cut], "stop"
                if cut > sent:
                    yield text[sent:cut]
                return
            ready = len(text) - held_back(text, s.stop)
            if ready > sent:
                yield text[sent:ready]
                sent = ready
            out.text = text
            if t in self.eos:
                out.finish_reason = "stop"
                break
            if step == s.max_tokens - 1:
                out.finish_reason = "length"
                break
            if cancel is not None and cancel.is_set():
                out.finish_reason = "cancelled"
                break
            seen[0, t] = True
            mask = torch.cat([mask, mask.new_ones(1, 1)], 1)
            pos = pos + 1
            out.steps += 1
            logits = model(input_ids=nxt.view(1, 1), attention_mask=mask, position_ids=pos,
                           cache=cache, use_cache=True).logits[:, -1]
        if out.finish_reason is None:  # max_tokens == 0 is refused earlier; kept for safety
            out.finish_reason = "length"
        if len(out.text) > sent:
            yield out.text[sent:]
