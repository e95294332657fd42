"""The demo task: two-digit addition answered on a last line ``Answer: <n>``.

The agent is written with the plain ``openai`` client, exactly as it would be without tracerl; the only
tracerl-specific things are that its ``base_url`` comes from the ``llm`` handle and that it passes on the
handle's sampling defaults (``**llm.sampling``: temperature 1 while training, 0 for held-out evaluation).
The prompt is one-shot: a system message stating the answer format and one worked example exchange, then
the question. Reward:

    r = 0.1 · [last non-empty line is "Answer: <integer>"] + 0.9 · [that integer is the right sum]

so a reward tells both parts apart (0: no answer line, 0.1: answered wrongly, 1: right).

Why this task, prompt and reward (measured with SmolLM2-135M-Instruct, greedy, 48 held-out questions):
- The example is its own user/assistant exchange. With it inline in one user message the base model
  followed the format in 14/48 replies, and GRPO found a shortcut within 20 steps: it answered the example's
  number to every question (format reward kept, correct answers 8/48 → 0/48). As separate turns the base
  model already writes the answer line (47/48 on this task).
- Addition only: on 2-digit addition *and* subtraction the base model is right 9/48 greedy and at least once
  in 8 samples on a third of the questions, so most groups carry no signal; on addition it is right 16/48
  greedy and at least once in 8 samples on 62% of the questions — learnable, not yet learned.
- Format is worth only 0.1: the model already has it, so the reward is about being right (the earlier
  0.5 + 0.5 reward would start this task at ≈0.67 = 0.5·47/48 + 0.5·16/48, leaving little room to show
  learning).

Tasks come from the ``basic_arithmetic`` generator of ``reasoning-gym`` (two terms, mostly of two digits, ``+``,
no parentheses or negated terms), generated offline from a fixed seed. The train and held-out splits are
disjoint by expression: the held-out questions are never trained on.
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

FORMAT_REWARD = 0.1  # for a last line "Answer: <integer>"; the rest of 1.0 for the right number
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
        operators=("+",),
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
    """``FORMAT_REWARD`` (0.1) for a last line ``Answer: <integer>``, 1.0 if the integer also equals ``answer``."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return 0.0
    match = _ANSWER_LINE.match(lines[-1])
    if match is None:
        return 0.0
    return 1.0 if int(match.group(1)) == int(answer) else FORMAT_REWARD


def breakdown(rewards: list[float]) -> tuple[int, int]:
    """(replies with the answer line, right answers) among the rewards :func:`score` gave."""
    return sum(r >= FORMAT_REWARD - 1e-9 for r in rewards), sum(r >= 1.0 - 1e-9 for r in rewards)


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
