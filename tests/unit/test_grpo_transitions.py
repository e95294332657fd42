"""Reading transitions from a real (memory) store and assigning credit: what the learner will train on."""

from __future__ import annotations

import pytest

from tracerl.algorithms.transitions import transitions_from_store
from tracerl.store.memory import MemoryStore
from tracerl.types import AttemptStatus, RolloutSpec, Span, SpanKind


def call(attempt: str, seq: int, prompt: list[int], response: list[int], version: int = 0) -> Span:
    return Span(
        attempt, seq, SpanKind.LLM_CALL, name="chat", prompt_ids=prompt, response_ids=response,
        logprobs=[-0.5] * len(response), attributes={"weights_version": version},
    )


def reward(attempt: str, seq: int, value: float, name: str = "") -> Span:
    return Span(attempt, seq, SpanKind.REWARD, name=name, attributes={"value": value})


def run(store: MemoryStore, spans: list[tuple], status: AttemptStatus = AttemptStatus.SUCCEEDED,
        final: float | None = None) -> str:
    claim = store.claim("w")
    assert claim is not None
    a = claim.attempt.attempt_id
    built = [call(a, *s[1:]) if s[0] == "call" else reward(a, *s[1:]) for s in spans]
    store.add_spans(built)
    store.finish(a, status, reward=final, error=None if status is AttemptStatus.SUCCEEDED else "boom")
    return claim.rollout.rollout_id


def test_transitions_with_step_credit_zero_variance_skip_and_failures() -> None:
    store = MemoryStore()
    store.enqueue([RolloutSpec(task={"q": 1}, group_id="g1") for _ in range(2)])
    store.enqueue([RolloutSpec(task={"q": 2}, group_id="g2") for _ in range(2)])
    store.enqueue([RolloutSpec(task={"q": 3}, group_id="g3") for _ in range(2)])
    ids = [
        # g1, rollout 1: two calls, an intermediate reward 0.5 after call 1, final 1 (also as a "final" span)
        run(store, [("call", 0, [1, 2], [3, 4]), ("reward", 1, 0.5, "valid"), ("call", 2, [1, 2, 3, 4, 5], [6]),
                    ("reward", 3, 1.0, "final")], final=1.0),
        # g1, rollout 2: one call, final 0
        run(store, [("call", 0, [1, 2], [7])], final=0.0),
        # g2: both rollouts reward 1 → zero variance, skipped and counted
        run(store, [("call", 0, [1], [2])], final=1.0),
        run(store, [("call", 0, [1], [3])], final=1.0),
        # g3: one rollout crashes after a call (R = 0), the other succeeds with 1
        run(store, [("call", 0, [9], [8, 8])], status=AttemptStatus.FAILED),
        run(store, [("call", 0, [9], [7, 7])], final=1.0),
    ]
    # the crashed rollout may be requeued (max_attempts 3): run and fail its remaining attempts
    while (claim := store.claim("w")) is not None:
        a = claim.attempt.attempt_id
        store.add_spans([call(a, 0, [9], [6, 6, 6])])
        store.finish(a, AttemptStatus.FAILED, error="boom again")

    batch = transitions_from_store(store, ids, returns="step", advantage="grpo", scale="none")
    assert batch.rollouts == 6 and batch.groups == 3
    assert batch.zero_variance_groups == 1 and batch.skipped_rollouts == {"zero_variance": 2}
    by_rollout: dict[str, list] = {}
    for t in batch.transitions:
        by_rollout.setdefault(t.rollout_id, []).append(t)
    assert set(by_rollout) == {ids[0], ids[1], ids[4], ids[5]}
    # g1 step returns (γ = 1): rollout 1 G = [0.5 + 1, 1] = [1.5, 1]; rollout 2 G = [0]
    # scores (1.5, 0) → baseline 0.75 → A = [0.75, 0.25] and [−0.75]. The "final" span is not counted twice.
    assert [t.advantage for t in by_rollout[ids[0]]] == [0.75, 0.25]
    assert [t.ret for t in by_rollout[ids[0]]] == [1.5, 1.0]
    assert [t.advantage for t in by_rollout[ids[1]]] == [-0.75]
    # g3: the failed rollout counts as R = 0 on the calls of its last attempt; baseline 0.5
    assert [(t.response_ids, t.advantage) for t in by_rollout[ids[4]]] == [([6, 6, 6], -0.5)]
    assert [t.advantage for t in by_rollout[ids[5]]] == [0.5]
    first = by_rollout[ids[0]][1]
    assert first.prompt_ids == [1, 2, 3, 4, 5] and first.logprobs == [-0.5] and first.weights_version == 0
    assert batch.reward_mean == pytest.approx(4 / 6)

    # uniform returns ignore the intermediate reward: g1 scores (1, 0) → A = [0.5, 0.5] and [−0.5]
    uniform = transitions_from_store(store, ids[:2], returns="uniform", advantage="grpo", scale="none")
    assert [t.advantage for t in uniform.transitions] == [0.5, 0.5, -0.5]


