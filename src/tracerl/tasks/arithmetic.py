"""The demo task: two-number addition/subtraction answered on a last line ``Answer: <n>``.

The agent is written with the plain ``openai`` client, exactly as it would be without tracerl; the only
tracerl-specific things are that its ``base_url`` comes from the ``llm`` handle and that it passes on the
handle's sampling defaults (``**llm.sampling``: temperature 1 while training, 0 for held-out evaluation).
The prompt is one-shot: a system message stating the answer format and one worked example exchange, then
the question. Reward:

    r = 0.5 · [last non-empty line is "Answer: <integer>"] + 0.5 · [that integer is the right result]

Why the example is a separate chat exchange: with the example inline in one user message (base greedy
reward 0.41), GRPO found a shortcut within 20 steps — it replied "Answer: 72" (the example's answer) to every
question, keeping the format half of the reward and dropping correct answers from 8/48 to 0/48. With the
system message and the example as its own user/assistant turns the base model already follows the format
(44/48 held-out replies), and training improves correctness (10/48 → 18/48 in one 16-minute run here).

Tasks come from the ``basic_arithmetic`` generator of ``reasoning-gym`` (two terms of at most two digits,
``+``/``-``, no parentheses or negated terms), generated offline from a fixed seed. The train and held-out
splits are disjoint by expression: the held-out questions are never trained on.
"""

from __future__ import annotations

import re
from typing import Any

from openai import OpenAI

import tracerl
from tracerl.errors import ConfigError

DATASET = "demo-arithmetic"
SPLITS = ("train", "val")
SEED = 20_251_125
_POOL_SIZE = 4_000

SYSTEM_PROMPT = (
    "You are a careful calculator. Work out the result, then write it on the last line in the form "
    "'Answer: <number>'."
)
EXAMPLE_QUESTION = "Calculate 47 + 25."
EXAMPLE_ANSWER = "47 + 25 = 72\nAnswer: 72"

_ANSWER_LINE = re.compile(r"^\s*Answer:\s*(-?\d+)\s*\.?\s*$")


def make_tasks(split: str, n: int) -> list[dict[str, Any]]:
    """The first ``n`` tasks of ``split`` (``train`` or ``val``); the same every time, on every machine.

    Each task is ``{"question": "Calculate 50 - 19.", "answer": "31"}``. Train and val never share an
    expression (the held-out split is the first 500 distinct expressions of the pool, train the rest).
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} of {DATASET}; use one of {list(SPLITS)}")
    try:
        import reasoning_gym
    except ImportError:
        raise ConfigError(
            "the demo task needs the reasoning-gym package; pip install 'tracerl[train]' (or reasoning-gym)"
        ) from None
    dataset = reasoning_gym.create_dataset(
        "basic_arithmetic",
        min_terms=2,
        max_terms=2,
        min_digits=2,
        max_digits=2,
        operators=("+", "-"),
        allow_parentheses=False,
        allow_negation=False,
        size=_POOL_SIZE,
        seed=SEED,
    )
    seen: set[str] = set()
    distinct: list[dict[str, Any]] = []
    for i in range(_POOL_SIZE):
        item = dataset[i]
        if item["question"] in seen or item["question"] == EXAMPLE_QUESTION:
            continue
        seen.add(item["question"])
        distinct.append({"question": item["question"], "answer": str(item["answer"])})
    val, train = distinct[:500], distinct[500:]
    pool = val if split == "val" else train
    if n > len(pool):
        raise ConfigError(f"{DATASET}:{split} has {len(pool)} tasks, asked for {n}")
    return pool[:n]


def score(text: str, answer: str) -> float:
    """0.5 for a last line ``Answer: <integer>``, plus 0.5 if the integer equals ``answer``."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return 0.0
    match = _ANSWER_LINE.match(lines[-1])
    if match is None:
        return 0.0
    return 0.5 + (0.5 if int(match.group(1)) == int(answer) else 0.0)


def messages_for(question: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": EXAMPLE_QUESTION},
        {"role": "assistant", "content": EXAMPLE_ANSWER},
        {"role": "user", "content": question},
    ]


@tracerl.agent
def arithmetic_agent(task: dict[str, Any], llm: tracerl.LLM) -> float:
    """Ask the model once and score its reply (this is the user's code: plain ``openai`` client)."""
    client = OpenAI(base_url=llm.base_url, api_key=llm.api_key)
    reply = client.chat.completions.create(
        model=llm.model, messages=messages_for(task["question"]), **llm.sampling  # type: ignore[arg-type]
    )
    return score(reply.choices[0].message.content or "", task["answer"])
