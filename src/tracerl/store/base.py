"""The store contract: the one narrow interface every backend implements and every part talks through.

A backend implements the abstract methods of :class:`Store`; the status machine (``status.py``), input
validation and id generation live here once. The contract test suite (``tests/store``) runs the same tests
against every backend: memory, sqlite, postgres and the HTTP client against a real ``tracerl serve``.

Typical life of a rollout::

    [r] = store.enqueue([RolloutSpec(task={"q": "2+2"}, group_id="g1")])
    claim = store.claim("worker-1", lease_s=30)          # rollout running, new attempt with a lease
    store.heartbeat(claim.attempt.attempt_id)            # extends the lease
    store.add_spans([Span(claim.attempt.attempt_id, 0, SpanKind.LLM_CALL, ...)])
    store.finish(claim.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=1.0)
"""

from __future__ import annotations

import abc
import math
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, cast

from tracerl.errors import InvalidInput
from tracerl.types import (
    Attempt,
    AttemptStatus,
    Claim,
    Mode,
    Page,
    Resource,
    Rollout,
    RolloutQuery,
    RolloutSpec,
    RolloutStatus,
    RolloutTrace,
    Span,
    SpanKind,
)

DEFAULT_LEASE_S = 60.0
MAX_LEASE_S = 86_400.0
MAX_QUERY_LIMIT = 10_000
MAX_CLAIM_MANY = 1_000
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1  # token ids are stored packed as int32
MAX_JSON_DEPTH = 64
"""Deepest nesting of a stored JSON value (task, metadata, span attributes, resource value); the top-level
object is level 1. Far above what agents send, far below what every JSON library can read and write back
(orjson writes at most 255 levels), so nothing stored can become unreadable."""
MAX_ID_CHARS = 256
"""Longest id, idempotency key, group id, worker id, resource or experiment name, in characters."""
_CONTAINERS = frozenset({dict, list, tuple})


def new_id(prefix: str) -> str:
    """A random, sortable-enough id such as ``ro-3f2a9c...`` (prefix says what it names)."""
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


