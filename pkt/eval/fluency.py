"""Fluency and degeneration figures that need no judge."""

from __future__ import annotations

import math
import re

from pkt import prompts
from pkt.eval.likelihood import continuation_logprobs
from pkt.generation import chat_prompt


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def distinct_n(text: str, n: int = 2) -> float | None:
    """Unique word n-grams / all word n-grams (None for texts shorter than n words)."""
    w = words(text)
    grams = list(zip(*(w[i:] for i in range(n))))
    return len(set(grams)) / len(grams) if grams else None


def repetition(text: str, n: int = 3) -> float | None:
    """Share of word n-grams that repeat an earlier n-gram of the same text."""
    w = words(text)
    grams = list(zip(*(w[i:] for i in range(n))))
    if not grams:
        return None
    seen, rep = set(), 0
    for g in grams:
        rep += g in seen
        seen.add(g)
    return rep / len(grams)


def response_perplexity(lm, questions: list[str], response_ids: list[list[int]],
                        batch_size: int = 16, progress: bool = False) -> list[float | None]:
    """The (un-intervened) model's perplexity of each response given its neutral prompt
    (``progress``: a bar over the responses)."""
    from pkt.bars import item_bar

    tok = lm.tokenizer
    seqs = [(tok(chat_prompt(tok, prompts.neutral(q)), add_special_tokens=False)["input_ids"], r)
            for q, r in zip(questions, response_ids)]
    with item_bar(len(seqs), "fluency (perplexity)", progress, unit="q") as bar:
        lp = continuation_logprobs(lm.model, seqs, tok.pad_token_id, batch_size,
                                   on_batch=bar.update)
    return [math.exp(-s / n) if n else None for s, n in lp]
