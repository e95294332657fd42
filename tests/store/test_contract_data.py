"""Contract suite, part 2: spans (token ids, prefix reuse, idempotency), queries, resources, experiments.

Every test runs on memory, sqlite, postgres and http (see conftest.py); the memory backend is the reference.
"""

from __future__ import annotations

import time

import pytest

from tracerl.errors import ExperimentConflict, InvalidInput, NotFound
from tracerl.store import Store
from tracerl.types import AttemptStatus, Claim, Mode, RolloutQuery, RolloutSpec, RolloutStatus, Span, SpanKind

pytestmark = pytest.mark.timeout(60)


def claimed(store: Store, **kw: object) -> Claim:
    store.enqueue([RolloutSpec(task={"q": 1}, **kw)])  # type: ignore[arg-type]
    c = store.claim("w")
    assert c is not None
    return c


def llm(aid: str, seq: int, prompt: list[int], response: list[int], **kw: object) -> Span:
    logprobs = [-0.5 - 0.25 * (i % 7) for i in range(len(response))]  # exactly representable in float32
    return Span(aid, seq, SpanKind.LLM_CALL, prompt_ids=prompt, response_ids=response, logprobs=logprobs, **kw)  # type: ignore[arg-type]


# -- spans ------------------------------------------------------------------------------------------


def test_spans_round_trip_every_field(store: Store) -> None:
    c = claimed(store)
    aid = c.attempt.attempt_id
    call = llm(aid, 0, [1, 50_000, 2**31 - 1, 0], [7, 8, 9], name="chat", start_time=100.5, end_time=101.25,
               attributes={"model": "m", "usage": {"prompt_tokens": 4}, "tools": [None, 1.5, "x"]})  # fmt: skip
    reward = Span(aid, 1, SpanKind.REWARD, name="final", parent_seq=0, attributes={"value": 0.5})
    empty = Span(aid, 2, SpanKind.LLM_CALL, prompt_ids=[], response_ids=[], logprobs=[])
    assert store.add_spans([call, reward, empty]) == 3
    got = store.get_spans(attempt_id=aid)
    assert [s.seq for s in got] == [0, 1, 2]
    s0, s1, s2 = got
    assert s0.kind is SpanKind.LLM_CALL and s0.name == "chat" and s0.rollout_id == c.rollout.rollout_id
    assert s0.prompt_ids == [1, 50_000, 2**31 - 1, 0] and s0.response_ids == [7, 8, 9]
    assert s0.logprobs == call.logprobs
    assert (s0.start_time, s0.end_time) == (100.5, 101.25)
    assert s0.attributes == {"model": "m", "usage": {"prompt_tokens": 4}, "tools": [None, 1.5, "x"]}
    assert s1.kind is SpanKind.REWARD and s1.parent_seq == 0 and s1.attributes == {"value": 0.5}
    assert s1.prompt_ids is None and s1.response_ids is None and s1.logprobs is None
    assert (s2.prompt_ids, s2.response_ids, s2.logprobs) == ([], [], [])


def test_logprobs_are_kept_at_float32_precision(store: Store) -> None:
    c = claimed(store)
    aid = c.attempt.attempt_id
    store.add_spans([Span(aid, 0, SpanKind.LLM_CALL, prompt_ids=[1], response_ids=[2, 3], logprobs=[-0.1, -1e-9])])
    [s] = store.get_spans(attempt_id=aid)
    assert s.logprobs is not None
    assert s.logprobs[0] == pytest.approx(-0.1, rel=1e-7) and s.logprobs[1] == pytest.approx(-1e-9, rel=1e-7)


def test_multi_turn_prompts_round_trip_with_prefix_reuse(store: Store) -> None:
    """Each turn's prompt extends the previous prompt+response (the stored form keeps only the suffix)."""
    c = claimed(store)
    aid = c.attempt.attempt_id
    p1 = list(range(100, 160))
    r1 = [5, 6, 7]
    p2 = [*p1, *r1, 900, 901]  # extends turn 1 completely
    r2 = [8, 9]
    p3 = [*p2, *r2[:1], 333]  # shares only part of turn 2's response
    r3 = [10]
    p4 = [4, 4, 4]  # unrelated prompt
    store.add_spans([llm(aid, 0, p1, r1), Span(aid, 1, SpanKind.TOOL, attributes={"out": "x"})])
    store.add_spans([llm(aid, 2, p2, r2)])
    store.add_spans([llm(aid, 3, p3, r3), llm(aid, 5, p4, [1])])  # p3 refers to stored seq 2, p4 to p3
    want = {0: (p1, r1), 2: (p2, r2), 3: (p3, r3), 5: (p4, [1])}
    for spans in (store.get_spans(attempt_id=aid), store.get_spans(rollout_id=c.rollout.rollout_id)):
        assert [s.seq for s in spans] == [0, 1, 2, 3, 5]
        for s in spans:
            if s.seq in want:
                assert (s.prompt_ids, s.response_ids) == want[s.seq], s.seq


