"""Contract suite, part 1: the job queue (enqueue, claim, heartbeat, finish, cancel, lease expiry, wait).

Every test runs on memory, sqlite, postgres and http (see conftest.py); the memory backend is the reference.
"""

from __future__ import annotations

import threading
import time

import pytest

from tracerl.errors import AttemptFinished, IllegalTransition, InvalidInput, NotFound
from tracerl.store import Store
from tracerl.types import AttemptStatus, Mode, RolloutQuery, RolloutSpec, RolloutStatus, Span, SpanKind

pytestmark = pytest.mark.timeout(60)

FAR_FUTURE = time.time() + 10 * 86_400


def one(store: Store, **kw: object) -> str:
    task = kw.pop("task", {"q": "2+2"})
    [r] = store.enqueue([RolloutSpec(task=task, **kw)])  # type: ignore[arg-type]
    return r.rollout_id


# -- enqueue ----------------------------------------------------------------------------------------


def test_enqueue_returns_queued_rollouts_readable_by_id(store: Store) -> None:
    before = time.time()
    a, b = store.enqueue(
        [
            RolloutSpec(task={"q": "1+1", "n": [1, 2]}, mode=Mode.VAL, metadata={"src": "x"}, resources_version=3),
            RolloutSpec(task={"q": "2+2"}, group_id="g1", max_attempts=5),
        ]
    )
    assert a.status is RolloutStatus.QUEUED and a.attempts == 0
    assert a.task == {"q": "1+1", "n": [1, 2]} and a.mode is Mode.VAL and a.metadata == {"src": "x"}
    assert a.resources_version == 3 and a.max_attempts == 3
    assert a.group_id == a.rollout_id  # the group defaults to the rollout's own id
    assert b.group_id == "g1" and b.max_attempts == 5
    assert a.rollout_id != b.rollout_id
    assert before - 1 <= a.created_at <= time.time() + 1
    assert store.get_rollout(a.rollout_id) == a
    assert store.get_rollout(b.rollout_id) == b
    assert store.enqueue([]) == []


def test_enqueue_same_idempotency_key_returns_the_existing_rollout(store: Store) -> None:
    [first] = store.enqueue([RolloutSpec(task={"q": 1}, idempotency_key="task-1")])
    [again, other, same_batch] = store.enqueue(
        [
            RolloutSpec(task={"q": "ignored"}, idempotency_key="task-1"),
            RolloutSpec(task={"q": 2}, idempotency_key="task-2"),
            RolloutSpec(task={"q": "ignored too"}, idempotency_key="task-2"),
        ]
    )
    assert again.rollout_id == first.rollout_id and again.task == {"q": 1}
    assert same_batch.rollout_id == other.rollout_id
    assert store.query_rollouts(RolloutQuery()).total == 2
    # a claimed rollout is returned in its current state, and not queued a second time
    claim = store.claim("w")
    assert claim is not None
    [current] = store.enqueue([RolloutSpec(task={}, idempotency_key="task-1")])
    assert current.status is RolloutStatus.RUNNING
    claim2 = store.claim("w")
    assert claim2 is not None and store.claim("w") is None


BAD_SPECS: list[dict[str, object]] = [
    {"task": "not a dict"},
    {"task": {}, "mode": "training"},
    {"task": {}, "max_attempts": 0},
    {"task": {}, "group_id": 7},
]


def test_enqueue_rejects_bad_specs_and_changes_nothing(store: Store) -> None:
    for bad in BAD_SPECS:
        with pytest.raises(InvalidInput):
            store.enqueue([RolloutSpec(task={"ok": True}), RolloutSpec(**bad)])  # type: ignore[arg-type]
    assert store.query_rollouts(RolloutQuery()).total == 0


# -- claim ------------------------------------------------------------------------------------------