def test_cancelled_unfinished_and_rewardless_rollouts_are_skipped() -> None:
    store = MemoryStore()
    r_cancel, r_queued, r_none = store.enqueue([RolloutSpec(task={"q": i}, group_id="g") for i in range(3)])
    store.cancel(r_cancel.rollout_id)
    claim = store.claim("w")
    assert claim is not None and claim.rollout.rollout_id == r_queued.rollout_id
    store.finish(claim.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=None)  # no reward anywhere
    batch = transitions_from_store(store, [r_cancel.rollout_id, r_queued.rollout_id, r_none.rollout_id])
    assert batch.transitions == []
    assert batch.skipped_rollouts == {"cancelled": 1, "no_reward": 1, "not_finished": 1}


def test_emitted_last_reward_is_the_final_one_when_the_agent_returns_none() -> None:
    store = MemoryStore()
    store.enqueue([RolloutSpec(task={}, group_id="g") for _ in range(2)])
    a = run(store, [("call", 0, [1], [2]), ("reward", 1, 0.2), ("call", 2, [1], [3]), ("reward", 3, 1.0)])
    b = run(store, [("call", 0, [1], [4]), ("reward", 1, 0.0)])
    batch = transitions_from_store(store, [a, b], returns="step", scale="none")
    # a: intermediate 0.2 on call 1, final 1 (the last emitted) → G = [1.2, 1]; b: G = [0] → baseline 0.6
    assert [round(t.advantage, 9) for t in batch.transitions] == [0.6, 0.4, -0.6]


def test_calls_whose_agent_changed_a_turn_the_model_wrote_are_counted() -> None:
    """The gateway marks a call ``prefix_reused: false`` when the agent edited an earlier turn of the model;
    the batch counts them (``rerendered_calls`` in the trainer's metrics) and still trains on them."""
    store = MemoryStore()
    store.enqueue([RolloutSpec(task={}, group_id="g") for _ in range(2)])
    claim = store.claim("w")
    assert claim is not None
    a = claim.attempt.attempt_id
    spans = [call(a, 0, [1], [2]), call(a, 1, [1, 2, 5], [3]), call(a, 2, [1, 9, 5, 3, 5], [4])]
    spans[1].attributes["prefix_reused"] = True
    spans[2].attributes["prefix_reused"] = False
    store.add_spans(spans)
    store.finish(a, AttemptStatus.SUCCEEDED, reward=1.0)
    b = run(store, [("call", 0, [1], [6])], final=0.0)
    batch = transitions_from_store(store, [claim.rollout.rollout_id, b])
    assert batch.rerendered_calls == 1 and batch.metrics()["rerendered_calls"] == 1.0
    assert len(batch.transitions) == 4


def test_sampled_nll_is_the_mean_negative_logprob_of_every_call_read() -> None:
    store = MemoryStore()
    store.enqueue([RolloutSpec(task={"q": 1}, group_id="g") for _ in range(2)])
    ids = []
    for logprobs in ([-0.1, -2.0], [-0.3, -0.0, -0.6]):  # both rollouts reward 1: a zero-variance group
        claim = store.claim("w")
        assert claim is not None
        a = claim.attempt.attempt_id
        store.add_spans([Span(a, 0, SpanKind.LLM_CALL, prompt_ids=[1], response_ids=[2] * len(logprobs),
                              logprobs=logprobs)])  # fmt: skip
        store.finish(a, AttemptStatus.SUCCEEDED, reward=1.0)
        ids.append(claim.rollout.rollout_id)
    batch = transitions_from_store(store, ids)
    # (0.1 + 2.0 + 0.3 + 0.0 + 0.6) / 5 = 0.6, over every call read, trainable or not
    assert batch.zero_variance_groups == 1 and not batch.transitions
    assert batch.metrics()["sampled_nll"] == pytest.approx(0.6)
