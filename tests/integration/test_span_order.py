"""The store orders an attempt's spans as they arrive, so credit does not depend on any writer's clock.

Two agents make 3 LLM calls with an intermediate reward after the first (0.25) and after the second (0.5)
and a final reward R = 1. With ``step`` returns and γ = 0.5 the per-call returns are, by hand
(``G_t = Σ_{k≥t} γ^(k−t) r_k + γ^(T−t) R``, r = (0.25, 0.5, 0)):

    G_1 = 0.25 + 0.5·0.5 + 0.25·0 + 0.25·1 = 0.75,   G_2 = 0.5 + 0.5·0 + 0.5·1 = 1.0,   G_3 = 0 + 1 = 1.0

* a runner-driven agent whose process clock is 5 s ahead of, or behind, the gateway's (the gateway writes
  the calls, the runner the rewards);
* an OpenTelemetry-instrumented agent whose spans (calls and rewards alike) arrive over OTLP in two
  batches, each in the exporter's order, with span ids whose hash order is not the time order.

Both must give the returns of the in-process path: credit.py on the events in the order they happened.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

import tracerl
from tracerl import credit
from tracerl.algorithms.transitions import RolloutRecord, read_rollout
from tracerl.runner import Runner
from tracerl.store.base import Store
from tracerl.types import AttemptStatus, RolloutSpec, RolloutStatus, SpanKind

pytest.importorskip("openai")
pytest.importorskip("fastapi")

GAMMA = 0.5
HAND_RETURNS = [0.75, 1.0, 1.0]

AGENT = """
import os
import time

import openai
import tracerl

# this process's clock is off by TRACERL_TEST_CLOCK_OFFSET_S seconds (a runner on another machine)
_offset = float(os.environ["TRACERL_TEST_CLOCK_OFFSET_S"])
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _offset
time.time_ns = lambda: _time_ns() + int(_offset * 1e9)


@tracerl.agent
def three_calls(task, llm):
    client = openai.OpenAI(base_url=llm.base_url, api_key=llm.api_key, max_retries=0)
    messages = [{"role": "user", "content": task["question"]}]
    for i, reward in enumerate((0.25, 0.5, None)):
        out = client.chat.completions.create(model=llm.model, messages=messages, **llm.sampling)
        if reward is not None:
            tracerl.emit_reward(reward, name=f"after_call_{i + 1}")
        messages += [{"role": "assistant", "content": out.choices[0].message.content or ""},
                     {"role": "user", "content": "go on"}]
    return 1.0
