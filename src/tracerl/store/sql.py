"""The store contract over SQL, written once for the sqlite and postgres backends.

A backend subclasses :class:`SqlStore` and supplies transactions (:meth:`SqlStore._write`,
:meth:`SqlStore._read`) that yield a :class:`Tx`, its named queries (:attr:`SqlStore.q`) and a few hooks
(extra locks, wake-ups). Everything else — the queue, leases, retries through the status
machine in ``status.py``, span encoding with prefix reuse (``codec.py``) — lives here so both backends
behave exactly like :class:`~tracerl.store.memory.MemoryStore`, the reference.

This module holds the queue half (rollouts, attempts, leases, waiting); ``sql_data.py`` the data half (spans,
resources, experiment binding). The tables are defined in ``schema.py``, the statements in ``queries.py``
(one set per dialect, :attr:`SqlStore.q`), the row ↔ object mapping in ``sql_rows.py``.
"""

from __future__ import annotations

import abc
import copy
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from tracerl.errors import InvalidInput, NotFound
from tracerl.store import status as sm
from tracerl.store.base import (
    DEFAULT_LEASE_S,
    Store,
    new_id,
    release_refused,
    validate_claim_count,
    validate_finish,
    validate_id,
    validate_ids,
    validate_lease,
    validate_query,
    validate_spec,
)
from tracerl.store.queries import INSERT_ROWS, QUERY_FILTERS
from tracerl.store.schema import ATTEMPTS, QUEUE, ROLLOUTS
from tracerl.store.sql_data import SqlDataMixin
from tracerl.store.sql_rows import Tx, dumps, row_attempt, row_rollout, split_rollout_attempt, stored, values
from tracerl.types import (
    Attempt,
    AttemptStatus,
    Claim,
    Mode,
    Page,
    Rollout,
    RolloutQuery,
    RolloutSpec,
    RolloutStatus,
)

RECHECK_S = 0.5  # a waiter re-reads at least this often (leases run out without any write)