class Store(abc.ABC):
    """Durable job queue of rollouts plus the spans and resources they produce.

    All methods are thread-safe. Errors are :mod:`tracerl.errors` classes whatever the backend.
    """

    url: str = ""

    # -- rollouts ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def enqueue(self, specs: Sequence[RolloutSpec]) -> list[Rollout]:
        """Add rollouts as ``queued``. A spec whose ``idempotency_key`` was enqueued before returns the
        existing rollout instead of a new one. ``group_id`` defaults to the new rollout's own id."""

    @abc.abstractmethod
    def claim(
        self,
        worker_id: str,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        modes: Sequence[Mode] | None = None,
        wait_s: float = 0.0,
    ) -> Claim | None:
        """Atomically take the oldest queued rollout (of ``modes``, if given) and start a new attempt with
        a lease of ``lease_s`` seconds. Two claimers never get the same rollout. Waits up to ``wait_s`` for
        one to be enqueued; returns ``None`` if none came."""

    def claim_many(
        self, worker_id: str, n: int, *, lease_s: float = DEFAULT_LEASE_S, modes: Sequence[Mode] | None = None
    ) -> list[Claim]:
        """Up to ``n`` (≤ :data:`MAX_CLAIM_MANY`) queued rollouts claimed at once, oldest first, without
        waiting: what :meth:`claim` does ``n`` times, which is how this default does it. The SQL backends
        override it with one transaction (one commit for the lot, the claim rule unchanged)."""
        validate_claim_count(n)
        out: list[Claim] = []
        for _ in range(n):
            c = self.claim(worker_id, lease_s=lease_s, modes=modes)
            if c is None:
                break
            out.append(c)
        return out

    @abc.abstractmethod
    def heartbeat(self, attempt_id: str, *, lease_s: float = DEFAULT_LEASE_S) -> Attempt:
        """Extend a running attempt's lease to now + ``lease_s``. Raises ``AttemptFinished`` if it ended
        (for example because its lease had already expired)."""

    @abc.abstractmethod
    def finish(
        self,
        attempt_id: str,
        status: AttemptStatus,
        *,
        reward: float | None = None,
        error: str | None = None,
    ) -> Rollout:
        """End a running attempt and move its rollout on (see ``status.rollout_after_attempt``).

        One rule with :meth:`heartbeat`: an attempt whose lease has run out is over, whether or not anything
        expired it yet — it is ended as ``unresponsive`` and ``AttemptFinished`` is raised."""

    @abc.abstractmethod
    def release(self, attempt_id: str) -> Rollout:
        """Hand back a running attempt whose agent never started (a runner's prefetched claim it will not run):
        the attempt is deleted and its rollout queued again as if it had not been claimed (the attempt costs
        none of ``max_attempts``; :func:`status.release_attempt`). Returns the rollout. Raises
        ``AttemptFinished`` if the attempt ended (with :meth:`heartbeat`'s rule for a lease that ran out),
        ``InvalidInput`` if spans were recorded for it (it started: finish it instead), ``NotFound`` if unknown."""

    @abc.abstractmethod
    def cancel(self, rollout_id: str) -> Rollout:
        """Cancel a queued or running rollout (a running attempt ends as ``cancelled``)."""

    @abc.abstractmethod
    def get_rollout(self, rollout_id: str) -> Rollout:
        """One rollout by id; ``NotFound`` if there is none."""

    @abc.abstractmethod
    def get_attempts(self, rollout_id: str) -> list[Attempt]:
        """The attempts of a rollout, oldest first; ``NotFound`` for an unknown rollout."""

    @abc.abstractmethod
    def query_rollouts(self, query: RolloutQuery) -> Page:
        """Rollouts matching every given filter, ordered by creation time, one page at a time."""

    @abc.abstractmethod
    def wait(self, rollout_ids: Sequence[str], *, timeout_s: float) -> list[Rollout]:
        """Block until every named rollout is final or ``timeout_s`` passed; return those that are final."""

    @abc.abstractmethod
    def expire_leases(self, now: float | None = None) -> list[Attempt]:
        """End every running attempt whose lease ran out as ``unresponsive`` and requeue (or fail) its
        rollout. Returns the attempts that were expired. Backends also call this before claiming."""

    # -- spans -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def add_spans(self, spans: Sequence[Span]) -> int:
        """Record spans of running or finished attempts. Idempotent on ``(attempt_id, seq)``: a span that
        is already stored is left as it is (and keeps its position). Each new span gets the next
        ``position`` of its attempt, in the order given (:mod:`tracerl.store.order`); a ``position`` sent
        by the writer is ignored. Returns how many were new. ``NotFound`` for unknown attempts."""

    @abc.abstractmethod
    def get_spans(self, *, rollout_id: str | None = None, attempt_id: str | None = None) -> list[Span]:
        """Spans of one attempt, or of every attempt of one rollout, ordered by (attempt number, position)."""

    @abc.abstractmethod
    def get_traces(self, rollout_ids: Sequence[str]) -> list[RolloutTrace]:
        """For each of ``rollout_ids`` (at most :data:`MAX_QUERY_LIMIT`), in that order: the rollout, its
        attempts and the spans of its final attempt (:class:`RolloutTrace`), read in one call and one
        snapshot, so a trainer's step costs a constant number of store calls. ``NotFound`` for an unknown id."""

    # -- resources ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def put_resource(self, name: str, value: dict[str, Any]) -> Resource:
        """Store ``value`` as the next version of ``name`` (1 for the first). Versions never change."""

    @abc.abstractmethod
    def get_resource(self, name: str, version: int | None = None) -> Resource:
        """The given version of ``name``, or its latest; ``NotFound`` if there is none."""

    # -- experiment binding ------------------------------------------------------------------------
    @abc.abstractmethod
    def bind_experiment(self, name: str) -> None:
        """Claim this store for experiment ``name``. Binding the same name again is fine; a different
        name raises ``ExperimentConflict`` so two trainers never silently share one store."""

    def close(self) -> None:  # noqa: B027 - optional for backends without resources to free
        """Release connections/files. The store must not be used afterwards."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- validation shared by every backend ------------------------------------------------------------


def validate_spec(spec: object) -> RolloutSpec:
    """Check a spec's types and ranges (callers may pass anything); returns it with ``mode`` normalised to
    :class:`Mode`."""
    if not isinstance(spec, RolloutSpec):
        raise InvalidInput(f"expected a RolloutSpec, got {type(spec).__name__}")
    task = cast(object, spec.task)  # what callers promise is checked, not assumed
    if not isinstance(task, dict):
        raise InvalidInput(f"rollout task must be a JSON object (dict), got {type(task).__name__}")
    try:
        spec.mode = Mode(spec.mode)
    except ValueError:
        raise InvalidInput(f"rollout mode {spec.mode!r} is not one of {[m.value for m in Mode]}") from None
    max_attempts = cast(object, spec.max_attempts)
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidInput(f"max_attempts must be an integer ≥ 1, got {max_attempts!r}")
    if spec.group_id is not None:
        validate_id(spec.group_id, "group_id")
    if spec.idempotency_key is not None:
        validate_id(spec.idempotency_key, "idempotency_key")
    validate_json_depth(spec.task, "rollout task")
    validate_json_depth(spec.metadata, "rollout metadata")
    return spec


def validate_span(span: object) -> Span:
    """Check a span's types (callers may pass anything); ``logprobs`` must match ``response_ids`` in length."""
    if not isinstance(span, Span):
        raise InvalidInput(f"expected a Span, got {type(span).__name__}")
    validate_id(span.attempt_id, "span attempt_id")
    if span.rollout_id:
        validate_id(span.rollout_id, "span rollout_id")
    seq = cast(object, span.seq)
    if not isinstance(seq, int) or seq < 0:
        raise InvalidInput(f"span seq must be an integer ≥ 0, got {seq!r}")
    try:
        span.kind = SpanKind(span.kind)
    except ValueError:
        raise InvalidInput(f"span kind {span.kind!r} is not one of {[k.value for k in SpanKind]}") from None
    attributes = cast(object, span.attributes)
    if not isinstance(attributes, dict):
        raise InvalidInput(f"span attributes must be a JSON object, got {type(attributes).__name__}")
    validate_json_depth(span.attributes, "span attributes")
    name = cast(object, span.name)
    if isinstance(name, str) and "\x00" in name:
        span.name = name.replace("\x00", "\ufffd")  # see free_text
    if span.prompt_ids is not None:
        _check_token_ids(span.prompt_ids, "prompt_ids")
    if span.response_ids is not None:
        _check_token_ids(span.response_ids, "response_ids")
    if span.logprobs is not None:
        _check_logprobs(span.logprobs, span.response_ids)
    return span


