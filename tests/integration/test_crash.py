"""Crash safety: ``tracerl serve`` on a sqlite file is killed with SIGKILL while a client writes.

After a restart on the same port and file, every write the client got a 2xx for is there, and attempts
that were running when the server died expire after their lease and are requeued, so no rollout is lost.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tracerl.errors import StoreUnavailable
from tracerl.server.testing import start_server
from tracerl.store.http import HttpStore
from tracerl.types import AttemptStatus, RolloutQuery, RolloutSpec, RolloutStatus, Span, SpanKind

pytestmark = pytest.mark.timeout(180)

N = 200
LEASE_S = 2.0


def wait_until(condition: object, what: str, timeout_s: float = 60.0) -> None:
    """Poll ``condition()`` until true (a deadline for a state change, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_acknowledged_writes_survive_sigkill_and_running_attempts_are_requeued(tmp_path: Path) -> None:
    server = start_server(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        store = HttpStore(server.url, retries=0, timeout=10)
        store.enqueue([RolloutSpec(task={"i": i}, max_attempts=5) for i in range(N)])
        # Two attempts held by "runners" that die with the server: they never heartbeat or finish.
        held = [store.claim("doomed-runner", lease_s=LEASE_S) for _ in range(2)]
        assert all(c is not None for c in held)

        acked_spans: list[tuple[str, int]] = []
        acked_finish: dict[str, str] = {}  # attempt id -> rollout id
        stopped = threading.Event()
        ten_done = threading.Event()
        failure: list[BaseException] = []

        def client() -> None:
            writer = HttpStore(server.url, retries=0, timeout=10)
            try:
                while not stopped.is_set():
                    c = writer.claim("writer", lease_s=LEASE_S)
                    if c is None:
                        return
                    aid = c.attempt.attempt_id
                    spans = [
                        Span(aid, seq, SpanKind.LLM_CALL, prompt_ids=[seq] * 50, response_ids=[7, 8],
                             logprobs=[-0.1, -0.2], attributes={"text": "x" * 500})
                        for seq in range(2)
                    ]  # fmt: skip
                    writer.add_spans(spans)
                    acked_spans.extend((aid, s.seq) for s in spans)
                    writer.finish(aid, AttemptStatus.SUCCEEDED, reward=1.0)
                    acked_finish[aid] = c.rollout.rollout_id
                    if len(acked_finish) >= 10:
                        ten_done.set()
            except StoreUnavailable:
                return  # the server died under us: whatever was not acknowledged may or may not be stored
            except BaseException as e:  # pragma: no cover - reported below
                failure.append(e)

        thread = threading.Thread(target=client)
        thread.start()
        assert ten_done.wait(60), "the client did not finish 10 rollouts"
        server.kill()  # mid-stream: the client is writing as fast as it can
        thread.join(60)
        stopped.set()
        assert not failure, failure
        assert 10 <= len(acked_finish) < N - 2, "the kill should land while the client is still writing"

        server.restart()
        # the client from before the crash still works: its dead keep-alive connection is replaced
        assert store.get_rollout(held[0].rollout.rollout_id).rollout_id == held[0].rollout.rollout_id  # type: ignore[union-attr]
        after = HttpStore(server.url)
        for aid, seq in acked_spans:
            got = after.get_spans(attempt_id=aid)
            assert seq in {s.seq for s in got}, f"acknowledged span {(aid, seq)} was lost"
            assert next(s for s in got if s.seq == seq).prompt_ids == [seq] * 50
        for aid, rid in acked_finish.items():
            assert after.get_rollout(rid).status is RolloutStatus.SUCCEEDED
            assert [a.status for a in after.get_attempts(rid) if a.attempt_id == aid] == [AttemptStatus.SUCCEEDED]

        # The doomed runners' attempts expire after their lease (the server's background task) and their
        # rollouts go back to the queue; nobody has to claim for that to happen.
        for c in held:
            assert c is not None
            rid = c.rollout.rollout_id
            wait_until(
                lambda rid=rid: after.get_rollout(rid).status is RolloutStatus.QUEUED,
                f"rollout {rid} to be requeued after its lease ran out",
            )
            [attempt] = after.get_attempts(rid)
            assert attempt.status is AttemptStatus.UNRESPONSIVE

        # No rollout is lost: a new runner drains the queue (expired attempts are requeued on the way).
        while (c := after.claim("rescuer", lease_s=30, wait_s=LEASE_S + 2)) is not None:
            after.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=0.0)
        page = after.query_rollouts(RolloutQuery(limit=1000))
        assert page.total == N
        assert {r.status for r in page.items} == {RolloutStatus.SUCCEEDED}
    finally:
        server.close()


def test_idempotent_calls_ride_out_a_restart_and_others_fail_fast(tmp_path: Path) -> None:
    server = start_server(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        store = HttpStore(server.url, retries=10)
        store.enqueue([RolloutSpec(task={"q": 1})])
        c = store.claim("w", lease_s=600)
        assert c is not None
        server.kill()
        with pytest.raises(StoreUnavailable, match="tracerl serve"):  # not idempotent: no blind retry
            store.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED)
        restarted = threading.Thread(target=server.start)
        restarted.start()  # comes back while the call below is retrying (backoff 0.1 s doubling to 2 s)
        span = Span(c.attempt.attempt_id, 0, SpanKind.MESSAGE, attributes={"text": "survived"})
        assert store.add_spans([span]) == 1
        restarted.join()
        assert store.get_spans(attempt_id=c.attempt.attempt_id)[0].attributes == {"text": "survived"}
        assert store.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED).status is RolloutStatus.SUCCEEDED
    finally:
        server.close()
