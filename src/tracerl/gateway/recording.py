"""Which attempt a call belongs to, and writing it to the store as ``llm_call`` spans.

Each choice of a call becomes one span with a fresh random identity (``seq``,
:func:`tracerl.store.order.new_seq`); the store gives it its position in the attempt when it is written,
which the gateway does before it answers the call, so the store's order is the order of the calls
(:mod:`tracerl.store.order`). A retried write of the same call is recognised by its ``call_id`` and
``choice_index`` and left alone. n > 1 choices become n spans in choice order.
"""

from __future__ import annotations

import logging

from tracerl.errors import AttemptFinished, NotFound
from tracerl.store import order
from tracerl.store.base import Store
from tracerl.types import AttemptStatus, Span

log = logging.getLogger(__name__)


def new_seqs(count: int = 1) -> list[int]:
    """``count`` fresh span identities (:func:`tracerl.store.order.new_seq`)."""
    return [order.new_seq() for _ in range(count)]


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
    """Write one call's spans (all of one attempt); a retried write of the same call adds nothing."""
    order.write_spans(store.add_spans, lambda aid: store.get_spans(attempt_id=aid), spans, _same_call)
