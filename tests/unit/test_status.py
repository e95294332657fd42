"""The status machine's moves as pure functions (``tracerl.store.status``): objects in, new objects out."""

from __future__ import annotations

import pytest

from tracerl.errors import AttemptFinished, IllegalTransition
from tracerl.store import status as sm
from tracerl.types import Attempt, AttemptStatus, Mode, Rollout, RolloutStatus

A, R = AttemptStatus, RolloutStatus


def rollout(status: RolloutStatus = R.QUEUED, attempts: int = 0, max_attempts: int = 2) -> Rollout:
    return Rollout("ro-1", {"q": 1}, Mode.TRAIN, "g", status, max_attempts=max_attempts, attempts=attempts)


def test_start_attempt_numbers_the_attempt_and_leases_it_without_touching_its_input() -> None:
    r = rollout(attempts=1)
    moved, a = sm.start_attempt(r, "at-2", "w", 30.0, now=100.0)
    assert (moved.status, moved.attempts, moved.updated_at) == (R.RUNNING, 2, 100.0)
    assert (a.attempt_id, a.number, a.status, a.lease_expires_at, a.started_at) == ("at-2", 2, A.RUNNING, 130.0, 100.0)
    assert (r.status, r.attempts) == (R.QUEUED, 1)  # pure: the input is unchanged
    with pytest.raises(IllegalTransition, match="'succeeded'"):
        sm.start_attempt(rollout(R.SUCCEEDED), "at-3", "w", 30.0, now=1.0)


@pytest.mark.parametrize(
    ("ending", "attempts", "want"),
    [
        (A.SUCCEEDED, 1, R.SUCCEEDED),
        (A.FAILED, 1, R.QUEUED),  # 1 < max_attempts = 2: retried
        (A.UNRESPONSIVE, 2, R.FAILED),  # out of attempts
        (A.TIMEOUT, 2, R.FAILED),
        (A.CANCELLED, 1, R.CANCELLED),  # never retried
    ],
)
def test_end_attempt_moves_the_rollout_on(ending: AttemptStatus, attempts: int, want: RolloutStatus) -> None:
    r = rollout(R.RUNNING, attempts=attempts)
    a = Attempt("at-1", "ro-1", attempts, "w", A.RUNNING, 130.0, 100.0, 100.0)
    ended, moved = sm.end_attempt(a, r, ending, reward=0.5, error="boom" if ending is A.FAILED else None, now=200.0)
    assert (ended.status, ended.ended_at, moved.status, moved.updated_at) == (ending, 200.0, want, 200.0)
    assert moved.reward == (0.5 if ending is A.SUCCEEDED else None)  # a reward counts only from a success
    assert moved.error == ("boom" if ending is A.FAILED else None)
    assert a.status is A.RUNNING and r.status is R.RUNNING  # pure
    with pytest.raises(AttemptFinished, match="already ended"):
        sm.end_attempt(ended, moved, A.SUCCEEDED, now=201.0)


def test_lease_run_out_and_cancel_queued() -> None:
    a = Attempt("at-1", "ro-1", 1, "w", A.RUNNING, 130.0, 100.0, 100.0)
    assert not sm.lease_run_out(a, 130.0) and sm.lease_run_out(a, 130.5)
    assert sm.cancel_queued(rollout(), 5.0).status is R.CANCELLED
    with pytest.raises(IllegalTransition):
        sm.cancel_queued(rollout(R.FAILED), 5.0)


def test_final_attempt_is_the_success_else_the_latest() -> None:
    failed = Attempt("at-1", "ro-1", 1, "w", A.FAILED, 1.0, 1.0, 1.0)
    won = Attempt("at-2", "ro-1", 2, "w", A.SUCCEEDED, 1.0, 1.0, 1.0)
    assert sm.final_attempt([failed, won]) is won and sm.final_attempt([failed]) is failed
    assert sm.final_attempt([]) is None
