"""The rollout/attempt status machine, written once as data and shared by every store backend.

Rollouts::

    queued ──claim──▶ running ──attempt succeeded──▶ succeeded
      │                  │ ────attempt cancelled──▶ cancelled
      │                  │ ────attempt failed/timeout/unresponsive, attempts <  max──▶ queued (retry)
      │                  └────attempt failed/timeout/unresponsive, attempts >= max──▶ failed
      └──cancel──▶ cancelled

Attempts start ``running`` and end exactly once in one of the other statuses. A lease that runs out is
ended as ``unresponsive`` by :meth:`Store.expire_leases`; a runner that kills an overrunning agent ends its
attempt as ``timeout``. Both, and ``failed``, are retryable.

The moves themselves — start an attempt, end one (moving its rollout on), release one that never started,
cancel a queued rollout — are the pure functions :func:`start_attempt`, :func:`end_attempt`,
:func:`release_attempt` and :func:`cancel_queued`: objects in, new objects
out, checked against the tables below. Every backend calls them and only stores what they return.
"""

from __future__ import annotations

from dataclasses import replace

from tracerl.errors import AttemptFinished, IllegalTransition
from tracerl.types import Attempt, AttemptStatus, Rollout, RolloutStatus

R, A = RolloutStatus, AttemptStatus

ROLLOUT_TRANSITIONS: dict[RolloutStatus, frozenset[RolloutStatus]] = {
    R.QUEUED: frozenset({R.RUNNING, R.CANCELLED}),
    R.RUNNING: frozenset({R.SUCCEEDED, R.FAILED, R.CANCELLED, R.QUEUED}),
    R.SUCCEEDED: frozenset(),
    R.FAILED: frozenset(),
    R.CANCELLED: frozenset(),
}

ATTEMPT_TRANSITIONS: dict[AttemptStatus, frozenset[AttemptStatus]] = {
    A.RUNNING: frozenset({A.SUCCEEDED, A.FAILED, A.TIMEOUT, A.UNRESPONSIVE, A.CANCELLED}),
    A.SUCCEEDED: frozenset(),
    A.FAILED: frozenset(),
    A.TIMEOUT: frozenset(),
    A.UNRESPONSIVE: frozenset(),
    A.CANCELLED: frozenset(),
}

RETRYABLE: frozenset[AttemptStatus] = frozenset({A.FAILED, A.TIMEOUT, A.UNRESPONSIVE})

# What an ended attempt does to its rollout when no retry is left (or none is needed).
ROLLOUT_AFTER_ATTEMPT: dict[AttemptStatus, RolloutStatus] = {
    A.SUCCEEDED: R.SUCCEEDED,
    A.CANCELLED: R.CANCELLED,
    A.FAILED: R.FAILED,
    A.TIMEOUT: R.FAILED,
    A.UNRESPONSIVE: R.FAILED,
}


def check_rollout(current: RolloutStatus, new: RolloutStatus, rollout_id: str) -> None:
    """Raise :class:`IllegalTransition` unless ``current → new`` is allowed for rollouts."""
    if new not in ROLLOUT_TRANSITIONS[current]:
        raise IllegalTransition(
            f"rollout {rollout_id!r} is {current.value!r} and cannot become {new.value!r}; "
            f"allowed from {current.value!r}: {sorted(s.value for s in ROLLOUT_TRANSITIONS[current]) or 'none'}"
        )


def check_attempt(current: AttemptStatus, new: AttemptStatus, attempt_id: str) -> None:
    """Raise :class:`AttemptFinished` if the attempt already ended, :class:`IllegalTransition` otherwise."""
    if current is not A.RUNNING:
        raise AttemptFinished(
            f"attempt {attempt_id!r} already ended as {current.value!r}; it cannot become {new.value!r}. "
            "A runner whose lease expired must claim a new attempt."
        )
    if new not in ATTEMPT_TRANSITIONS[current]:
        raise IllegalTransition(f"attempt {attempt_id!r} cannot go from {current.value!r} to {new.value!r}")


