"""Batch operations on every backend: ``Store.get_traces`` (a step's rollouts, attempts and final-attempt spans
in one call) and ``claim_many``; and the trainer's reader (``transitions_from_store``) making the same number
of store calls for 2 rollouts as for 24."""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

import pytest

from tracerl.algorithms.rollout_batch import rollouts_from_store
from tracerl.algorithms.transitions import transitions_from_store
from tracerl.errors import InvalidInput, NotFound
from tracerl.store import Store
from tracerl.store.base import MAX_QUERY_LIMIT
from tracerl.types import AttemptStatus, RolloutSpec, RolloutStatus, Span, SpanKind

pytestmark = pytest.mark.timeout(60)


def run_one(store: Store, rollout_id: str, calls: int, reward: float, *, fail_first: bool = False) -> None:
    """Claim ``rollout_id`` and record ``calls`` llm calls (prompt = previous context + 1 token) and a reward
    after the first; optionally a failed attempt first."""
    if fail_first:
        c = store.claim("w")
        assert c is not None and c.rollout.rollout_id == rollout_id
        store.add_spans([Span(c.attempt.attempt_id, 1, SpanKind.MESSAGE, name="lost")])
        store.finish(c.attempt.attempt_id, AttemptStatus.FAILED, error="crash")
    c = store.claim("w")
    assert c is not None and c.rollout.rollout_id == rollout_id
    aid, context = c.attempt.attempt_id, [1, 2, 3]
    for t in range(calls):
        prompt = [*context, 100 + t]
        store.add_spans([Span(aid, 10 + t, SpanKind.LLM_CALL, prompt_ids=prompt, response_ids=[7], logprobs=[-0.5])])
        context = [*prompt, 7]
        if t == 0:
            store.add_spans([Span(aid, 99, SpanKind.REWARD, name="step", attributes={"value": 0.5})])
    store.finish(aid, AttemptStatus.SUCCEEDED, reward=reward)


def test_get_traces_reads_rollouts_attempts_and_final_spans_in_the_order_asked(store: Store) -> None:
    [a] = store.enqueue([RolloutSpec(task={"i": 0}, max_attempts=2)])
    run_one(store, a.rollout_id, 2, 1.0, fail_first=True)
    b, queued = store.enqueue([RolloutSpec(task={"i": i}) for i in (1, 2)])
    run_one(store, b.rollout_id, 1, 0.0)
    tb, ta, tq = store.get_traces([b.rollout_id, a.rollout_id, queued.rollout_id])
    assert [t.rollout.rollout_id for t in (tb, ta, tq)] == [b.rollout_id, a.rollout_id, queued.rollout_id]
    assert [x.status for x in ta.attempts] == [AttemptStatus.FAILED, AttemptStatus.SUCCEEDED]
    assert ta.rollout.status is RolloutStatus.SUCCEEDED and ta.rollout.reward == 1.0
    # only the succeeded attempt's spans, in store order, with their token ids decoded
    assert [(s.kind, s.position) for s in ta.spans] == [
        (SpanKind.LLM_CALL, 0), (SpanKind.REWARD, 1), (SpanKind.LLM_CALL, 2)
    ]  # fmt: skip
    assert {s.attempt_id for s in ta.spans} == {ta.attempts[1].attempt_id}
    assert ta.spans[2].prompt_ids == [1, 2, 3, 100, 7, 101] and ta.spans[2].logprobs == [-0.5]
    assert len(tb.spans) == 2 and tq.attempts == [] and tq.spans == []
    assert store.get_traces([]) == []
    with pytest.raises(NotFound, match="ro-missing"):
        store.get_traces([a.rollout_id, "ro-missing"])
    with pytest.raises(InvalidInput, match=f"at most {MAX_QUERY_LIMIT}"):
        store.get_traces([a.rollout_id] * (MAX_QUERY_LIMIT + 1))


class CountingStore:
    """Passes every call to ``store`` and counts them by method name."""

    def __init__(self, store: Store) -> None:
        self.store, self.calls = store, Counter[str]()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return method(*args, **kwargs)

        return counted


