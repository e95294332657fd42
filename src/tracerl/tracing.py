"""The tracing API an agent calls while it runs: ``emit_reward``, ``emit_message``, ``emit_error``,
``emit_span``.

Each call records one store :class:`~tracerl.types.Span` of the attempt that is running the agent::

    @tracerl.agent
    def my_agent(task: dict, llm: tracerl.LLM) -> float:
        ...
        tracerl.emit_reward(0.1, name="valid_sql")      # an intermediate reward
        tracerl.emit_message("retrying with a shorter prompt", step=2)
        return 1.0                                      # the final reward

Which attempt? The runner activates a :class:`TraceContext` around the agent call; it lives in a
:mod:`contextvars` variable, so it follows the code: asyncio tasks inherit it, as do threads started with a
copied context (``contextvars.copy_context().run``, ``asyncio.to_thread``). Plain ``threading.Thread`` and
``ThreadPoolExecutor`` threads do not copy contexts; for them the *process-wide fallback* applies: when the
context variable is unset and exactly one trace context is active in the process (always the case in the
runner's worker process, which runs one rollout at a time), that one is used.

Outside any run (the agent called directly, in production, in a unit test) the ``emit_*`` functions do
nothing but issue a :class:`TracingWarning` once per call site, so the same agent code runs unchanged with
and without tracerl. Invalid values (a NaN reward, attributes that are not JSON) raise
:class:`~tracerl.errors.InvalidInput` whether or not a run is active.

Order and identity of spans
---------------------------
Each span gets a random identity ``seq`` when it is recorded (:func:`tracerl.store.order.new_seq`), so a
retried write is recognised by the store and ignored; its order within the attempt (``position``) is
assigned by the store when it is written, never from a clock (:mod:`tracerl.store.order`). For the store's
order to be the order things happened, a span must be stored before the agent goes on: the runner writes
each span it receives from the agent's worker process at once and only then lets the ``emit_*`` call return.

Writing to the store: :class:`SpanWriter` buffers spans and writes them with one ``add_spans`` call per
batch (when ``batch_size`` spans are waiting, when the oldest waited ``max_delay_s``, and on
:meth:`SpanWriter.flush`, which the runner calls for every span the agent emits and before it finishes the
attempt). While the store is unreachable spans stay buffered, in order.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import numbers
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from tracerl.errors import InvalidInput, StoreUnavailable
from tracerl.store import order
from tracerl.store.base import Store
from tracerl.types import JSON, Span, SpanKind

logger = logging.getLogger(__name__)

#: the name of the reward span the runner writes for the agent's final reward
FINAL_REWARD = "final"


class TracingWarning(UserWarning):
    """An ``emit_*`` call was made outside an agent run, so nothing was recorded."""


# -- the trace context ---------------------------------------------------------------------------------

SpanSink = Callable[[Span], None]


class TraceContext:
    """The attempt that ``emit_*`` calls record into, and where its spans go (``sink``).

    The runner's worker process uses a sink that sends each span to the runner over a pipe; in-process
    code can use :meth:`SpanWriter.add`. ``final_reward`` remembers the last reward emitted with
    ``name="final"`` (the final reward of an agent that returns ``None``).
    """

    def __init__(self, rollout_id: str, attempt_id: str, sink: SpanSink) -> None:
        self.rollout_id = rollout_id
        self.attempt_id = attempt_id
        self.final_reward: float | None = None
        self._sink = sink
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def record(
        self,
        kind: SpanKind,
        name: str,
        attributes: JSON,
        *,
        start_time: float | None = None,
        end_time: float | None = None,
    ) -> Span | None:
        """Build the next span of this attempt and hand it to the sink; ``None`` once the run has ended."""
        if self._closed:
            _warn_outside(f"emit after the run of attempt {self.attempt_id!r} ended; the span was dropped")
            return None
        now = time.time()
        span = Span(
            attempt_id=self.attempt_id,
            seq=order.new_seq(),
            kind=kind,
            name=name,
            rollout_id=self.rollout_id,
            start_time=now if start_time is None else start_time,
            end_time=now if end_time is None else end_time,
            attributes=attributes,
        )
        if kind is SpanKind.REWARD and name == FINAL_REWARD:
            self.final_reward = attributes["value"]
        self._sink(span)
        return span

    def close(self) -> None:
        """End the run: later emits into this context are dropped with a warning."""
        self._closed = True


_current: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar("tracerl_trace", default=None)
_active: list[TraceContext] = []
_active_lock = threading.Lock()


@contextlib.contextmanager
def activate(ctx: TraceContext) -> Iterator[TraceContext]:
    """Make ``ctx`` the current trace context for the code inside the ``with`` (and the tasks and
    copied-context threads it starts); closes it on exit."""
    token = _current.set(ctx)
    with _active_lock:
        _active.append(ctx)
    try:
        yield ctx
    finally:
        with _active_lock:
            _active.remove(ctx)
        ctx.close()
        _current.reset(token)


def current() -> TraceContext | None:
    """The trace context ``emit_*`` would record into here, or ``None`` outside any run."""
    ctx = _current.get()
    if ctx is not None:
        return ctx
    with _active_lock:
        return _active[0] if len(_active) == 1 else None


def _warn_outside(message: str) -> None:
    warnings.warn(message, TracingWarning, stacklevel=4)


def _record(kind: SpanKind, name: str, attributes: JSON, **times: float | None) -> Span | None:
    ctx = current()
    if ctx is None:
        with _active_lock:
            several = len(_active) > 1
        why = (
            "several runs are active in this process and this thread has no context: start threads with "
            "contextvars.copy_context().run"
            if several
            else "no run is active"
        )
        _warn_outside(f"tracerl.emit_* called outside an agent run ({why}); nothing was recorded")
        return None
    return ctx.record(kind, name, attributes, **times)


# -- the public emit functions ---------------------------------------------------------------------------


def _check_attributes(attributes: dict[str, Any], what: str) -> JSON:
    try:
        json.dumps(attributes, allow_nan=False)
    except (TypeError, ValueError) as e:
        bad = next((k for k, v in attributes.items() if not _is_json(v)), None)
        raise InvalidInput(
            f"{what} attributes must be JSON values (str, number, bool, None, list, dict)"
            + (f"; {bad!r} is {type(attributes[bad]).__name__}" if bad is not None else f": {e}")
        ) from None
    return dict(attributes)


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def check_reward(value: Any, what: str = "reward") -> float:
    """``value`` as a float if it is a finite real number (``bool`` counts as 0/1, numpy scalars are fine);
    else :class:`InvalidInput`."""
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number, got {value!r} ({type(value).__name__})")
    return float(value)


def emit_reward(value: float, name: str | None = None) -> Span | None:
    """Record a reward of the running attempt.

    ``name`` labels it (``"valid_sql"``); unnamed rewards are called ``"reward"``. ``name="final"`` sets the
    final reward when the agent returns ``None`` (returning a number has the same effect and wins).
    Other rewards are intermediate: credit assignment attaches each to the latest preceding LLM call.
    """
    reward = check_reward(value)
    if name is not None and not isinstance(name, str):
        raise InvalidInput(f"reward name must be a string or None, got {name!r}")
    return _record(SpanKind.REWARD, name or "reward", {"value": reward})


def emit_message(text: str, **attributes: Any) -> Span | None:
    """Record a log line of the running attempt, with optional JSON ``attributes``."""
    if not isinstance(text, str):
        raise InvalidInput(f"emit_message needs a string, got {type(text).__name__}")
    attrs = _check_attributes(attributes, "message")
    attrs["text"] = text
    return _record(SpanKind.MESSAGE, "message", attrs)


def error_attributes(error: BaseException | str) -> JSON:
    """The attributes of an ``error`` span: ``type``, ``message`` and, for exceptions, ``traceback``."""
    if isinstance(error, BaseException):
        return {
            "type": type(error).__name__,
            "message": str(error),
            "traceback": "".join(traceback.format_exception(error)),
        }
    return {"type": "error", "message": str(error)}


def emit_error(error: BaseException | str) -> Span | None:
    """Record an error the agent handled (an exception with its traceback, or a text). The attempt goes on;
    an exception that escapes the agent is recorded the same way and fails the attempt."""
    if not isinstance(error, (BaseException, str)):
        raise InvalidInput(f"emit_error needs an exception or a string, got {type(error).__name__}")
    attrs = error_attributes(error)
    return _record(SpanKind.ERROR, attrs["type"], attrs)


def emit_span(
    name: str,
    attributes: dict[str, Any] | None = None,
    *,
    kind: SpanKind | str = SpanKind.CUSTOM,
    start_time: float | None = None,
    end_time: float | None = None,
) -> Span | None:
    """Record a custom event (``kind="custom"``) or a tool call (``kind="tool"``) with JSON attributes;
    ``start_time``/``end_time`` (Unix seconds) default to now."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"span name must be a non-empty string, got {name!r}")
    try:
        span_kind = SpanKind(kind)
    except ValueError:
        span_kind = SpanKind.ERROR  # refused just below, with the message
    if span_kind not in (SpanKind.CUSTOM, SpanKind.TOOL):
        raise InvalidInput(
            f"emit_span kind must be 'custom' or 'tool', got {kind!r}; use emit_reward/emit_message/emit_error "
            "for the other kinds (llm_call spans are written by the gateway)"
        )
    attrs = _check_attributes(attributes or {}, "span")
    return _record(span_kind, name, attrs, start_time=start_time, end_time=end_time)