def _check_token_ids(ids: object, what: str) -> None:
    """``InvalidInput`` naming span ``what`` unless ``ids`` is a list of int32 token ids."""
    if not isinstance(ids, list) or not set(map(type, cast(list[object], ids))) <= {int}:  # C-speed check
        raise InvalidInput(f"span {what} must be a list of integers")
    checked = cast(list[int], ids)
    if checked and not (min(checked) >= INT32_MIN and max(checked) <= INT32_MAX):
        raise InvalidInput(f"span {what} holds an id outside the 32-bit range; token ids are stored as int32")


def _check_logprobs(values: object, response_ids: list[int] | None) -> None:
    """``InvalidInput`` unless ``values`` is a list of numbers, one per response id."""
    items = cast(list[object], values) if isinstance(values, list) else None
    if items is None or not (
        set(map(type, items)) <= {float, int}  # the fast path; numpy scalars take the slow one
        or all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items)
    ):
        raise InvalidInput("span logprobs must be a list of numbers")
    if response_ids is None or len(items) != len(response_ids):
        raise InvalidInput(
            f"span logprobs has {len(items)} values but response_ids has "
            f"{0 if response_ids is None else len(response_ids)}; they must match one to one"
        )


def validate_reward(reward: object) -> float | None:
    if reward is None:
        return None
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
        raise InvalidInput(f"reward must be a finite number or None, got {reward!r}")
    return float(reward)


def validate_finish(status: object, reward: object, error: object) -> tuple[AttemptStatus, float | None, str | None]:
    """Check the arguments of :meth:`Store.finish`; returns them with ``status`` as :class:`AttemptStatus`."""
    checked_reward = validate_reward(reward)
    try:
        checked = AttemptStatus(status)
    except ValueError:
        raise InvalidInput(f"attempt status {status!r} is not one of {[s.value for s in AttemptStatus]}") from None
    if error is not None and not isinstance(error, str):
        raise InvalidInput(f"error must be a string or None, got {type(error).__name__}")
    return checked, checked_reward, free_text(error)


def free_text(text: str | None) -> str | None:
    """``text`` with NUL characters replaced by U+FFFD: postgres cannot store NUL, and an error message or
    span name (free text from agents, tracebacks) is better kept slightly changed than refused, so every
    backend stores the same thing."""
    return text.replace("\x00", "\ufffd") if text and "\x00" in text else text


def validate_lease(lease_s: object) -> float:
    if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)) or not 0 < lease_s <= MAX_LEASE_S:
        raise InvalidInput(f"lease_s must be a number of seconds in (0, {MAX_LEASE_S:.0f}], got {lease_s!r}")
    return float(lease_s)