class SqlStore(SqlDataMixin, Store):
    """Shared implementation; subclasses provide transactions, schema and dialect hooks."""

    poll_s = 0.025  # how often a waiting claimer re-checks the database for other processes' changes

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._gen = 0  # bumped after every commit that may wake a claimer or waiter
        self._contexts: OrderedDict[tuple[str, int], list[int]] = OrderedDict()
        self._contexts_lock = threading.Lock()

    # -- backend hooks ----------------------------------------------------------------------------
    @abc.abstractmethod
    def _write(self) -> AbstractContextManager[Tx]:
        """A read-write transaction that holds the write lock (sqlite) or row locks (postgres)."""

    @abc.abstractmethod
    def _read(self) -> AbstractContextManager[Tx]:
        """A read-only transaction with one consistent snapshot."""

    def _changed(self, tx: Tx) -> None:
        """Inside a transaction that may wake claimers/waiters of other processes (postgres NOTIFY)."""

    def _lock_attempt(self, tx: Tx, attempt_id: str) -> tuple[Attempt, Rollout]:
        """An attempt and its rollout, both locked for change; ``NotFound`` if the attempt is unknown."""
        row = tx.one(self.q.attempt_with_rollout, (attempt_id,))
        if row is None:
            raise NotFound(f"no attempt with id {attempt_id!r}")
        r, a = split_rollout_attempt(row)
        return a, r

    # -- wake-ups ---------------------------------------------------------------------------------
    def _signal(self) -> None:
        with self._wake:
            self._gen += 1
            self._wake.notify_all()

    def _external_version(self) -> int | None:
        """A number that changes when another process commits (sqlite's ``data_version``); ``None``: unknown."""
        return None

    def _wait_change(self, gen: int, timeout: float, peek: Callable[[], bool] | None) -> None:
        """Sleep until a change is signalled after generation ``gen``, ``peek()`` sees work, or time runs out.

        Without ``peek`` (``wait()``), return when another process committed, and at least every
        ``RECHECK_S`` seconds so leases that ran out meanwhile are expired."""
        start = time.monotonic()
        deadline = start + timeout
        version = self._external_version() if peek is None else None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with self._wake:
                if self._gen != gen:
                    return
                self._wake.wait(min(remaining, self.poll_s))
                if self._gen != gen:
                    return
            if peek is not None:
                if peek():
                    return
            elif version is None or self._external_version() != version or time.monotonic() - start >= RECHECK_S:
                return

    # -- rollouts ---------------------------------------------------------------------------------
    def enqueue(self, specs: Sequence[RolloutSpec]) -> list[Rollout]:
        specs = [validate_spec(s) for s in specs]
        if not specs:
            return []
        prepared = [(s, dumps(s.task, "rollout task"), dumps(s.metadata, "rollout metadata")) for s in specs]
        with self._write() as tx:
            out = self._enqueue_tx(tx, prepared)
            self._changed(tx)
        self._signal()
        return out

    def _enqueue_tx(self, tx: Tx, prepared: list[tuple[RolloutSpec, str, str]]) -> list[Rollout]:
        now = time.time()
        keys = [s.idempotency_key for s, _, _ in prepared if s.idempotency_key is not None]
        known: dict[str, Rollout] = {}
        if keys:
            for row in tx.all(self.q.rollouts_by_key, (self.q.dialect.list_param(keys),)):
                found = row_rollout(row)
                known[str(found.idempotency_key)] = found
        out: list[Rollout] = []
        rows: list[tuple[Any, ...]] = []
        queued: list[tuple[Any, ...]] = []
        for spec, task, metadata in prepared:
            if spec.idempotency_key is not None and spec.idempotency_key in known:
                out.append(copy.deepcopy(known[spec.idempotency_key]))
                continue
            rid = new_id("ro")
            r = Rollout(
                rollout_id=rid,
                task=json.loads(task),
                mode=Mode(spec.mode),
                group_id=spec.group_id or rid,
                status=RolloutStatus.QUEUED,
                max_attempts=spec.max_attempts,
                resources_version=spec.resources_version,
                idempotency_key=spec.idempotency_key,
                metadata=json.loads(metadata),
                created_at=now,
                updated_at=now,
            )
            if spec.idempotency_key is not None:
                known[spec.idempotency_key] = r
            rows.append(values(ROLLOUTS, stored(ROLLOUTS, r, task=task, metadata=metadata)))
            queued.append(values(QUEUE, {"rollout_id": rid, "mode": r.mode.value}))
            out.append(r)
        if rows:
            tx.many(self.q.insert_rollout, rows)
            tx.many(self.q.insert_queue, queued)
        return out

    def claim(
        self,
        worker_id: str,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        modes: Sequence[Mode] | None = None,
        wait_s: float = 0.0,
    ) -> Claim | None:
        lease_s = validate_lease(lease_s)
        validate_id(worker_id, "worker_id")
        try:
            wanted = sorted({Mode(m).value for m in modes}) if modes else None
        except ValueError:
            raise InvalidInput(f"claim modes {modes!r} must be among {[m.value for m in Mode]}") from None
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            gen = self._gen
            claim, expired = self._claim_once(worker_id, lease_s, wanted or [])
            if expired:
                self._signal()
            remaining = deadline - time.monotonic()
            if claim is not None or remaining <= 0:
                return claim
            self._wait_change(gen, remaining, lambda: self._claimable(wanted or []))

    def _claimable(self, modes: list[str]) -> bool:
        q = self.q
        sql, params = (q.claimable_modes, (q.dialect.list_param(modes),)) if modes else (q.claimable, ())
        with self._read() as tx:
            return tx.one(sql, (*params, time.time())) is not None

    def _claim_once(self, worker_id: str, lease_s: float, modes: list[str]) -> tuple[Claim | None, bool]:
        claims, expired = self._claim_n(worker_id, 1, lease_s, modes)
        return (claims[0] if claims else None), expired

    def _claim_n(
        self, worker_id: str, n: int, lease_s: float, modes: list[str]
    ) -> tuple[list[Claim], bool]:
        """Up to ``n`` queue heads claimed in one transaction (one commit, statements pipelined)."""
        with self._write() as tx:
            now = time.time()
            expired = self._expire_tx(tx, now)
            if expired:
                self._changed(tx)
            q = self.q
            sql, params = (q.claim_heads_modes, (q.dialect.list_param(modes), n)) if modes else (q.claim_heads, (n,))
            heads = tx.all(sql, params)
            if not heads:
                return [], bool(expired)
            tx.send(q.dequeue, (q.dialect.list_param([pos for pos, *_ in heads]),))
            now = time.time()  # the claim's own time, not the transaction's start (the expiry pass took some)
            started = [sm.start_attempt(row_rollout(h[1:]), new_id("at"), worker_id, lease_s, now) for h in heads]
            claims = [Claim(rollout=r, attempt=a) for r, a in started]
            self._start_tx(tx, claims, now)
            return claims, bool(expired)

    def _start_tx(self, tx: Tx, claims: list[Claim], now: float) -> None:
        """Write a claim batch in a few statements, not two per claim: one ``UPDATE`` per distinct (status,
        attempt count) of the started rollouts (usually one), and multi-row ``INSERT`` s of the attempts."""
        q = self.q
        started: dict[tuple[str, int], list[str]] = {}
        for c in claims:
            started.setdefault((c.rollout.status.value, c.rollout.attempts), []).append(c.rollout.rollout_id)
        for (status, attempts), ids in started.items():
            tx.send(q.start_rollouts, (status, attempts, now, q.dialect.list_param(ids)))
        rows = [values(ATTEMPTS, stored(ATTEMPTS, c.attempt)) for c in claims]
        for i in range(0, len(rows), INSERT_ROWS):
            chunk = rows[i : i + INSERT_ROWS]
            tx.send(q.insert_attempts(len(chunk)), [v for row in chunk for v in row])

    def claim_many(
        self, worker_id: str, n: int, *, lease_s: float = DEFAULT_LEASE_S, modes: Sequence[Mode] | None = None
    ) -> list[Claim]:
        lease_s, n = validate_lease(lease_s), validate_claim_count(n)
        validate_id(worker_id, "worker_id")
        try:
            wanted = sorted({Mode(m).value for m in modes}) if modes else []
        except ValueError:
            raise InvalidInput(f"claim modes {modes!r} must be among {[m.value for m in Mode]}") from None
        claims, expired = self._claim_n(worker_id, n, lease_s, wanted)
        if expired:
            self._signal()
        return claims

    def heartbeat(self, attempt_id: str, *, lease_s: float = DEFAULT_LEASE_S) -> Attempt:
        lease_s = validate_lease(lease_s)
        validate_id(attempt_id, "attempt_id")
        with self._write() as tx:
            a, r = self._lock_attempt(tx, attempt_id)
            now = time.time()  # read after the row locks: a wait for them counts against the lease
            if sm.lease_run_out(a, now):  # over, whether or not anything expired it yet: end it, as claim would
                a, r = self._end_attempt_tx(tx, a, r, AttemptStatus.UNRESPONSIVE, None, "lease expired", now)
                self._changed(tx)
            elif a.status is AttemptStatus.RUNNING:
                a.heartbeat_at, a.lease_expires_at = now, now + lease_s
                tx.send(self.q.heartbeat, (now, a.lease_expires_at, attempt_id))
                return a
        self._signal()
        sm.check_attempt(a.status, AttemptStatus.RUNNING, attempt_id)  # raises AttemptFinished: it has ended
        return a

    def finish(
        self,
        attempt_id: str,
        status: AttemptStatus,
        *,
        reward: float | None = None,
        error: str | None = None,
    ) -> Rollout:
        status, reward, error = validate_finish(status, reward, error)
        validate_id(attempt_id, "attempt_id")
        with self._write() as tx:
            a, r = self._lock_attempt(tx, attempt_id)
            now = time.time()  # read after the row locks: a wait for them counts against the lease
            run_out = sm.lease_run_out(a, now)
            if run_out:  # ended as heartbeat would end it; the status check below then refuses the finish
                a, r = self._end_attempt_tx(tx, a, r, AttemptStatus.UNRESPONSIVE, None, "lease expired", now)
            else:
                a, r = self._end_attempt_tx(tx, a, r, status, reward, error, now)
            self._changed(tx)
        self._signal()
        if run_out:
            sm.check_attempt(a.status, status, attempt_id)  # raises AttemptFinished
        return r

    def release(self, attempt_id: str) -> Rollout:
        validate_id(attempt_id, "attempt_id")
        with self._write() as tx:
            a, r = self._lock_attempt(tx, attempt_id)
            now = time.time()  # read after the row locks, as heartbeat does
            if sm.lease_run_out(a, now):  # over: ended as heartbeat would end it, then refused below
                a, r = self._end_attempt_tx(tx, a, r, AttemptStatus.UNRESPONSIVE, None, "lease expired", now)
            elif a.status is AttemptStatus.RUNNING:
                if tx.one(self.q.attempt_has_spans, (attempt_id,)) is not None:
                    raise release_refused(attempt_id)
                r = sm.release_attempt(a, r, now)
                tx.send(self.q.delete_attempt, (attempt_id,))
                tx.send(self.q.start_rollout, (r.status.value, r.attempts, now, r.rollout_id))
                tx.send(self.q.insert_queue, (r.rollout_id, r.mode.value))
            self._changed(tx)
        self._signal()
        if a.status is not AttemptStatus.RUNNING:
            sm.release_attempt(a, r, now)  # raises AttemptFinished: it has ended
        return r

    def _end_attempt_tx(
        self, tx: Tx, a: Attempt, r: Rollout, status: AttemptStatus, reward: float | None, error: str | None, now: float
    ) -> tuple[Attempt, Rollout]:
        """End ``a`` as ``status`` and move ``r`` on (:func:`status.end_attempt`); returns both as written."""
        a, r = sm.end_attempt(a, r, status, reward=reward, error=error, now=now)
        tx.send(self.q.end_attempt, (status.value, now, error, a.attempt_id))
        tx.send(self.q.move_rollout, (r.status.value, now, r.reward, r.error, r.rollout_id))
        if r.status is RolloutStatus.QUEUED:
            tx.send(self.q.insert_queue, values(QUEUE, {"rollout_id": r.rollout_id, "mode": r.mode.value}))
        return a, r

    def cancel(self, rollout_id: str) -> Rollout:
        validate_id(rollout_id, "rollout_id")
        with self._write() as tx:
            now = time.time()
            removed = tx.run(self.q.dequeue_rollout, (rollout_id,))  # queue row first: lock order
            r = self._rollout_tx(tx, rollout_id, lock=True)
            if r.status is RolloutStatus.RUNNING:
                for row in tx.all(self.q.running_attempts_locked, (rollout_id,)):
                    _, r = self._end_attempt_tx(tx, row_attempt(row), r, AttemptStatus.CANCELLED, None, None, now)
            else:
                r = sm.cancel_queued(r, now)
                assert removed == 1, f"queued rollout {rollout_id} had no queue row"
                tx.run(self.q.cancel_rollout, (r.status.value, now, rollout_id))
            self._changed(tx)
        self._signal()
        return r

    def _rollout_tx(self, tx: Tx, rollout_id: str, *, lock: bool = False) -> Rollout:
        row = tx.one(self.q.rollout_locked if lock else self.q.rollout, (rollout_id,))
        if row is None:
            raise NotFound(f"no rollout with id {rollout_id!r}")
        return row_rollout(row)

    def get_rollout(self, rollout_id: str) -> Rollout:
        validate_id(rollout_id, "rollout_id")
        with self._read() as tx:
            return self._rollout_tx(tx, rollout_id)

    def get_attempts(self, rollout_id: str) -> list[Attempt]:
        validate_id(rollout_id, "rollout_id")
        with self._read() as tx:
            self._rollout_tx(tx, rollout_id)
            rows = tx.all(self.q.attempts_of, (rollout_id,))
        return [row_attempt(row) for row in rows]

    def query_rollouts(self, query: RolloutQuery) -> Page:
        q = validate_query(query)
        list_param = self.q.dialect.list_param
        given: dict[str, Any] = {
            "status": None if not q.status else list_param([RolloutStatus(s).value for s in q.status]),
            "mode": None if q.mode is None else Mode(q.mode).value,
            "group_id": q.group_id,
            "resources_version": q.resources_version,
            "created_after": q.created_after,
            "created_before": q.created_before,
            "rollout_ids": None if q.rollout_ids is None else list_param(list(q.rollout_ids)),
        }
        used = tuple(f for f in QUERY_FILTERS if given[f] is not None)
        params = [given[f] for f in used]
        count_sql, page_sql = self.q.query_rollouts(used)
        with self._read() as tx:
            total_row = tx.one(count_sql, params)
            rows = tx.all(page_sql, [*params, q.limit, q.offset])
        total = int(total_row[0]) if total_row else 0
        return Page(items=[row_rollout(row) for row in rows], total=total, offset=q.offset, limit=q.limit)

    def wait(self, rollout_ids: Sequence[str], *, timeout_s: float) -> list[Rollout]:
        ids = validate_ids(rollout_ids, "rollout_ids")
        deadline = time.monotonic() + max(0.0, timeout_s)
        param = self.q.dialect.list_param(ids)
        while True:
            gen = self._gen
            self._expire_if_due()
            with self._read() as tx:
                found = {r.rollout_id: r for r in map(row_rollout, tx.all(self.q.rollouts_in, (param,)))}
            for rid in ids:
                if rid not in found:
                    raise NotFound(f"no rollout with id {rid!r}")
            done = [found[rid] for rid in ids if found[rid].status.is_final]
            remaining = deadline - time.monotonic()
            if len(done) == len(ids) or remaining <= 0:
                return done
            self._wait_change(gen, remaining, None)

    def expire_leases(self, now: float | None = None) -> list[Attempt]:
        with self._write() as tx:
            out = self._expire_tx(tx, time.time() if now is None else now)
            if out:
                self._changed(tx)
        if out:
            self._signal()
        return out

    def _expire_if_due(self) -> None:
        with self._read() as tx:
            due = tx.one(self.q.lease_run_out, (time.time(),))
        if due is not None:
            self.expire_leases()

    def _expire_tx(self, tx: Tx, now: float) -> list[Attempt]:
        out: list[Attempt] = []
        for row in tx.all(self.q.expired, (now,)):
            r, a = split_rollout_attempt(row)
            why = "lease expired without heartbeat"
            a, _ = self._end_attempt_tx(tx, a, r, AttemptStatus.UNRESPONSIVE, None, why, now)
            out.append(a)
        return out