def test_claim_takes_oldest_first_and_returns_none_when_empty(store: Store) -> None:
    assert store.claim("w") is None
    ids = [one(store, task={"i": i}) for i in range(3)]
    got = []
    for _ in ids:
        c = store.claim("w")
        assert c is not None
        got.append(c.rollout.rollout_id)
    assert got == ids
    assert store.claim("w") is None


def test_claim_starts_an_attempt_with_a_lease(store: Store) -> None:
    rid = one(store)
    before = time.time()
    c = store.claim("worker-7", lease_s=30)
    assert c is not None
    assert c.rollout.rollout_id == rid and c.rollout.status is RolloutStatus.RUNNING and c.rollout.attempts == 1
    a = c.attempt
    assert a.rollout_id == rid and a.number == 1 and a.worker_id == "worker-7" and a.status is AttemptStatus.RUNNING
    assert before - 1 + 30 <= a.lease_expires_at <= time.time() + 30 + 1
    assert store.get_rollout(rid).status is RolloutStatus.RUNNING
    assert store.get_attempts(rid) == [a]


def test_claim_filters_by_mode(store: Store) -> None:
    train = one(store, mode=Mode.TRAIN)
    val = one(store, mode=Mode.VAL)
    c = store.claim("w", modes=[Mode.VAL])
    assert c is not None and c.rollout.rollout_id == val
    assert store.claim("w", modes=[Mode.VAL, Mode.TEST]) is None
    c = store.claim("w")
    assert c is not None and c.rollout.rollout_id == train


def test_claim_rejects_bad_arguments(store: Store) -> None:
    one(store)
    for bad in (0, -1, 10**9, "60"):
        with pytest.raises(InvalidInput):
            store.claim("w", lease_s=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        store.claim("w", modes=["training"])  # type: ignore[list-item]
    assert store.query_rollouts(RolloutQuery(status=[RolloutStatus.QUEUED])).total == 1


def test_claim_with_wait_returns_none_after_the_wait(store: Store) -> None:
    assert store.claim("w", wait_s=0.3) is None


def test_claim_with_wait_wakes_on_enqueue_from_another_thread(store: Store, peer: Store) -> None:
    """The enqueue goes through a second handle (another connection, as another process would)."""
    enqueued: list[str] = []

    def later() -> None:
        time.sleep(0.3)
        enqueued.append(one(peer))

    t = threading.Thread(target=later)
    start = time.monotonic()
    t.start()
    c = store.claim("w", wait_s=20)
    t.join()
    assert c is not None and c.rollout.rollout_id == enqueued[0]
    assert time.monotonic() - start < 10  # woke on the enqueue, not at the end of the wait


def test_retried_rollout_goes_to_the_back_of_the_queue(store: Store) -> None:
    a = one(store)
    b = one(store)
    c = store.claim("w")
    assert c is not None and c.rollout.rollout_id == a
    store.finish(c.attempt.attempt_id, AttemptStatus.FAILED, error="boom")
    order = []
    for _ in range(2):
        c = store.claim("w")
        assert c is not None
        order.append(c.rollout.rollout_id)
    assert order == [b, a]


# -- heartbeat --------------------------------------------------------------------------------------


def test_heartbeat_extends_the_lease(store: Store) -> None:
    one(store)
    c = store.claim("w", lease_s=5)
    assert c is not None
    a = store.heartbeat(c.attempt.attempt_id, lease_s=600)
    assert a.status is AttemptStatus.RUNNING
    assert a.lease_expires_at > c.attempt.lease_expires_at + 500
    assert a.heartbeat_at >= c.attempt.heartbeat_at
    if not store.url.startswith("http"):  # a server keeps its own clock (see test_server_hardening.py)
        assert store.expire_leases(now=time.time() + 60) == []  # the old lease would have run out by then


def test_heartbeat_after_the_lease_ran_out_is_refused_and_the_rollout_requeued(store: Store) -> None:
    rid = one(store)
    c = store.claim("w", lease_s=0.2)
    assert c is not None
    time.sleep(0.5)
    with pytest.raises(AttemptFinished):
        store.heartbeat(c.attempt.attempt_id)
    [a] = store.get_attempts(rid)
    assert a.status is AttemptStatus.UNRESPONSIVE
    assert store.get_rollout(rid).status is RolloutStatus.QUEUED
    c2 = store.claim("w")
    assert c2 is not None and c2.rollout.rollout_id == rid and c2.attempt.number == 2


@pytest.mark.parametrize("call", ["heartbeat", "finish"])
def test_heartbeat_and_finish_after_the_lease_ran_out_are_refused_alike(store: Store, call: str) -> None:
    """One rule: once the lease has run out the attempt is over, whether or not anything expired it yet."""
    rid = one(store)
    c = store.claim("w", lease_s=0.2)
    assert c is not None
    time.sleep(0.5)
    with pytest.raises(AttemptFinished, match="already ended as 'unresponsive'"):
        if call == "heartbeat":
            store.heartbeat(c.attempt.attempt_id)
        else:
            store.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=1.0)
    [a] = store.get_attempts(rid)
    assert a.status is AttemptStatus.UNRESPONSIVE
    r = store.get_rollout(rid)
    assert r.status is RolloutStatus.QUEUED and r.reward is None  # the late result was not recorded


