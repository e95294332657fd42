"""Rows ↔ objects for the SQL backends: column lists, the transaction protocol, row converters.

Shared by ``sql.py`` (the contract over SQL), ``sqlite.py`` and ``postgres.py``. JSON columns (task,
metadata, attributes, resource values) are stored as compact text; token columns are packed by ``codec``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from tracerl.errors import InvalidInput
from tracerl.store import codec
from tracerl.types import Attempt, AttemptStatus, Mode, Rollout, RolloutStatus, Span, SpanKind

Row = tuple[Any, ...]

R_COLS = (
    "rollout_id, task, mode, group_id, status, max_attempts, attempts, resources_version, reward, error, "
    "idempotency_key, metadata, created_at, updated_at"
)
A_COLS = (
    "attempt_id, rollout_id, number, worker_id, status, lease_expires_at, heartbeat_at, started_at, ended_at, error"
)
S_COLS = (
    "attempt_id, seq, rollout_id, kind, name, parent_seq, start_time, end_time, attributes, position, "
    "prompt, prompt_ref, prefix_len, response, logprobs"
)
R_ALIASED = ", ".join(f"r.{c.strip()}" for c in R_COLS.split(","))
RA_COLS = R_ALIASED + ", " + ", ".join(f"a.{c.strip()}" for c in A_COLS.split(","))
N_R = len(R_COLS.split(","))
RUNNING = AttemptStatus.RUNNING.value


class Tx(Protocol):
    """One open transaction: run statements with ``?`` placeholders."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    def run(self, sql: str, params: Sequence[Any] = ()) -> int: ...
    def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run a statement whose result is not needed (postgres pipelines it: no round trip of its own)."""

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int: ...


def dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{what} must be JSON-serialisable: {e}") from None


def row_rollout(row: Row) -> Rollout:
    return Rollout(
        rollout_id=row[0],
        task=json.loads(row[1]),
        mode=Mode(row[2]),
        group_id=row[3],
        status=RolloutStatus(row[4]),
        max_attempts=row[5],
        attempts=row[6],
        resources_version=row[7],
        reward=row[8],
        error=row[9],
        idempotency_key=row[10],
        metadata=json.loads(row[11]),
        created_at=row[12],
        updated_at=row[13],
    )


def row_attempt(row: Row) -> Attempt:
    return Attempt(
        attempt_id=row[0],
        rollout_id=row[1],
        number=row[2],
        worker_id=row[3],
        status=AttemptStatus(row[4]),
        lease_expires_at=row[5],
        heartbeat_at=row[6],
        started_at=row[7],
        ended_at=row[8],
        error=row[9],
    )


def row_packed(row: Row) -> codec.PackedTokens:
    """The token columns (last five of ``S_COLS``) of a span row."""
    prompt, ref, prefix_len, response, logprobs = row[-5:]
    return codec.PackedTokens(
        prompt=None if prompt is None else bytes(prompt),
        prompt_ref=ref,
        prefix_len=prefix_len or 0,
        response=None if response is None else bytes(response),
        logprobs=None if logprobs is None else bytes(logprobs),
    )


def decode_spans(rows: Sequence[Row]) -> list[Span]:
    """Span rows (``S_COLS``, each attempt's rows in position order) → spans with full token lists."""
    trackers: dict[str, codec.ContextTracker] = {}
    out: list[Span] = []
    for row in rows:
        kind = SpanKind(row[3])
        tracker = trackers.setdefault(row[0], codec.ContextTracker())
        prompt, response, logprobs = tracker.decode(row[1], row_packed(row), kind is SpanKind.LLM_CALL)
        out.append(
            Span(
                attempt_id=row[0],
                seq=row[1],
                rollout_id=row[2],
                kind=kind,
                name=row[4],
                parent_seq=row[5],
                start_time=row[6],
                end_time=row[7],
                attributes=json.loads(row[8]),
                prompt_ids=prompt,
                response_ids=response,
                logprobs=logprobs,
                position=row[9],
            )
        )
    return out