def test_add_spans_is_idempotent_on_attempt_and_seq(store: Store) -> None:
    c = claimed(store)
    aid = c.attempt.attempt_id
    first = llm(aid, 0, list(range(40)), [1, 2])
    assert store.add_spans([first]) == 1
    changed = llm(aid, 0, [9, 9], [3])
    assert store.add_spans([first, changed, llm(aid, 1, [*range(40), 1, 2, 3], [4])]) == 1
    got = store.get_spans(attempt_id=aid)
    assert [s.seq for s in got] == [0, 1]
    assert got[0].prompt_ids == list(range(40)) and got[0].response_ids == [1, 2]  # the first write stays
    assert got[1].prompt_ids == [*range(40), 1, 2, 3]


def test_get_spans_of_a_rollout_are_ordered_by_attempt_then_position(store: Store) -> None:
    c1 = claimed(store, max_attempts=2)
    rid = c1.rollout.rollout_id
    store.add_spans([Span(c1.attempt.attempt_id, s, SpanKind.MESSAGE, name=f"a1-{s}") for s in (3, 1)])
    store.finish(c1.attempt.attempt_id, AttemptStatus.FAILED, error="x")
    c2 = store.claim("w")
    assert c2 is not None and c2.rollout.rollout_id == rid
    store.add_spans([Span(c2.attempt.attempt_id, s, SpanKind.MESSAGE, name=f"a2-{s}") for s in (2, 0)])
    store.add_spans([Span(c1.attempt.attempt_id, 2, SpanKind.ERROR, name="a1-2")])  # a late write to attempt 1
    spans = store.get_spans(rollout_id=rid)  # arrival order within each attempt, whatever the seqs
    assert [s.name for s in spans] == ["a1-3", "a1-1", "a1-2", "a2-2", "a2-0"]
    assert [s.position for s in spans] == [0, 1, 2, 0, 1]
    assert [s.name for s in store.get_spans(attempt_id=c2.attempt.attempt_id)] == ["a2-2", "a2-0"]
    assert {s.rollout_id for s in store.get_spans(rollout_id=rid)} == {rid}
    other = claimed(store)
    assert store.get_spans(rollout_id=other.rollout.rollout_id) == []


def test_spans_of_unknown_ids_are_refused_and_nothing_is_written(store: Store) -> None:
    c = claimed(store)
    aid = c.attempt.attempt_id
    with pytest.raises(NotFound):
        store.add_spans([Span(aid, 0, SpanKind.MESSAGE), Span("at-unknown", 0, SpanKind.MESSAGE)])
    assert store.get_spans(attempt_id=aid) == []
    with pytest.raises(NotFound):
        store.get_spans(attempt_id="at-unknown")
    with pytest.raises(NotFound):
        store.get_spans(rollout_id="ro-unknown")
    with pytest.raises(InvalidInput):
        store.get_spans()
    with pytest.raises(InvalidInput):
        store.get_spans(rollout_id=c.rollout.rollout_id, attempt_id=aid)


BAD_SPANS: list[dict[str, object]] = [
    {"seq": -1},
    {"kind": "thought"},
    {"prompt_ids": [1, "2"]},
    {"prompt_ids": [2**31]},
    {"response_ids": [1, 2], "logprobs": [-0.1]},
    {"logprobs": [-0.1]},
    {"attributes": ["not", "a", "dict"]},
]


def test_bad_spans_are_refused(store: Store) -> None:
    c = claimed(store)
    for bad in BAD_SPANS:
        fields: dict[str, object] = {"attempt_id": c.attempt.attempt_id, "seq": 0, "kind": SpanKind.LLM_CALL, **bad}
        with pytest.raises(InvalidInput):
            store.add_spans([Span(c.attempt.attempt_id, 1, SpanKind.MESSAGE), Span(**fields)])  # type: ignore[arg-type]
    assert store.get_spans(attempt_id=c.attempt.attempt_id) == []


def test_spans_can_be_added_after_the_attempt_finished(store: Store) -> None:
    c = claimed(store)
    store.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=1.0)
    assert store.add_spans([Span(c.attempt.attempt_id, 0, SpanKind.REWARD, attributes={"value": 1.0})]) == 1


# -- query ------------------------------------------------------------------------------------------


