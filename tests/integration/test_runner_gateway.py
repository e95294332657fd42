"""End to end: a runner runs an unchanged ``openai``-client agent whose calls go through the gateway to the
tiny random model; the calls (written by the gateway) and the rewards (written by the runner) land on the
same attempt, in the order they happened."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tracerl
from tracerl.runner import Runner
from tracerl.store.base import Store
from tracerl.types import RolloutSpec, RolloutStatus, SpanKind

pytest.importorskip("openai")
pytest.importorskip("fastapi")

AGENT = """
import openai
import tracerl


@tracerl.agent
def two_calls(task, llm):
    client = openai.OpenAI(base_url=llm.base_url, api_key=llm.api_key, max_retries=0)
    messages = [{"role": "user", "content": task["question"]}]
    first = client.chat.completions.create(model=llm.model, messages=messages, **llm.sampling)
    tracerl.emit_reward(0.25, name="after_first")
    messages.append({"role": "assistant", "content": first.choices[0].message.content})
    messages.append({"role": "user", "content": "and?"})
    second = client.chat.completions.create(model=llm.model, messages=messages, **llm.sampling)
    return float(isinstance(second.choices[0].message.content, str))
"""


@pytest.fixture
def setup(
    tmp_path: Path, agent_module: Callable[[str, str], Path], tiny_engine: Any
) -> Iterator[tuple[Store, str, str]]:
    from tracerl.gateway.app import start_gateway

    agent_module("gateway_agents", AGENT)
    url = f"sqlite:///{tmp_path}/e2e.db"
    store = tracerl.connect(url)
    gateway = start_gateway(store, tiny_engine, model_name="tiny-random")
    yield store, url, gateway.url
    gateway.stop()
    store.close()


def run(setup: tuple[Store, str, str], n: int) -> tuple[Store, list[str]]:
    store, url, gateway_url = setup
    rollouts = store.enqueue([RolloutSpec(task={"question": f"what is {i} + {i}?"}, max_attempts=1) for i in range(n)])
    ids = [r.rollout_id for r in rollouts]
    sampling = {"max_tokens": 6, "temperature": 1.0}
    with Runner("gateway_agents:two_calls", url, gateway_url, n_workers=2, model="tiny-random", sampling=sampling):
        done = store.wait(ids, timeout_s=120)
    assert [r.status for r in done] == [RolloutStatus.SUCCEEDED] * n, [r.error for r in done]
    return store, ids


def test_agent_calls_through_the_gateway_are_recorded_on_its_attempt(setup: tuple[Store, str, str]) -> None:
    store, ids = run(setup, 2)
    for rid in ids:
        spans = store.get_spans(rollout_id=rid)
        calls = [s for s in spans if s.kind is SpanKind.LLM_CALL]
        rewards = {s.name: s.attributes["value"] for s in spans if s.kind is SpanKind.REWARD}
        assert len(calls) == 2 and rewards == {"after_first": 0.25, "final": 1.0}
        assert {s.attempt_id for s in spans} == {store.get_attempts(rid)[0].attempt_id}
        for call in calls:
            assert call.response_ids and call.logprobs and len(call.logprobs) == len(call.response_ids)
        assert store.get_rollout(rid).reward == 1.0


def test_calls_and_rewards_are_ordered_as_they_happened(setup: tuple[Store, str, str]) -> None:
    store, [rid] = run(setup, 1)
    kinds = [(s.kind.value, s.name) for s in store.get_spans(rollout_id=rid)]
    assert [k for k, _ in kinds] == ["llm_call", "reward", "llm_call", "reward"]
    assert kinds[1][1] == "after_first" and kinds[3][1] == "final"
