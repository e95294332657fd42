"""Several trained models: one step's rollouts are read from the store once, whatever the number of roles,
and each role still gets exactly the batch its algorithm builds alone."""

from __future__ import annotations

from collections.abc import Sequence

from tracerl.algorithms.grpo import GRPO
from tracerl.store.memory import MemoryStore
from tracerl.train.roles import RoleModels
from tracerl.types import AttemptStatus, RolloutSpec, RolloutTrace, Span, SpanKind


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.trace_reads = 0

    def get_traces(self, rollout_ids: Sequence[str]) -> list[RolloutTrace]:
        self.trace_reads += 1
        return super().get_traces(rollout_ids)


def two_role_rollouts(store: MemoryStore) -> list[str]:
    """A group of two rollouts, each a planner call then a solver call; rewards 1 and 0."""
    store.enqueue([RolloutSpec(task={"q": 1}, group_id="g") for _ in range(2)])
    ids = []
    for final in (1.0, 0.0):
        claim = store.claim("w")
        assert claim is not None
        a = claim.attempt.attempt_id
        store.add_spans([
            Span(a, 0, SpanKind.LLM_CALL, prompt_ids=[1, 2], response_ids=[3, 4], logprobs=[-0.5, -0.5],
                 attributes={"model": "planner", "weights_version": 0}),
            Span(a, 1, SpanKind.LLM_CALL, prompt_ids=[1, 2, 3, 4, 5], response_ids=[6], logprobs=[-0.25],
                 attributes={"model": "solver", "weights_version": 0}),
        ])  # fmt: skip
        store.finish(a, AttemptStatus.SUCCEEDED, reward=final)
        ids.append(claim.rollout.rollout_id)
    return ids


def test_two_roles_read_the_step_once_and_each_keeps_its_own_calls() -> None:
    store = CountingStore()
    ids = two_role_rollouts(store)
    roles = RoleModels({"planner": GRPO(model="tiny-random", group_size=2), "solver": GRPO(model="tiny-random",
                                                                                           group_size=2)})
    batch = roles.make_batch(store, [], ids)
    assert store.trace_reads == 1  # was 3: the role check, then one read per role
    alone = {key: a.make_batch(store, [], ids) for key, a in roles.algorithms.items()}
    for key in ("planner", "solver"):
        got, want = batch.batches[key].transitions, alone[key].transitions
        assert {t.model for t in got} == {key} and len(got) == 2
        assert [(t.prompt_ids, t.response_ids, t.advantage) for t in got] == [
            (t.prompt_ids, t.response_ids, t.advantage) for t in want
        ]
    assert roles.make_batch(store, [], ids) is not batch and store.trace_reads == 3 + 1  # a new step reads again