def test_query_rollouts_applies_every_filter(store: Store) -> None:
    a = store.enqueue([RolloutSpec(task={"i": 0}, group_id="g1", resources_version=1)])[0]
    time.sleep(0.02)
    mid = time.time()
    time.sleep(0.02)
    b, c = store.enqueue([RolloutSpec(task={"i": 1}, group_id="g1", mode=Mode.VAL, resources_version=2),
                          RolloutSpec(task={"i": 2}, group_id="g2", resources_version=2)])  # fmt: skip
    cl = store.claim("w", modes=[Mode.VAL])
    assert cl is not None
    store.finish(cl.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=1.0)

    def ids(**kw: object) -> list[str]:
        page = store.query_rollouts(RolloutQuery(**kw))  # type: ignore[arg-type]
        assert page.total == len(page.items)
        return [r.rollout_id for r in page.items]

    assert ids() == [a.rollout_id, b.rollout_id, c.rollout_id]
    assert ids(status=[RolloutStatus.SUCCEEDED]) == [b.rollout_id]
    assert ids(status=[RolloutStatus.QUEUED, RolloutStatus.SUCCEEDED]) == [a.rollout_id, b.rollout_id, c.rollout_id]
    assert ids(status=[RolloutStatus.FAILED]) == []
    assert ids(mode=Mode.TRAIN) == [a.rollout_id, c.rollout_id]
    assert ids(group_id="g1") == [a.rollout_id, b.rollout_id]
    assert ids(resources_version=2) == [b.rollout_id, c.rollout_id]
    assert ids(created_after=mid) == [b.rollout_id, c.rollout_id]
    assert ids(created_before=mid) == [a.rollout_id]
    assert ids(rollout_ids=[c.rollout_id, a.rollout_id, "ro-unknown"]) == [a.rollout_id, c.rollout_id]
    assert ids(rollout_ids=[]) == []
    assert ids(group_id="g1", mode=Mode.TRAIN, status=[RolloutStatus.QUEUED]) == [a.rollout_id]


def test_query_rollouts_paginates_with_a_total(store: Store) -> None:
    made = [r.rollout_id for r in store.enqueue([RolloutSpec(task={"i": i}) for i in range(7)])]
    pages = [store.query_rollouts(RolloutQuery(limit=3, offset=o)) for o in (0, 3, 6, 9)]
    assert [p.total for p in pages] == [7, 7, 7, 7]
    assert [r.rollout_id for p in pages for r in p.items] == made
    assert [len(p.items) for p in pages] == [3, 3, 1, 0]
    assert (pages[1].offset, pages[1].limit) == (3, 3)
    for bad in (RolloutQuery(limit=0), RolloutQuery(limit=10**6), RolloutQuery(offset=-1)):
        with pytest.raises(InvalidInput):
            store.query_rollouts(bad)


# -- resources --------------------------------------------------------------------------------------


def test_resources_are_versioned_and_immutable(store: Store) -> None:
    r1 = store.put_resource("prompt", {"template": "Q: {q}", "n": [1]})
    r2 = store.put_resource("prompt", {"template": "Question: {q}"})
    other = store.put_resource("weights", {"path": "ckpt-1"})
    assert (r1.version, r2.version, other.version) == (1, 2, 1)
    assert store.get_resource("prompt").value == {"template": "Question: {q}"}
    got = store.get_resource("prompt", 1)
    assert got.value == {"template": "Q: {q}", "n": [1]} and got.version == 1 and got.name == "prompt"
    got.value["template"] = "changed by the caller"
    r1.value["n"].append(2)
    assert store.get_resource("prompt", 1).value == {"template": "Q: {q}", "n": [1]}
    with pytest.raises(NotFound):
        store.get_resource("prompt", 3)
    with pytest.raises(NotFound):
        store.get_resource("missing")
    with pytest.raises(InvalidInput):
        store.put_resource("", {"x": 1})
    with pytest.raises(InvalidInput):
        store.put_resource("prompt", ["not", "a", "dict"])  # type: ignore[arg-type]
    assert store.get_resource("prompt").version == 2


# -- experiment binding -----------------------------------------------------------------------------


def test_bind_experiment_refuses_a_second_experiment(store: Store, peer: Store) -> None:
    store.bind_experiment("sql-agent")
    store.bind_experiment("sql-agent")
    peer.bind_experiment("sql-agent")  # resuming the same experiment from elsewhere is fine
    with pytest.raises(ExperimentConflict) as e:
        peer.bind_experiment("other")
    assert "sql-agent" in str(e.value)


# -- unknown ids ------------------------------------------------------------------------------------


def test_unknown_ids_raise_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get_rollout("ro-unknown")
    with pytest.raises(NotFound):
        store.get_attempts("ro-unknown")


def test_the_store_assigns_positions_in_arrival_order_and_retries_keep_them(store: Store) -> None:
    """The order is the store's (``tracerl.store.order``): a writer's seq or position decides nothing, and
    a retried write neither duplicates a span nor moves it."""
    aid = claimed(store).attempt.attempt_id
    first = [Span(aid, 900, SpanKind.LLM_CALL, name="call-1", position=7), Span(aid, 5, SpanKind.REWARD, name="r")]
    assert store.add_spans(first) == 2
    assert store.add_spans([Span(aid, 1, SpanKind.LLM_CALL, name="call-2")]) == 1
    assert store.add_spans([*first, Span(aid, 3, SpanKind.MESSAGE, name="m")]) == 1  # a retry plus one new span
    spans = store.get_spans(attempt_id=aid)
    assert [(s.name, s.seq, s.position) for s in spans] == [("call-1", 900, 0), ("r", 5, 1), ("call-2", 1, 2),
                                                           ("m", 3, 3)]  # fmt: skip
