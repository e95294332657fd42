"""Contract suite, part 3: input no backend may store — JSON nested too deep to read back.

Every test runs on memory, sqlite, postgres and http (see conftest.py): the same call is refused with
``InvalidInput`` naming the limit and the fix, whatever the backend, and nothing is stored.
"""

from __future__ import annotations

from typing import Any

import pytest

from tracerl.errors import InvalidInput
from tracerl.store import Store
from tracerl.store.base import MAX_ID_CHARS, MAX_JSON_DEPTH
from tracerl.types import AttemptStatus, RolloutQuery, RolloutSpec, Span, SpanKind

pytestmark = pytest.mark.timeout(60)


def nested(levels: int, leaf: Any = "x") -> dict[str, Any]:
    """A JSON object nested ``levels`` deep (``{"k": leaf}`` is 1 level), alternating dicts and lists."""
    value: Any = {"k": leaf}
    for i in range(levels - 1):
        value = [value] if i % 2 == 0 and i < levels - 2 else {"k": value}
    return value


def test_nested_counts_levels() -> None:
    assert nested(1) == {"k": "x"} and nested(2) == {"k": {"k": "x"}} and nested(3) == {"k": [{"k": "x"}]}


def test_json_at_the_depth_limit_is_stored_and_read_back(store: Store) -> None:
    task = nested(MAX_JSON_DEPTH)
    [r] = store.enqueue([RolloutSpec(task=task, metadata=nested(MAX_JSON_DEPTH))])
    assert store.get_rollout(r.rollout_id).task == task
    c = store.claim("w")
    assert c is not None and c.rollout.task == task
    store.add_spans([Span(c.attempt.attempt_id, 0, SpanKind.CUSTOM, attributes=nested(MAX_JSON_DEPTH))])
    assert store.get_spans(attempt_id=c.attempt.attempt_id)[0].attributes == nested(MAX_JSON_DEPTH)
    assert store.put_resource("deep", nested(MAX_JSON_DEPTH)).value == nested(MAX_JSON_DEPTH)


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 300])
def test_json_nested_too_deep_is_refused_everywhere_and_nothing_is_stored(store: Store, levels: int) -> None:
    limit = str(MAX_JSON_DEPTH)
    [ok] = store.enqueue([RolloutSpec(task={"q": 1})])
    with pytest.raises(InvalidInput, match=f"{limit} levels.*flatten"):
        store.enqueue([RolloutSpec(task={"q": 2}), RolloutSpec(task=nested(levels))])
    with pytest.raises(InvalidInput, match=limit):
        store.enqueue([RolloutSpec(task={}, metadata=nested(levels))])
    assert [r.rollout_id for r in store.query_rollouts(RolloutQuery()).items] == [ok.rollout_id]

    c = store.claim("w")
    assert c is not None and c.rollout.rollout_id == ok.rollout_id  # nothing deep was queued before it
    aid = c.attempt.attempt_id
    with pytest.raises(InvalidInput, match=limit):
        store.add_spans([Span(aid, 0, SpanKind.CUSTOM), Span(aid, 1, SpanKind.CUSTOM, attributes=nested(levels))])
    assert store.get_spans(attempt_id=aid) == []

    store.put_resource("prompt", {"v": 1})
    with pytest.raises(InvalidInput, match=limit):
        store.put_resource("prompt", nested(levels))
    assert store.get_resource("prompt").version == 1


# -- ids -------------------------------------------------------------------------------------------

LONG = "x" * (MAX_ID_CHARS + 1)
NUL = "bad\x00id"


@pytest.mark.parametrize(("bad", "words"), [(LONG, f"limit is {MAX_ID_CHARS}"), (NUL, "NUL")], ids=["long", "nul"])
def test_ids_too_long_or_with_nul_are_refused_by_every_backend_and_nothing_is_stored(
    store: Store, bad: str, words: str
) -> None:
    for spec in (RolloutSpec(task={}, group_id=bad), RolloutSpec(task={}, idempotency_key=bad)):
        with pytest.raises(InvalidInput, match=words):
            store.enqueue([RolloutSpec(task={}), spec])
    assert store.query_rollouts(RolloutQuery()).total == 0
    [r] = store.enqueue([RolloutSpec(task={"q": 1})])
    with pytest.raises(InvalidInput, match=f"worker_id.*{words}"):
        store.claim(bad)
    assert store.get_rollout(r.rollout_id).status.value == "queued"  # the failed claim took nothing
    with pytest.raises(InvalidInput, match=f"resource name.*{words}"):
        store.put_resource(bad, {"v": 1})
    with pytest.raises(InvalidInput, match=words):
        store.bind_experiment(bad)
    c = store.claim("w")
    assert c is not None
    with pytest.raises(InvalidInput, match=words):
        store.add_spans([Span(c.attempt.attempt_id, 0, SpanKind.CUSTOM, rollout_id=bad)])
    assert store.get_spans(attempt_id=c.attempt.attempt_id) == []
    # lookups with such ids are refused the same way on every backend (postgres cannot even compare NUL)
    lookups = (lambda: store.get_rollout(bad), lambda: store.heartbeat(bad), lambda: store.cancel(bad),
               lambda: store.get_spans(attempt_id=bad), lambda: store.wait([bad], timeout_s=0),
               lambda: store.get_resource(bad), lambda: store.query_rollouts(RolloutQuery(group_id=bad)))  # fmt: skip
    for call in lookups:
        with pytest.raises(InvalidInput, match=words):
            call()


def test_ids_at_the_length_limit_work(store: Store) -> None:
    key = "k" * MAX_ID_CHARS
    [r] = store.enqueue([RolloutSpec(task={}, group_id="g" * MAX_ID_CHARS, idempotency_key=key)])
    assert store.enqueue([RolloutSpec(task={}, idempotency_key=key)])[0].rollout_id == r.rollout_id
    c = store.claim("w" * MAX_ID_CHARS)
    assert c is not None and c.attempt.worker_id == "w" * MAX_ID_CHARS
    assert store.put_resource("n" * MAX_ID_CHARS, {"v": 1}).version == 1


def test_nul_in_free_text_is_stored_as_a_replacement_character_by_every_backend(store: Store) -> None:
    """An error message or span name (agent output, tracebacks) is kept, not refused: postgres cannot store
    NUL, so every backend stores U+FFFD in its place."""
    store.enqueue([RolloutSpec(task={}, max_attempts=1)])
    c = store.claim("w")
    assert c is not None
    aid = c.attempt.attempt_id
    store.add_spans([Span(aid, 0, SpanKind.CUSTOM, name="tool\x00call")])
    assert store.get_spans(attempt_id=aid)[0].name == "tool\ufffdcall"
    r = store.finish(aid, AttemptStatus.FAILED, error="boom\x00trace")
    assert r.error == "boom\ufffdtrace" == store.get_rollout(r.rollout_id).error
    assert store.get_attempts(r.rollout_id)[0].error == "boom\ufffdtrace"