def test_a_steps_store_calls_do_not_grow_with_its_rollouts(store: Store) -> None:
    calls: list[Counter[str]] = []
    for n in (2, 24):
        rollouts = store.enqueue([RolloutSpec(task={"n": n}, group_id=f"g{n}") for _ in range(n)])
        for i, r in enumerate(rollouts):
            run_one(store, r.rollout_id, 1 + i % 3, float(i % 2))
        counting = CountingStore(store)
        batch = transitions_from_store(cast(Store, counting), [r.rollout_id for r in rollouts], returns="step")
        assert batch.rollouts == n and len(batch.transitions) == sum(1 + i % 3 for i in range(n))
        calls.append(counting.calls)
    assert calls[0] == calls[1] == Counter(get_traces=1)


def test_the_whole_rollout_reader_makes_one_store_call_too(store: Store) -> None:
    rollouts = store.enqueue([RolloutSpec(task={"n": 5}, group_id="g") for _ in range(5)])
    for i, r in enumerate(rollouts):
        run_one(store, r.rollout_id, 1 + i % 3, float(i % 2))
    counting = CountingStore(store)
    batch = rollouts_from_store(cast(Store, counting), [r.rollout_id for r in rollouts])
    assert batch.rollouts == 5 and len(batch.transitions) == len(batch.call_rewards) == sum(1 + i % 3 for i in range(5))
    assert counting.calls == Counter(get_traces=1)


def test_claim_many_takes_the_oldest_queued_rollouts_at_once(store: Store) -> None:
    rollouts = store.enqueue([RolloutSpec(task={"i": i}) for i in range(5)])
    first = store.claim_many("w", 3, lease_s=30)
    assert [c.rollout.rollout_id for c in first] == [r.rollout_id for r in rollouts[:3]]
    assert all(c.rollout.status is RolloutStatus.RUNNING and c.attempt.number == 1 for c in first)
    assert len({c.attempt.attempt_id for c in first}) == 3
    rest = store.claim_many("w", 10, lease_s=30)
    assert [c.rollout.rollout_id for c in rest] == [r.rollout_id for r in rollouts[3:]]
    assert store.claim_many("w", 10) == [] and store.claim("w") is None
    store.finish(first[0].attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=1.0)  # claims are real attempts
    assert store.get_rollout(rollouts[0].rollout_id).status is RolloutStatus.SUCCEEDED
    with pytest.raises(InvalidInput, match=r"claim_many takes a count in \[1, 1000\], got 0"):
        store.claim_many("w", 0)


def test_claim_many_stores_each_rollouts_own_attempt_count_in_a_mixed_batch(store: Store) -> None:
    """A batch of first and second attempts, larger than one multi-row insert of the SQL backends (64 rows):
    every rollout is stored running with its own attempt count, every attempt as claimed."""
    retried = store.enqueue([RolloutSpec(task={"retry": i}, max_attempts=3) for i in range(3)])
    for c in store.claim_many("w", 3, lease_s=30):
        store.finish(c.attempt.attempt_id, AttemptStatus.FAILED, error="try again")  # queued again, attempts = 1
    fresh = store.enqueue([RolloutSpec(task={"new": i}) for i in range(100)])
    claims = store.claim_many("w2", 200, lease_s=30)
    assert [c.rollout.rollout_id for c in claims] == [r.rollout_id for r in [*retried, *fresh]]
    for c in claims:
        stored = store.get_rollout(c.rollout.rollout_id)
        want = 2 if c.rollout.rollout_id in {r.rollout_id for r in retried} else 1
        assert stored.status is RolloutStatus.RUNNING and stored.attempts == c.rollout.attempts == want
        attempts = store.get_attempts(c.rollout.rollout_id)
        assert [a.attempt_id for a in attempts][-1] == c.attempt.attempt_id and len(attempts) == want
        assert attempts[-1].number == want and attempts[-1].worker_id == "w2"
        assert attempts[-1].status is AttemptStatus.RUNNING
    assert store.claim("w") is None
