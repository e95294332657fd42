"""``TrainerConfig.async_updates``: each update runs while the next step's rollouts are sampled with the
previous weights, so every batch after the first is exactly one update stale (and kept, reweighted by the
recorded sampling log-probs); the run takes the same number of steps and ends with every update served."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import tracerl
from tracerl.tasks import toy

pytestmark = pytest.mark.timeout(180)

AGENT = """
from openai import OpenAI


def varied(task, llm):
    \"\"\"Reward: distinct characters of the reply / 20 (graded, so every group has reward variance).\"\"\"
    client = OpenAI(base_url=llm.base_url, api_key=llm.api_key)
    reply = client.chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": task["question"]}], **llm.sampling
    )
    return len(set(reply.choices[0].message.content or "")) / 20
"""


def test_async_updates_train_on_one_update_stale_batches(
    tiny_model_dir: Path, tmp_path: Path, agent_module: Callable[[str, str], Path]
) -> None:
    agent_module("async_agent", AGENT)
    result = tracerl.Trainer(
        agent="async_agent:varied",
        algorithm=tracerl.GRPO(str(tiny_model_dir), group_size=4, lr=1e-3, advantage="batch"),
        runners=2, run_dir=str(tmp_path / "run"), batch_size=2, max_steps=3, val_every=0, max_tokens=6,
        progress=False, async_updates=True, temperature=1.0,
    ).fit(toy.make_tasks("train", 8))  # fmt: skip
    train = result.history
    assert [r["step"] for r in train] == [1, 2, 3] and result.steps == 3
    assert [r["weights_version"] for r in train] == [1, 2, 3]
    assert train[0]["staleness_max"] == 0  # sampled by W0, trained at version 0
    for r in train[1:]:  # B2 sampled by W0 while U1 ran, trained at version 1; B3 by W1, trained at 2
        assert r["staleness_mean"] == r["staleness_max"] == 1
        assert r["dropped"] == 0 and r["transitions"] > 0
    assert all(r["update_wait_s"] >= 0 for r in train)
