"""Every SQL statement the SQL backends run for the store contract, by name, for each dialect.

:class:`Queries` writes the statements once, for one :class:`~tracerl.store.schema.Dialect`; the two sets
:data:`SQLITE` and :data:`POSTGRES` are built at import and never edited afterwards. What differs between the
dialects is decided by the dialect, in the open:

* the placeholder (``?`` or ``%s``): every ``{p}`` below;
* row locks (``FOR UPDATE``, ``FOR UPDATE ... SKIP LOCKED`` for claimers): :meth:`Dialect.lock`, empty for
  sqlite, whose ``BEGIN IMMEDIATE`` write lock already serialises writers;
* a list passed as one parameter: :meth:`Dialect.in_list` (``= ANY(%s)`` / ``IN (SELECT value FROM
  json_each(?))``) with :meth:`Dialect.list_param`.

Column lists come from ``schema.py`` (:func:`~tracerl.store.sql_rows.selected`), so a row of a query
that reads records maps to an object by name (``sql_rows.py``). Backend housekeeping (PRAGMAs, ``LISTEN``,
``search_path``, the migration lock) stays with its backend.
"""

from __future__ import annotations

from tracerl.store.schema import ATTEMPTS, POSTGRES, QUEUE, RESOURCES, ROLLOUTS, SPANS, SQLITE, Dialect, Table
from tracerl.store.sql_rows import selected
from tracerl.types import AttemptStatus, SpanKind

RUNNING = AttemptStatus.RUNNING.value
LLM_CALL = SpanKind.LLM_CALL.value

QUERY_FILTERS = ("status", "mode", "group_id", "resources_version", "created_after", "created_before", "rollout_ids")
"""The filters of ``query_rollouts``, in the order :meth:`Queries.query_rollouts` takes their parameters."""


def columns(t: Table, alias: str = "") -> str:
    """The :func:`selected` columns of ``t``, comma-separated, each prefixed by ``alias.`` if given."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + c.name for c in selected(t))


def insert(t: Table, p: str, suffix: str = "", rows: int = 1) -> str:
    """``INSERT`` of ``rows`` rows of ``t``'s written columns (parameters row after row)."""
    names = [c.name for c in t.written]
    row = f"({', '.join([p] * len(names))})"
    return f"INSERT INTO {t.name} ({', '.join(names)}) VALUES {', '.join([row] * rows)}{suffix}"


INSERT_ROWS = 64
"""Most rows one multi-row ``INSERT`` of :meth:`Queries.insert_attempts` carries (a claim batch of more takes
several): a few hundred parameters, far below sqlite's and postgres' limits, and few statement texts."""


R, A, S = columns(ROLLOUTS), columns(ATTEMPTS), columns(SPANS)
RA = f"{columns(ROLLOUTS, 'r')}, {columns(ATTEMPTS, 'a')}"  # a rollout's columns, then its attempt's


