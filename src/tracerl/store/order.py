"""The order of spans within an attempt: assigned by the store when a span is written, never by a clock.

Two numbers describe a stored span:

* ``seq`` — its **identity** within the attempt, chosen by the writer once per span (:func:`new_seq`: a
  random integer in ``[0, 2^53)``, JSON-exact; OTLP ingest derives it from the OTel span id). A retried
  write of the same span carries the same ``seq`` and is ignored by the store (``add_spans`` is idempotent on
  ``(attempt_id, seq)``), so retries never duplicate a span nor move it.
* ``position`` — its **order**: ``0, 1, 2, …`` within the attempt, given by the store in the order the
  writes arrive (the spans of one ``add_spans`` call in the order they are listed)::

      position(new span) = 1 + max(position of the attempt's stored spans)   (0 for the first)

  Writers never send it. Credit assignment sorts an attempt's calls and rewards by ``position``, so a
  writer whose clock is off (a runner on another machine, an OTel exporter) cannot misplace anything.

Arrival order is the order things happened because every writer stores a span before the agent can act on
what the span describes: the gateway writes an ``llm_call`` span before it answers the call, and an
``emit_*`` call returns only once the runner has written its span (:mod:`tracerl.runner.worker`). OTLP
batches arrive after the fact, so ingest sorts each batch by start time (one clock, the agent's) before
writing it.

Two writers picking the same random ``seq`` for one attempt happens with probability about
``n² / 2^54`` for ``n`` spans (≈ 10⁻¹² for 100 spans); :func:`write_spans` still checks, and gives a span
whose ``seq`` holds another writer's span a fresh one.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable, Sequence

from tracerl.errors import ServerError
from tracerl.types import Span, SpanKind

log = logging.getLogger(__name__)

SEQ_BITS = 53
"""``seq`` values are below ``2^53`` so they survive every JSON reader as exact integers."""
MAX_SEQ_DRAWS = 8


def new_seq() -> int:
    """A fresh span identity: a random integer in ``[0, 2^53)`` (see the module docstring)."""
    return secrets.randbits(SEQ_BITS)


def assign_positions(spans: Sequence[Span], next_position: Callable[[str], int]) -> list[int]:
    """The positions of ``spans`` (new to the store, in arrival order) within their attempts.

    ``next_position(attempt_id)`` is the first free position of an attempt in the store (``1 + max``, or
    0); spans of one attempt take consecutive positions from there in list order. Pure but for that call,
    made once per attempt."""
    free: dict[str, int] = {}
    out: list[int] = []
    for s in spans:
        if s.attempt_id not in free:
            free[s.attempt_id] = next_position(s.attempt_id)
        out.append(free[s.attempt_id])
        free[s.attempt_id] += 1
    return out


def previous_llm_call(stored_last: int | None, batch: Iterable[Span], upto: int) -> int | None:
    """The ``seq`` of the ``llm_call`` span just before the ``upto``-th span of ``batch`` in store order:
    the last ``llm_call`` among ``batch[:upto]`` of the same attempt, else ``stored_last`` (the seq of the
    attempt's last stored ``llm_call``). A prompt may be stored as a suffix of that call's context."""
    items = list(batch)
    attempt = items[upto].attempt_id
    for s in reversed(items[:upto]):
        if s.attempt_id == attempt and s.kind is SpanKind.LLM_CALL:
            return s.seq
    return stored_last


def by_start_time(spans: Iterable[Span]) -> list[Span]:
    """``spans`` sorted by start time (ties by seq): the write order of a batch reported after the fact."""
    return sorted(spans, key=lambda s: (s.start_time, s.seq))


def _holds(stored: Span | None, span: Span, same: Callable[[Span, Span], bool]) -> bool:
    return stored is not None and same(stored, span)


class SeqTaken(ServerError):
    """No free ``seq`` was found for a span after :data:`MAX_SEQ_DRAWS` draws (the store keeps refusing)."""


def write_spans(
    add: Callable[[Sequence[Span]], int],
    read: Callable[[str], list[Span]],
    spans: Sequence[Span],
    same: Callable[[Span, Span], bool],
) -> int:
    """Write ``spans`` with ``add`` (a store's ``add_spans``); returns how many were new.

    When fewer were new than sent, each span's stored twin is read back (``read(attempt_id)``): one for
    which ``same(stored, span)`` holds is a retried write that already landed; one whose ``seq`` holds a
    different span gets a fresh :func:`new_seq` and is written again."""
    if not spans:
        return 0
    added = add(spans)
    pending = list(spans)
    for _ in range(MAX_SEQ_DRAWS):
        if added >= len(spans):
            return added
        stored = {(s.attempt_id, s.seq): s for aid in {p.attempt_id for p in pending} for s in read(aid)}
        taken = [s for s in pending if not _holds(stored.get((s.attempt_id, s.seq)), s, same)]
        if not taken:
            return added
        for span in taken:
            log.info("seq %d of attempt %s holds another writer's span; drawing a new seq", span.seq, span.attempt_id)
            span.seq = new_seq()
        added += add(taken)
        pending = taken
    raise SeqTaken(f"could not find a free span seq for {len(pending)} spans of attempt {pending[0].attempt_id!r}")
