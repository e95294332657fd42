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
"""

from __future__ import annotations

from tracerl.errors import AttemptFinished, IllegalTransition
from tracerl.types import Attempt, AttemptStatus, RolloutStatus

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
