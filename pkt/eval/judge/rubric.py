"""The judge's rubrics (trait expression and fluency, 1-5) and the parser of its ratings.

Both judges send the same user message (:func:`build_rubric`); the HTTP judge's reply is
read with :func:`parse_rating`. The annotation packet reuses the rubric texts for people.
"""

from __future__ import annotations

import math
import re

from pkt.errors import PktError

RUBRICS = ("trait", "fluency")
# bump when a rubric's wording changes: it is part of every cache key
RUBRIC_VERSION = 1
RATING_MIN, RATING_MAX = 1, 5

_TRAIT_RUBRIC = """\
You are an impartial judge of personality in writing. Below is a question and a response \
to it. Decide how strongly the response expresses the Big Five personality trait \
{trait_title}.

{facet_line}
Score the personality that comes through in the response (its attitudes, preferences, \
feelings and way of engaging), not whether the response is helpful, correct, polite or \
well written, and do not let its length sway you.

1 = {trait_title} is absent: the response shows the opposite of the trait
2 = weak: the response leans away from the trait or shows it only faintly
3 = mixed or neutral: the trait is neither clearly present nor clearly absent
4 = clear: the response shows the trait in several places
5 = very strong: the trait runs through the whole response

First write a short explanation of no more than 30 words. Then, on a final line of its \
own, give your score in exactly this format: Rating: [[r]], where r is a whole number \
from 1 to 5.

### Question
{question}

### Response
{response}
"""

_FLUENCY_RUBRIC = """\
You are an impartial judge of writing. Below is a question and a response to it. Decide \
how fluently the response conveys the speaker's thoughts and feelings: whether it reads \
smoothly and naturally, hangs together from start to finish, and puts its ideas and \
emotions across clearly.

Casual or informal wording is fine and must not lower the score, and the length of the \
response must not affect it either way.

1 = hard to follow: broken, repetitive or incoherent
2 = awkward: frequent stumbles or disjointed ideas
3 = understandable but uneven or stilted in places
4 = smooth and natural, with small lapses at most
5 = effortless and natural throughout; thoughts and feelings come across clearly

First write a short explanation of no more than 30 words. Then, on a final line of its \
own, give your score in exactly this format: Rating: [[r]], where r is a whole number \
from 1 to 5.

### Question
{question}

### Response
{response}
"""


def check_rubric(rubric: str) -> None:
    if rubric not in RUBRICS:
        raise PktError(f"unknown judge rubric '{rubric}' (choose from: {', '.join(RUBRICS)})")


def build_rubric(rubric: str, question: str, response: str, trait: str | None = None,
                 facets: list[str] | None = None) -> str:
    """The judge's user message for one (question, response) pair."""
    check_rubric(rubric)
    question, response = str(question).strip(), str(response).strip()
    if rubric == "fluency":
        return _FLUENCY_RUBRIC.format(question=question, response=response)
    if not trait or not str(trait).strip():
        raise PktError("the 'trait' judge rubric needs a trait name")
    name = str(trait).strip()
    title = name[:1].upper() + name[1:]
    facets = [str(f).strip() for f in (facets or []) if str(f).strip()]
    if facets:
        facet_line = (f"{title} has six facets in the Big Five model: {', '.join(facets)}. "
                      f"A response can show the trait through any of them.\n")
    else:
        facet_line = ""
    return _TRAIT_RUBRIC.format(trait_title=title, facet_line=facet_line, question=question,
                                response=response)


# ---------------------------------------------------------------------------------------
# rating parser

_NUM = r"(\d+(?:\.\d+)?)(?![.,]?\d)"
_RATING_RE = re.compile(
    # [[r]], optionally preceded by "Rating:" (one marker), or "Rating: r" / "**Rating:** r"
    rf"(?:rating\s*\**\s*[:=]?\s*\**\s*)?\[\[\s*{_NUM}\s*\]\]"
    rf"|rating\s*\**\s*[:=]\s*\**\s*{_NUM}",
    re.IGNORECASE,
)


def parse_rating(text) -> float | None:
    """The value of the last rating marker in ``text`` if it lies in 1..5, else None.

    Accepts ``Rating: [[4]]``, ``[[4]]``, ``Rating: 4``, ``[[4.5]]``, ``Rating: [[ 3 ]]`` in any
    case. A value out of range is None (never clipped), and so is text without a marker.
    """
    if not isinstance(text, str):
        return None
    last = None
    for m in _RATING_RE.finditer(text):
        last = m
    if last is None:
        return None
    value = float(last.group(1) if last.group(1) is not None else last.group(2))
    if not math.isfinite(value) or not RATING_MIN <= value <= RATING_MAX:
        return None
    return value