"""


def in_process_returns() -> list[float]:
    """The reference: credit.py on the events in the order they happened (call, reward, call, reward, call)."""
    calls = torch.tensor([0, 2, 4])
    rewards = credit.attach_rewards(calls, torch.tensor([1, 3]), torch.tensor([0.25, 0.5]))
    return credit.call_returns(rewards, 1.0, mode="step", gamma=GAMMA).tolist()


def step_returns(record: RolloutRecord) -> list[float]:
    """Per-call ``step`` returns of a record read from the store, as ``assign_credit`` computes them."""
    calls = sorted(record.calls, key=lambda c: c.seq)
    positions = torch.tensor([c.seq for c in calls])
    rew_pos = torch.tensor([p for p, _ in record.rewards], dtype=torch.int64)
    rew_val = torch.tensor([v for _, v in record.rewards], dtype=torch.float64)
    rewards = credit.attach_rewards(positions, rew_pos, rew_val)
    return credit.call_returns(rewards, record.final_reward, mode="step", gamma=GAMMA).tolist()


def test_the_reference_returns_are_the_hand_computed_ones() -> None:
    assert in_process_returns() == pytest.approx(HAND_RETURNS)


@pytest.fixture
def gateway_setup(
    tmp_path: Path, agent_module: Callable[[str, str], Path], tiny_engine: Any
) -> Iterator[tuple[Store, str, str]]:
    from tracerl.gateway.app import start_gateway

    agent_module("skewed_agents", AGENT)
    url = f"sqlite:///{tmp_path}/order.db"
    store = tracerl.connect(url)
    gateway = start_gateway(store, tiny_engine, model_name="tiny-random")
    yield store, url, gateway.url
    gateway.stop()
    store.close()


@pytest.mark.parametrize("offset_s", [5.0, -5.0])
def test_a_runner_whose_clock_is_off_gets_the_in_process_credit(
    gateway_setup: tuple[Store, str, str], monkeypatch: pytest.MonkeyPatch, offset_s: float
) -> None:
    store, url, gateway_url = gateway_setup
    monkeypatch.setenv("TRACERL_TEST_CLOCK_OFFSET_S", str(offset_s))  # the agent worker process inherits it
    [r] = store.enqueue([RolloutSpec(task={"question": "1 + 1?"}, max_attempts=1)])
    sampling = {"max_tokens": 4, "temperature": 1.0}
    with Runner("skewed_agents:three_calls", url, gateway_url, n_workers=1, model="tiny-random", sampling=sampling):
        [done] = store.wait([r.rollout_id], timeout_s=120)
    assert done.status is RolloutStatus.SUCCEEDED, done.error
    spans = store.get_spans(rollout_id=r.rollout_id)
    assert [(s.kind.value, s.name) for s in spans if s.name != "final"] == [
        ("llm_call", "chat.completions"), ("reward", "after_call_1"), ("llm_call", "chat.completions"),
        ("reward", "after_call_2"), ("llm_call", "chat.completions"),
    ]  # fmt: skip
    reward_times = [s.start_time for s in spans if s.kind is SpanKind.REWARD]
    call_times = [s.start_time for s in spans if s.kind is SpanKind.LLM_CALL]
    assert (reward_times[0] > call_times[-1]) if offset_s > 0 else (reward_times[-1] < call_times[0])  # skewed
    record = read_rollout(store, r.rollout_id)
    assert isinstance(record, RolloutRecord)
    assert step_returns(record) == pytest.approx(in_process_returns())


# -- OTLP --------------------------------------------------------------------------------------------------

AGENT_CLOCK_NS = 1_700_000_000_000_000_000 + 5 * 10**9  # the agent's clock, 5 s off anyone else's


def otlp_span(attempt_id: str, span_id: int, start_s: float, kind: str, **attrs: Any) -> dict[str, Any]:
    start = AGENT_CLOCK_NS + int(start_s * 1e9)
    values = [{"key": "tracerl.attempt_id", "value": {"stringValue": attempt_id}},
              {"key": "tracerl.span.kind", "value": {"stringValue": kind}}]  # fmt: skip
    for key, value in attrs.items():
        if isinstance(value, list):
            kind_key = "doubleValue" if isinstance(value[0], float) else "intValue"
            items = [{kind_key: v if isinstance(v, float) else str(v)} for v in value]
            values.append({"key": key, "value": {"arrayValue": {"values": items}}})
        else:
            values.append({"key": key, "value": {"doubleValue": value}})
    return {"traceId": "ab" * 16, "spanId": f"{span_id:016x}", "name": kind, "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(start + 10**8), "attributes": values}  # fmt: skip


def otlp_call(attempt_id: str, span_id: int, start_s: float, prompt: list[int]) -> dict[str, Any]:
    return otlp_span(attempt_id, span_id, start_s, "llm_call", **{
        "tracerl.prompt_ids": prompt, "tracerl.response_ids": [7, 8], "tracerl.logprobs": [-0.5, -0.25]})  # fmt: skip


def test_an_otlp_agent_gets_the_in_process_credit(tmp_path: Path) -> None:
    from tracerl.server.testing import start_server
    from tracerl.store.http import HttpStore

    with start_server(f"sqlite:///{tmp_path / 'otlp.db'}") as server:
        store = HttpStore(server.url)
        [r] = store.enqueue([RolloutSpec(task={"q": "otlp"})])
        claim = store.claim("otel-worker", lease_s=600)
        assert claim is not None
        aid = claim.attempt.attempt_id
        # span ids descend in time, so the old hash-of-span-id order would be the reverse of time order
        call1, reward1 = otlp_call(aid, 0xF5, 0.0, [1, 2]), otlp_span(aid, 0xF4, 1.0, "reward", value=0.25)
        call2, reward2 = otlp_call(aid, 0xF3, 2.0, [3]), otlp_span(aid, 0xF2, 3.0, "reward", value=0.5)
        call3 = otlp_call(aid, 0xF1, 4.0, [4])
        for batch in ([reward1, call1], [call3, reward2, call2]):  # exporter order, not start order
            for _ in range(2):  # and each batch re-sent (an exporter retry): nothing moves
                body = {"resourceSpans": [{"scopeSpans": [{"spans": batch}]}]}
                resp = httpx.post(f"{server.url}/v1/traces", json=body)
                assert resp.status_code == 200 and "rejectedSpans" not in resp.text, resp.text
        store.finish(aid, AttemptStatus.SUCCEEDED, reward=1.0)
        spans = store.get_spans(attempt_id=aid)
        assert [s.kind.value for s in spans] == ["llm_call", "reward", "llm_call", "reward", "llm_call"]
        assert [s.position for s in spans] == [0, 1, 2, 3, 4]
        record = read_rollout(store, r.rollout_id)
        assert isinstance(record, RolloutRecord)
        assert step_returns(record) == pytest.approx(in_process_returns())
        store.close()