def test_heartbeat_of_finished_or_unknown_attempt(store: Store) -> None:
    one(store)
    c = store.claim("w")
    assert c is not None
    store.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=1.0)
    with pytest.raises(AttemptFinished):
        store.heartbeat(c.attempt.attempt_id)
    with pytest.raises(NotFound):
        store.heartbeat("at-does-not-exist")


# -- release ----------------------------------------------------------------------------------------


def test_release_hands_an_unstarted_attempt_back_at_no_cost(store: Store) -> None:
    rid = one(store, max_attempts=1)
    c = store.claim("w")
    assert c is not None
    r = store.release(c.attempt.attempt_id)
    assert r.status is RolloutStatus.QUEUED and r.attempts == 0
    assert store.get_rollout(rid).status is RolloutStatus.QUEUED
    assert store.get_attempts(rid) == []  # the attempt did nothing: it is gone
    with pytest.raises(NotFound):
        store.heartbeat(c.attempt.attempt_id)
    c2 = store.claim("w2")  # claimable again, and its one attempt is still there to use
    assert c2 is not None and c2.rollout.rollout_id == rid and c2.attempt.number == 1
    store.finish(c2.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=1.0)
    assert store.get_rollout(rid).status is RolloutStatus.SUCCEEDED


def test_release_refuses_ended_started_and_unknown_attempts(store: Store) -> None:
    rid = one(store)
    c = store.claim("w")
    assert c is not None
    store.finish(c.attempt.attempt_id, AttemptStatus.FAILED, error="x")
    with pytest.raises(AttemptFinished):
        store.release(c.attempt.attempt_id)
    c2 = store.claim("w")
    assert c2 is not None and c2.rollout.rollout_id == rid
    store.add_spans([Span(c2.attempt.attempt_id, 1, SpanKind.MESSAGE, name="m")])
    with pytest.raises(InvalidInput, match="finish it instead"):
        store.release(c2.attempt.attempt_id)
    assert store.get_rollout(rid).status is RolloutStatus.RUNNING  # nothing changed
    with pytest.raises(NotFound):
        store.release("at-does-not-exist")


def test_release_after_the_lease_ran_out_is_refused_like_heartbeat(store: Store) -> None:
    rid = one(store)
    c = store.claim("w", lease_s=0.2)
    assert c is not None
    time.sleep(0.5)
    with pytest.raises(AttemptFinished, match="already ended as 'unresponsive'"):
        store.release(c.attempt.attempt_id)
    [a] = store.get_attempts(rid)
    assert a.status is AttemptStatus.UNRESPONSIVE
    assert store.get_rollout(rid).status is RolloutStatus.QUEUED