def validate_query(query: object) -> RolloutQuery:
    """Check ranges and normalise ``status``/``mode`` to their enums (``InvalidInput`` if unknown); callers may
    pass anything."""
    if not isinstance(query, RolloutQuery):
        raise InvalidInput(f"expected a RolloutQuery, got {type(query).__name__}")
    try:
        query.status = [RolloutStatus(s) for s in query.status] if query.status is not None else None
    except ValueError:
        raise InvalidInput(f"query status {query.status!r} must be among {[s.value for s in RolloutStatus]}") from None
    try:
        query.mode = Mode(query.mode) if query.mode is not None else None
    except ValueError:
        raise InvalidInput(f"query mode {query.mode!r} is not one of {[m.value for m in Mode]}") from None
    limit, offset = cast(object, query.limit), cast(object, query.offset)
    if isinstance(limit, bool) or not isinstance(limit, int) or not isinstance(offset, int):
        raise InvalidInput(f"query limit and offset must be integers, got {limit!r} and {offset!r}")
    if not 1 <= query.limit <= MAX_QUERY_LIMIT:
        raise InvalidInput(f"query limit must be in [1, {MAX_QUERY_LIMIT}], got {query.limit}")
    if query.offset < 0:
        raise InvalidInput(f"query offset must be ≥ 0, got {query.offset}")
    if query.group_id is not None:
        validate_id(query.group_id, "query group_id")
    if query.rollout_ids is not None:
        validate_ids(query.rollout_ids, "query rollout_ids")
    return query


def validate_resource_name(name: object) -> str:
    return validate_id(name, "resource name")


def validate_ids(values: object, what: str) -> list[str]:
    """:func:`validate_id` for each of ``values`` (a list or tuple of ids)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidInput(f"{what} must be a list of ids, got {_short(values)}")
    return [validate_id(v, what) for v in cast(Iterable[object], values)]


def validate_version(version: object) -> int | None:
    """``version`` if it is ``None`` (the latest) or an integer: the version argument of ``get_resource``."""
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise InvalidInput(f"resource version must be an integer or None, got {version!r}")
    return version


def validate_resource_value(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"resource value must be a JSON object, got {type(value).__name__}")
    checked = cast(dict[str, Any], value)
    validate_json_depth(checked, "resource value")
    return checked


def validate_id(value: object, what: str) -> str:
    """``value`` if it is a usable id: a non-empty string of at most :data:`MAX_ID_CHARS` characters
    without NUL (which postgres cannot store, so no backend accepts it)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{what} must be a non-empty string, got {_short(value)}")
    if len(value) > MAX_ID_CHARS:
        raise InvalidInput(
            f"{what} is {len(value)} characters long ({_short(value)}); the limit is {MAX_ID_CHARS}: "
            "use a shorter id (a hash of a long key works)"
        )
    if "\x00" in value:
        raise InvalidInput(f"{what} {_short(value)} contains a NUL character, which no store backend accepts")
    return value


def release_refused(attempt_id: str) -> InvalidInput:
    """The error :meth:`Store.release` raises for an attempt that has recorded spans."""
    return InvalidInput(
        f"attempt {attempt_id!r} has recorded spans, so its agent started; only an attempt that never started "
        "can be released: finish it instead"
    )


def validate_json_depth(value: object, what: str, limit: int = MAX_JSON_DEPTH) -> None:
    """``InvalidInput`` if ``value`` nests dicts/lists deeper than ``limit`` levels.

    Walks one nesting level at a time; a level's scalars are skipped at C speed (``map(type, ...)``), so a
    flat value with thousands of entries costs microseconds."""
    if not isinstance(value, (dict, list, tuple)):
        return
    level: list[object] = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise InvalidInput(
                f"{what} is nested more than {limit} levels deep (stored JSON values may nest at most "
                f"{MAX_JSON_DEPTH} levels); flatten it, or store the deep part as a JSON string"
            )
        deeper: list[object] = []
        for v in level:  # each a dict, list or tuple
            children = cast(dict[object, object], v).values() if isinstance(v, dict) else cast(list[object], v)
            if not _CONTAINERS.isdisjoint(map(type, children)):
                deeper.extend(c for c in children if type(c) in _CONTAINERS)
        level = deeper


def _short(value: object) -> str:
    """``repr(value)``, cut to 60 characters so a megabyte id does not end up in an error message."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}...({len(text)} chars)"


def validate_trace_ids(rollout_ids: object) -> list[str]:
    """The ids of a :meth:`Store.get_traces` call, checked (each an id; at most :data:`MAX_QUERY_LIMIT`)."""
    ids = validate_ids(rollout_ids, "rollout_ids")
    if len(ids) > MAX_QUERY_LIMIT:
        raise InvalidInput(
            f"get_traces takes at most {MAX_QUERY_LIMIT} rollout ids, got {len(ids)}; read them in chunks"
        )
    return ids


def validate_claim_count(n: object) -> int:
    """``n`` if it is a count :meth:`Store.claim_many` accepts: an integer in [1, :data:`MAX_CLAIM_MANY`]."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CLAIM_MANY:
        raise InvalidInput(f"claim_many takes a count in [1, {MAX_CLAIM_MANY}], got {n!r}")
    return n