# -- batched writes to the store ------------------------------------------------------------------------


class SpanWriter:
    """Buffers spans and writes them to ``store`` in batches (thread-safe).

    A batch is written when ``batch_size`` spans are waiting (inside :meth:`add`), when :meth:`due` says the
    oldest waited ``max_delay_s`` (the runner polls it), and on :meth:`flush`. If the store is unavailable
    the spans stay buffered for the next flush (writes are idempotent on ``(attempt_id, seq)``).
    """

    def __init__(self, store: Store, *, batch_size: int = 64, max_delay_s: float = 0.5) -> None:
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be ≥ 1, got {batch_size}")
        self.store = store
        self.batch_size = batch_size
        self.max_delay_s = max_delay_s
        self._buffer: list[Span] = []
        self._oldest = 0.0
        self._lock = threading.Lock()

    def add(self, span: Span) -> None:
        with self._lock:
            if not self._buffer:
                self._oldest = time.monotonic()
            self._buffer.append(span)
            full = len(self._buffer) >= self.batch_size
        if full:
            self.flush()

    def due_in(self) -> float | None:
        """Seconds until the buffered spans should be written (≤ 0: now), ``None`` when nothing waits."""
        with self._lock:
            if not self._buffer:
                return None
            return self._oldest + self.max_delay_s - time.monotonic()

    def flush(self, *, raise_unavailable: bool = False) -> int:
        """Write every buffered span; returns how many were new to the store (see
        :func:`tracerl.store.order.write_spans` for a seq that another writer took)."""
        with self._lock:
            batch, self._buffer = self._buffer, []
        if not batch:
            return 0
        try:
            return order.write_spans(
                self.store.add_spans, lambda aid: self.store.get_spans(attempt_id=aid), batch, _same
            )
        except StoreUnavailable:
            with self._lock:
                self._buffer[:0] = batch
            if raise_unavailable:
                raise
            logger.warning("store unavailable; %d spans stay buffered for the next flush", len(batch))
            return 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._buffer)


def _same(stored: Span, span: Span) -> bool:
    """Whether ``stored`` is ``span`` written earlier (a retried write), not another writer's span."""
    return (stored.kind, stored.name, stored.attributes) == (span.kind, span.name, span.attributes)