def rollout_after_attempt(status: AttemptStatus, attempts: int, max_attempts: int) -> RolloutStatus:
    """The rollout's next status once its ``attempts``-th attempt ended with ``status``.

    Retryable endings requeue the rollout while ``attempts < max_attempts``.
    """
    if status is A.RUNNING:
        raise IllegalTransition("an attempt cannot end as 'running'")
    if status in RETRYABLE and attempts < max_attempts:
        return R.QUEUED
    return ROLLOUT_AFTER_ATTEMPT[status]


def final_attempt(attempts: list[Attempt]) -> Attempt | None:
    """The attempt whose result counts for its rollout: the one that succeeded, else the latest (``attempts``
    oldest first); ``None`` for a rollout never claimed."""
    return next((a for a in attempts if a.status is A.SUCCEEDED), attempts[-1] if attempts else None)


def lease_run_out(a: Attempt, now: float) -> bool:
    """Whether ``a`` is running on a lease that ended before ``now`` (it is over, expired or not yet)."""
    return a.status is A.RUNNING and a.lease_expires_at < now


def start_attempt(r: Rollout, attempt_id: str, worker_id: str, lease_s: float, now: float) -> tuple[Rollout, Attempt]:
    """A claim: the queued rollout ``r`` becomes ``running`` with one more attempt, and that attempt
    (number ``r.attempts + 1``, leased until ``now + lease_s``)."""
    check_rollout(r.status, R.RUNNING, r.rollout_id)
    moved = replace(r, status=R.RUNNING, attempts=r.attempts + 1, updated_at=now)
    attempt = Attempt(attempt_id, r.rollout_id, moved.attempts, worker_id, A.RUNNING, now + lease_s, now, now)
    return moved, attempt


def end_attempt(
    a: Attempt, r: Rollout, status: AttemptStatus, *, reward: float | None = None, error: str | None = None,
    now: float,
) -> tuple[Attempt, Rollout]:  # fmt: skip
    """End the running attempt ``a`` of ``r`` as ``status`` at ``now``: the ended attempt and the rollout
    moved on by :func:`rollout_after_attempt`. The rollout keeps ``reward`` only from a success and records
    ``error`` when one is given. ``AttemptFinished`` if ``a`` already ended."""
    check_attempt(a.status, status, a.attempt_id)
    nxt = rollout_after_attempt(status, r.attempts, r.max_attempts)
    check_rollout(r.status, nxt, r.rollout_id)
    ended = replace(a, status=status, ended_at=now, error=error)
    moved = replace(
        r,
        status=nxt,
        updated_at=now,
        reward=reward if status is A.SUCCEEDED else r.reward,
        error=error if error is not None else r.error,
    )
    return ended, moved


def release_attempt(a: Attempt, r: Rollout, now: float) -> Rollout:
    """Hand back ``a``, the running attempt of ``r`` whose agent never started (a runner's prefetched claim):
    ``r`` is queued again with the attempt count it had before the claim, and the attempt is deleted — it did
    nothing, so it costs none of ``max_attempts``. ``AttemptFinished`` if ``a`` already ended."""
    if a.status is not A.RUNNING:
        raise AttemptFinished(
            f"attempt {a.attempt_id!r} already ended as {a.status.value!r}; only a running attempt can be released"
        )
    if a.number != r.attempts:
        raise IllegalTransition(f"attempt {a.attempt_id!r} is not the latest attempt of rollout {r.rollout_id!r}")
    check_rollout(r.status, R.QUEUED, r.rollout_id)
    return replace(r, status=R.QUEUED, attempts=r.attempts - 1, updated_at=now)


def cancel_queued(r: Rollout, now: float) -> Rollout:
    """The queued rollout ``r`` cancelled at ``now`` (a running one is cancelled by ending its attempt)."""
    check_rollout(r.status, R.CANCELLED, r.rollout_id)
    return replace(r, status=R.CANCELLED, updated_at=now)