class Queries:
    """The named statements of one dialect (see the module docstring)."""

    def __init__(self, d: Dialect) -> None:
        self.dialect = d
        p = d.param
        self._query_cache: dict[tuple[str, ...], tuple[str, str]] = {}
        running_with_lease_before = f"status = '{RUNNING}' AND lease_expires_at < {p}"
        # -- rollouts and the queue ---------------------------------------------------------------
        self.rollout = f"SELECT {R} FROM rollouts WHERE rollout_id = {p}"
        self.rollout_locked = self.rollout + d.lock()
        self.rollouts_in = f"SELECT {R} FROM rollouts WHERE {d.in_list('rollout_id')}"
        self.rollouts_by_key = f"SELECT {R} FROM rollouts WHERE {d.in_list('idempotency_key')}"
        self.insert_rollout = insert(ROLLOUTS, p)
        self.insert_queue = insert(QUEUE, p)
        self.claimable = (
            f"SELECT 1 WHERE EXISTS (SELECT 1 FROM queue) OR EXISTS "
            f"(SELECT 1 FROM attempts WHERE {running_with_lease_before})"
        )
        self.claimable_modes = (
            f"SELECT 1 WHERE EXISTS (SELECT 1 FROM queue WHERE {d.in_list('mode')}) OR EXISTS "
            f"(SELECT 1 FROM attempts WHERE {running_with_lease_before})"
        )
        heads = f"SELECT q.pos, {columns(ROLLOUTS, 'r')} FROM queue q JOIN rollouts r ON r.rollout_id = q.rollout_id"
        lock = d.lock("q", "r", skip_locked=True)
        self.claim_heads = f"{heads} ORDER BY q.pos LIMIT {p}{lock}"
        self.claim_heads_modes = f"{heads} WHERE {d.in_list('q.mode')} ORDER BY q.pos LIMIT {p}{lock}"
        self.dequeue = f"DELETE FROM queue WHERE {d.in_list('pos')}"
        self.dequeue_rollout = f"DELETE FROM queue WHERE rollout_id = {p}"
        self.start_rollout = (
            f"UPDATE rollouts SET status = {p}, attempts = {p}, updated_at = {p} WHERE rollout_id = {p}"
        )
        self.start_rollouts = (  # a claim batch: every rollout of one (status, attempts) in one statement
            f"UPDATE rollouts SET status = {p}, attempts = {p}, updated_at = {p} WHERE {d.in_list('rollout_id')}"
        )
        self.move_rollout = (
            f"UPDATE rollouts SET status = {p}, updated_at = {p}, reward = {p}, error = {p} WHERE rollout_id = {p}"
        )
        self.cancel_rollout = f"UPDATE rollouts SET status = {p}, updated_at = {p} WHERE rollout_id = {p}"
        self.count_rollouts = "SELECT COUNT(*) FROM rollouts"
        # -- attempts -----------------------------------------------------------------------------
        join = "FROM attempts a JOIN rollouts r ON r.rollout_id = a.rollout_id"
        self.attempt_with_rollout = f"SELECT {RA} {join} WHERE a.attempt_id = {p}"
        self.rollout_of_attempt = f"SELECT rollout_id FROM attempts WHERE attempt_id = {p}"
        self._insert_attempts = [""] + [insert(ATTEMPTS, p, rows=n) for n in range(1, INSERT_ROWS + 1)]
        self.heartbeat = f"UPDATE attempts SET heartbeat_at = {p}, lease_expires_at = {p} WHERE attempt_id = {p}"
        self.end_attempt = f"UPDATE attempts SET status = {p}, ended_at = {p}, error = {p} WHERE attempt_id = {p}"
        self.attempts_of = f"SELECT {A} FROM attempts WHERE rollout_id = {p} ORDER BY number"
        self.attempts_of_in = f"SELECT {A} FROM attempts WHERE {d.in_list('rollout_id')} ORDER BY number"
        self.running_attempts_locked = (
            f"SELECT {A} FROM attempts WHERE rollout_id = {p} AND status = '{RUNNING}' ORDER BY number{d.lock()}"
        )
        self.lease_run_out = f"SELECT 1 FROM attempts WHERE {running_with_lease_before} LIMIT 1"
        self.expired = (
            f"SELECT {RA} {join} WHERE a.status = '{RUNNING}' AND a.lease_expires_at < {p} "
            f"ORDER BY a.lease_expires_at{d.lock('a', 'r', skip_locked=True)}"
        )
        self.rollouts_of_attempts = f"SELECT attempt_id, rollout_id FROM attempts WHERE {d.in_list('attempt_id')}"
        self.attempt_exists = f"SELECT 1 FROM attempts WHERE attempt_id = {p}"
        self.attempt_has_spans = f"SELECT 1 FROM spans WHERE attempt_id = {p} LIMIT 1"
        self.delete_attempt = f"DELETE FROM attempts WHERE attempt_id = {p}"
        # -- spans --------------------------------------------------------------------------------
        self.stored_span_keys = (
            f"SELECT attempt_id, seq FROM spans WHERE {d.in_list('attempt_id')} AND {d.in_list('seq')}"
        )
        self.last_positions = (
            f"SELECT attempt_id, MAX(position) FROM spans WHERE {d.in_list('attempt_id')} GROUP BY attempt_id"
        )
        self.insert_spans = insert(SPANS, p, " ON CONFLICT DO NOTHING")
        self.last_llm_call = (
            f"SELECT seq FROM spans WHERE attempt_id = {p} AND kind = '{LLM_CALL}' ORDER BY position DESC LIMIT 1"
        )
        self.llm_calls_of = f"SELECT {S} FROM spans WHERE attempt_id = {p} AND kind = '{LLM_CALL}' ORDER BY position"
        self.spans_of_attempt = f"SELECT {S} FROM spans WHERE attempt_id = {p} ORDER BY position"
        self.spans_of_rollout = (
            f"SELECT {columns(SPANS, 's')} FROM spans s JOIN attempts a ON a.attempt_id = s.attempt_id "
            f"WHERE a.rollout_id = {p} ORDER BY a.number, s.position"
        )
        self.spans_of_attempts = f"SELECT {S} FROM spans WHERE {d.in_list('attempt_id')} ORDER BY attempt_id, position"
        # -- resources and meta -------------------------------------------------------------------
        self.latest_version = f"SELECT MAX(version) FROM resources WHERE name = {p}"
        self.insert_resource = insert(RESOURCES, p)
        self.resource = f"SELECT {columns(RESOURCES)} FROM resources WHERE name = {p} AND version = {p}"
        self.resource_names = "SELECT DISTINCT name FROM resources ORDER BY name"
        self.count_by_mode_status = "SELECT mode, status, COUNT(*) FROM rollouts GROUP BY mode, status"
        self.meta_value = f"SELECT value FROM meta WHERE key = {p}"
        self.meta_value_locked = self.meta_value + d.lock()
        self.insert_meta = f"INSERT INTO meta (key, value) VALUES ({p}, {p}) ON CONFLICT DO NOTHING"
        # -- postgres only: wake-ups and advisory locks (sqlite's write lock needs neither) -----------
        self.notify = f"SELECT pg_notify({p}, '')"
        self.advisory_lock = f"SELECT pg_advisory_xact_lock(hashtext({p}))"

    def insert_attempts(self, n: int) -> str:
        """``INSERT`` of ``n`` (1 to :data:`INSERT_ROWS`) attempts in one statement (a claim batch)."""
        return self._insert_attempts[n]

    def query_rollouts(self, used: tuple[str, ...]) -> tuple[str, str]:
        """``(count, page)`` statements of ``query_rollouts`` with the filters named in ``used`` (a subset of
        :data:`QUERY_FILTERS`, in that order); parameters: one per filter, then ``limit, offset``."""
        out = self._query_cache.get(used)
        if out is None:
            d, p = self.dialect, self.dialect.param
            conditions = {
                "status": d.in_list("status"),
                "mode": f"mode = {p}",
                "group_id": f"group_id = {p}",
                "resources_version": f"resources_version = {p}",
                "created_after": f"created_at >= {p}",
                "created_before": f"created_at < {p}",
                "rollout_ids": d.in_list("rollout_id"),
            }
            clause = f" WHERE {' AND '.join(conditions[f] for f in used)}" if used else ""
            page = f"SELECT {R} FROM rollouts{clause} ORDER BY seq LIMIT {p} OFFSET {p}"
            out = f"SELECT COUNT(*) FROM rollouts{clause}", page
            self._query_cache[used] = out  # at most 2^7 entries: one per subset of the filters
        return out


    def sorted_rollouts(self, used: tuple[str, ...], order: str) -> tuple[str, str]:
        """``(count, page)`` statements of the dashboard's rollouts table: equality filters on the columns named in
        ``used`` (``status``, ``mode``, ``group_id``, ``resources_version``; one parameter each, then ``limit,
        offset``), sorted by ``order`` (an ``ORDER BY`` list the caller builds from its own whitelist).

        A deferred join: the sort, which must keep offset + limit rows, carries only the key and ``seq``, and the
        wide rows (task, metadata) are read for the one page — at 100,000 rows and offset 90,000, 4–9× faster than
        sorting whole rows (``tracerl bench dashboard``, on a loaded 2-core machine)."""
        unknown = set(used) - {"status", "mode", "group_id", "resources_version"}
        if unknown:
            raise ValueError(f"sorted_rollouts cannot filter on {sorted(unknown)}")
        p = self.dialect.param
        clause = f" WHERE {' AND '.join(f'{c} = {p}' for c in used)}" if used else ""
        page = f"SELECT seq FROM rollouts{clause} ORDER BY {order} LIMIT {p} OFFSET {p}"
        return (f"SELECT COUNT(*) FROM rollouts{clause}",
                f"SELECT {R} FROM rollouts WHERE seq IN ({page}) ORDER BY {order}")  # fmt: skip


SQLITE_QUERIES = Queries(SQLITE)
POSTGRES_QUERIES = Queries(POSTGRES)
