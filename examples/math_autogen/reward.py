"""The reward: exact numeric match between the agent's final answer and the gold answer.

    score("... so she has 18 left.\\nAnswer: 18", "18")   # 1.0
    score("Answer: 18.0", "18")                            # 1.0 (same number)
    score("Answer: 17", "18")                              # 0.0

**Answer extraction** (:func:`extract_answer`), from the agent's final reply text:

1. if the text contains ``Answer:`` (any case, optionally bold ``**Answer:**``), the first number after
   the *last* such marker is the answer;
2. otherwise the *last* number anywhere in the text is the answer (GSM8K's usual convention, so a reply
   that ends "... the total is 288." still counts);
3. no number at all: no answer (reward 0).

A number is an optional sign, digits with optional thousands commas (``1,234``), an optional decimal part,
and optionally ``/`` and a denominator (``3/4``); a leading ``$`` and a trailing ``%`` are ignored. Both
sides are read as exact rationals, so :math:`r = [\\,\\hat a = a\\,]` with no float tolerance:
``18 = 18.0 = 36/2``, ``0.1 + 0.2``-style rounding never matters, and ``18.5 ≠ 18``.
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = r"(?:[-+−]?\$?|\$[-+−]?)(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_MARKER_RE = re.compile(r"\**answer\**\s*[:：]\**", re.IGNORECASE)


def parse_number(text: str) -> Fraction | None:
    """The exact value of one number as written (``"1,234"``, ``"-3.50"``, ``"$12"``, ``"3/4"``), else None."""
    cleaned = text.strip().replace("−", "-").replace("$", "").replace(",", "").replace(" ", "").rstrip("%")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(text: str) -> Fraction | None:
    """The final answer in a reply (rules in the module docstring), or None when there is none."""
    markers = list(_MARKER_RE.finditer(text))
    if markers:
        match = _NUMBER_RE.search(text, markers[-1].end())
        return parse_number(match.group(0)) if match else None
    numbers = _NUMBER_RE.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def score(reply: str, gold: str) -> float:
    """1.0 when the reply's final answer equals ``gold`` exactly as a number, else 0.0."""
    expected = parse_number(gold)
    if expected is None:
        raise ValueError(f"gold answer {gold!r} is not a number; math tasks need a numeric 'answer'")
    answer = extract_answer(reply)
    return float(answer is not None and answer == expected)
