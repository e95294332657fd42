"""A toy task a tiny random model learns in a minute: reply with digits only.

Used by the CI learning-loop test and by ``tracerl demo --quick``. The agent (plain ``openai`` client) asks
for a number; the reward is the fraction of the reply's non-space characters that are digits:

    r = #digits(reply) / max(1, #non-space characters(reply))

A randomly initialised model spreads its probability over ~1,000 tokens of which 10 are digits, so its
reward starts near 0 (≈ 0.01) but is graded: most groups of 8 samples contain a digit somewhere, which is
enough signal for GRPO to push the policy towards all-digit replies (reward → 1) in a few dozen steps.
"""

from __future__ import annotations

from typing import Any

from openai import OpenAI

import tracerl
from tracerl.errors import ConfigError

_SUBJECTS = ("apples", "birds", "cities", "days", "songs", "stars", "tables", "users", "years", "words")


def make_tasks(split: str, n: int) -> list[dict[str, Any]]:
    """``n`` prompts asking for a number; ``train`` and ``val`` use different phrasings (disjoint)."""
    if split not in ("train", "val"):
        raise ConfigError(f"unknown split {split!r} of demo-toy; use 'train' or 'val'")
    template = "How many {} are there? Reply with a number." if split == "train" else "Give a count of {}."
    return [{"question": template.format(_SUBJECTS[i % len(_SUBJECTS)]), "id": f"{split}-{i}"} for i in range(n)]


def digit_fraction(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isdigit() for c in chars) / max(1, len(chars))


@tracerl.agent
def digits_agent(task: dict[str, Any], llm: tracerl.LLM) -> float:
    """Ask for a number and score how much of the reply is digits (the user's code: plain ``openai``)."""
    client = OpenAI(base_url=llm.base_url, api_key=llm.api_key)
    reply = client.chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": task["question"]}], **llm.sampling
    )
    return digit_fraction(reply.choices[0].message.content or "")