# -- finish -----------------------------------------------------------------------------------------


def test_finish_succeeded_records_the_reward(store: Store) -> None:
    rid = one(store)
    c = store.claim("w")
    assert c is not None
    r = store.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=0.75)
    assert r.status is RolloutStatus.SUCCEEDED and r.reward == 0.75 and r.rollout_id == rid
    assert store.get_rollout(rid) == r
    [a] = store.get_attempts(rid)
    assert a.status is AttemptStatus.SUCCEEDED and a.ended_at is not None


def test_finish_retries_until_max_attempts_then_fails(store: Store) -> None:
    for ending in (AttemptStatus.FAILED, AttemptStatus.TIMEOUT, AttemptStatus.UNRESPONSIVE):
        check_retries(store, ending)


def check_retries(store: Store, ending: AttemptStatus) -> None:
    rid = one(store, max_attempts=2)
    c = store.claim("w")
    assert c is not None
    r = store.finish(c.attempt.attempt_id, ending, error="first", reward=0.5)
    assert r.status is RolloutStatus.QUEUED and r.error == "first" and r.reward is None
    c = store.claim("w")
    assert c is not None and c.attempt.number == 2 and c.rollout.attempts == 2
    r = store.finish(c.attempt.attempt_id, ending, error="second")
    assert r.status is RolloutStatus.FAILED and r.error == "second"
    assert [(a.number, a.status, a.error) for a in store.get_attempts(rid)] == [
        (1, ending, "first"),
        (2, ending, "second"),
    ]
    assert store.claim("w") is None


def test_finish_cancelled_does_not_retry(store: Store) -> None:
    rid = one(store, max_attempts=3)
    c = store.claim("w")
    assert c is not None
    r = store.finish(c.attempt.attempt_id, AttemptStatus.CANCELLED)
    assert r.status is RolloutStatus.CANCELLED
    assert store.claim("w") is None and store.get_rollout(rid).status is RolloutStatus.CANCELLED


def test_finishing_twice_is_refused_and_changes_nothing(store: Store) -> None:
    rid = one(store)
    c = store.claim("w")
    assert c is not None
    done = store.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=1.0)
    with pytest.raises(AttemptFinished):
        store.finish(c.attempt.attempt_id, AttemptStatus.FAILED, error="late")
    assert store.get_rollout(rid) == done


def test_finish_rejects_bad_values(store: Store) -> None:
    rid = one(store)
    c = store.claim("w")
    assert c is not None
    aid = c.attempt.attempt_id
    with pytest.raises(InvalidInput):
        store.finish(aid, "exploded")  # type: ignore[arg-type]
    for bad in (float("nan"), float("inf"), "1.0", True):
        with pytest.raises(InvalidInput):
            store.finish(aid, AttemptStatus.SUCCEEDED, reward=bad)  # type: ignore[arg-type]
    with pytest.raises(IllegalTransition):
        store.finish(aid, AttemptStatus.RUNNING)
    with pytest.raises(NotFound):
        store.finish("at-unknown", AttemptStatus.SUCCEEDED)
    assert store.get_rollout(rid).status is RolloutStatus.RUNNING
    assert store.get_attempts(rid)[0].status is AttemptStatus.RUNNING


# -- cancel -----------------------------------------------------------------------------------------


def test_cancel_queued_and_running_rollouts(store: Store) -> None:
    running = one(store)
    queued = one(store)
    c = store.claim("w")
    assert c is not None and c.rollout.rollout_id == running
    assert store.cancel(queued).status is RolloutStatus.CANCELLED
    assert store.claim("w") is None
    r = store.cancel(running)
    assert r.status is RolloutStatus.CANCELLED
    assert store.get_attempts(running)[0].status is AttemptStatus.CANCELLED
    with pytest.raises(AttemptFinished):
        store.heartbeat(c.attempt.attempt_id)
    with pytest.raises(IllegalTransition):
        store.cancel(queued)
    with pytest.raises(NotFound):
        store.cancel("ro-unknown")


