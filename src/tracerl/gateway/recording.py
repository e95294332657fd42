"""Which attempt a call belongs to, and writing it to the store as ``llm_call`` spans.

**Sequence numbers.** A span's identity is ``(attempt_id, seq)`` and writes are idempotent, so two
writers that pick the same ``seq`` for one attempt would silently lose a span. Spans of one attempt are
written by several processes (this gateway, the runner emitting rewards, maybe a second gateway), so a
per-process counter is not enough. The gateway uses time as the counter:

    seq = max(⌊unix time in µs⌋, previous seq in this process + 1)

which is strictly increasing within a process, ordered by time across processes (so "the latest call
before this reward" means the same thing to everyone) and fits in a signed 64-bit integer (≈ 1.8·10¹⁵ in
2026; JSON-safe below 2⁵³ until the year 2255). Two processes could still pick the same microsecond: a
write that :meth:`Store.add_spans` reports as not new is read back, and when the stored span is not
this call's (different ``call_id``) the gateway moves to the next free ``seq`` and writes again.

The counter is :func:`tracerl.tracing.next_seq`, shared with the tracing API (rewards, messages) so that
one process never has two counters. n > 1 choices become n spans with increasing seqs, one choice each.
"""

from __future__ import annotations

import logging

from tracerl.errors import AttemptFinished, NotFound, ServerError
from tracerl.store.base import Store
from tracerl.tracing import next_seq
from tracerl.types import AttemptStatus, Span

log = logging.getLogger(__name__)

MAX_SEQ_RETRIES = 8


def next_seqs(count: int = 1) -> list[int]:
    """``count`` fresh, increasing span seqs from the process-wide counter :func:`tracerl.tracing.next_seq`
    (one counter per process, so a gateway and a runner in one process never pick the same seq)."""
    return [next_seq() for _ in range(count)]


def check_attempt(store: Store, rollout_id: str, attempt_id: str) -> None:
    """Raise ``NotFound`` (404) unless the attempt exists and belongs to the rollout, and
    ``AttemptFinished`` (409) unless it is still running."""
    try:
        attempts = store.get_attempts(rollout_id)
    except NotFound:
        attempts = None
    attempt = next((a for a in attempts or [] if a.attempt_id == attempt_id), None)
    if attempt is None:
        what = "no rollout" if attempts is None else "a rollout without attempt"
        raise NotFound(
            f"the URL names {what} {rollout_id!r} / attempt {attempt_id!r}: use the base_url "
            "(http://HOST:PORT/r/<rollout_id>/<attempt_id>/v1) the runner gave the agent"
        )
    if attempt.status is not AttemptStatus.RUNNING:
        raise AttemptFinished(
            f"attempt {attempt_id!r} of rollout {rollout_id!r} is {attempt.status.value}, not running; "
            "its LLM calls can no longer be recorded"
        )


def _same_call(a: Span, b: Span) -> bool:
    keys = ("call_id", "choice_index")
    return all(a.attributes.get(k) == b.attributes.get(k) for k in keys)


def write_spans(store: Store, spans: list[Span]) -> None:
    """Write one call's spans (all of one attempt), moving any whose seq another writer already took."""
    if not spans or store.add_spans(spans) == len(spans):
        return
    # Some were not new: another writer holds that seq, or an earlier try of ours landed (HTTP retry).
    stored = {s.seq: s for s in store.get_spans(attempt_id=spans[0].attempt_id)}
    for span in spans:
        for _ in range(MAX_SEQ_RETRIES):
            there = stored.get(span.seq)
            if there is not None and _same_call(there, span):
                break
            if there is not None:
                log.info("seq %d of attempt %s is taken by another writer; moving this span", span.seq, span.attempt_id)
                span.seq = next_seqs()[0]
            if store.add_spans([span]) == 1:
                break
            stored = {s.seq: s for s in store.get_spans(attempt_id=span.attempt_id)}
        else:
            raise ServerError(f"could not find a free span seq for attempt {span.attempt_id!r}")
