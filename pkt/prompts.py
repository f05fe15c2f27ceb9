"""Prompt texts: persona role-play (identification), neutral evaluation, and the baselines.

Worded for pkt after the paper's descriptions (npti.md); all user-turn text, rendered
through the model's own chat template by :func:`pkt.generation.chat_prompt`.
"""

from __future__ import annotations

ANSWER_RULE = (
    "Answer the question below with your authentic thoughts and feelings, "
    "in no more than 300 words."
)

NEUTRAL = (
    "Imagine you are a real person rather than a language model. " + ANSWER_RULE +
    "\n\nQuestion: {question}"
)

ROLEPLAY = (
    "Here is a description of who you are:\n{persona}\n\n"
    "Immerse yourself fully in this character: think, feel and speak as this person would, "
    "not as an AI assistant. Answer the question below in the first person, "
    "in under 300 words.\n\nQuestion: {question}"
)

SIMPLE = (
    "Imagine you are {article} {adjective} person rather than a language model. " + ANSWER_RULE +
    "\n\nQuestion: {question}"
)

P2 = (
    "{persona}\n\nImagine you are this person rather than a language model. " + ANSWER_RULE +
    "\n\nQuestion: {question}"
)


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def neutral(question: str) -> str:
    return NEUTRAL.format(question=question)


def roleplay(persona: str, question: str) -> str:
    return ROLEPLAY.format(persona=persona, question=question)


def simple(adjective: str, question: str) -> str:
    return SIMPLE.format(article=article(adjective), adjective=adjective, question=question)


def p2(persona: str, question: str) -> str:
    return P2.format(persona=persona, question=question)
