"""The RAG example's reward: answer F1 against the gold answers, after SQuAD-style normalisation.

The agent's final reply may be a sentence; its answer is the text after the last ``Answer:`` marker when
there is one (the instructions ask for it), else the whole reply. Both the answer and each gold answer are
normalised the way the SQuAD evaluation script does it:

    normalise(s) = collapse whitespace( drop articles "a" "an" "the" ( drop punctuation( lower(s) ) ) )

then, with P the predicted tokens and G the gold tokens (multisets, split on whitespace):

    EM(P, G) = [P = G]
    F1(P, G) = 2 · |P ∩ G| / (|P| + |G|)        (0 when P ∩ G is empty)

and against several gold answers (aliases) the best one counts: ``reward = max_g F1(P, G_g)``. An empty
answer scores 0. F1 rather than EM is the training reward because it is graded ("Holdings" for "Quellith
Holdings" gets 0.67), which gives GRPO groups more reward variance.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ANSWER_MARKER = re.compile(r"answer\s*:", re.IGNORECASE)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, and collapse whitespace (as SQuAD does)."""
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def extract_answer(reply: str) -> str:
    """The text after the last ``Answer:`` marker (to the end of that line), or the whole reply."""
    markers = list(_ANSWER_MARKER.finditer(reply))
    if not markers:
        return reply.strip()
    rest = reply[markers[-1].end() :].strip()
    return rest.splitlines()[0].strip() if rest else ""


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals one of the normalised gold ``answers``, else 0.0."""
    pred = normalize_answer(prediction)
    return float(bool(pred) and any(pred == normalize_answer(a) for a in answers))


def f1(prediction: str, answers: Sequence[str]) -> float:
    """The best token-level F1 of ``prediction`` against any of ``answers`` (formula in the module docstring)."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            best = max(best, 2 * common / (len(pred) + len(gold)))
    return best


def score(reply: str, answers: Sequence[str]) -> float:
    """The reward of a final ``reply``: F1 of its extracted answer against the gold ``answers``."""
    if not answers:
        raise ValueError("a task needs at least one gold answer")
    return f1(extract_answer(reply), answers)