# -- lease expiry -----------------------------------------------------------------------------------


def test_expire_leases_requeues_then_fails_after_max_attempts(store: Store) -> None:
    rid = one(store, max_attempts=2)
    c = store.claim("w", lease_s=1.0)
    assert c is not None
    assert store.expire_leases() == []  # the lease has not run out
    time.sleep(1.2)
    # the server's own background expiry may have come first; either way the attempt ended
    assert [a.attempt_id for a in store.expire_leases()] in ([c.attempt.attempt_id], [])
    assert store.get_attempts(rid)[0].status is AttemptStatus.UNRESPONSIVE
    assert store.get_rollout(rid).status is RolloutStatus.QUEUED
    c = store.claim("w", lease_s=0.2)
    assert c is not None and c.attempt.number == 2
    time.sleep(0.4)
    assert [a.attempt_id for a in store.expire_leases()] in ([c.attempt.attempt_id], [])
    r = store.get_rollout(rid)
    assert r.status is RolloutStatus.FAILED and r.error is not None
    assert [a.status for a in store.get_attempts(rid)] == [AttemptStatus.UNRESPONSIVE] * 2
    assert store.expire_leases() == []


def test_expire_leases_at_a_given_time(store: Store) -> None:
    if store.url.startswith("http"):
        with pytest.raises(InvalidInput, match="its own clock"):
            store.expire_leases(now=FAR_FUTURE)
        return
    one(store)
    c = store.claim("w", lease_s=60)
    assert c is not None
    [expired] = store.expire_leases(now=FAR_FUTURE)
    assert expired.attempt_id == c.attempt.attempt_id and expired.status is AttemptStatus.UNRESPONSIVE


def test_claim_expires_leases_that_ran_out(store: Store) -> None:
    rid = one(store)
    c = store.claim("w1", lease_s=0.2)
    assert c is not None
    time.sleep(0.5)
    c2 = store.claim("w2")
    assert c2 is not None and c2.rollout.rollout_id == rid and c2.attempt.worker_id == "w2"
    assert store.get_attempts(rid)[0].status is AttemptStatus.UNRESPONSIVE


# -- wait -------------------------------------------------------------------------------------------


def test_wait_returns_finished_rollouts_or_times_out(store: Store) -> None:
    done, pending = one(store), one(store)
    c = store.claim("w")
    assert c is not None and c.rollout.rollout_id == done
    store.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=1.0)
    got = store.wait([done, pending], timeout_s=0.3)
    assert [r.rollout_id for r in got] == [done] and got[0].reward == 1.0
    assert store.wait([], timeout_s=0.1) == []
    with pytest.raises(NotFound):
        store.wait([done, "ro-unknown"], timeout_s=0.1)


def test_wait_wakes_when_another_handle_finishes(store: Store, peer: Store) -> None:
    rid = one(store)

    def work() -> None:
        time.sleep(0.3)
        c = peer.claim("w")
        assert c is not None
        peer.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=0.5)

    t = threading.Thread(target=work)
    start = time.monotonic()
    t.start()
    got = store.wait([rid], timeout_s=20)
    t.join()
    assert [(r.rollout_id, r.status, r.reward) for r in got] == [(rid, RolloutStatus.SUCCEEDED, 0.5)]
    assert time.monotonic() - start < 10


def test_wait_sees_a_rollout_failed_by_lease_expiry(store: Store) -> None:
    rid = one(store, max_attempts=1)
    c = store.claim("w", lease_s=0.3)
    assert c is not None
    [r] = store.wait([rid], timeout_s=20)
    assert r.status is RolloutStatus.FAILED
    assert store.get_attempts(rid)[0].status is AttemptStatus.UNRESPONSIVE
