"""One runner worker: a thread that takes claims and drives one agent worker process through them.

The claims come from the runner's :class:`~tracerl.runner.prefetch.ClaimQueue` (batched, shared by the
runner's workers). The thread asks for one only once its agent worker process is ready (a replacement for
one that crashed or was killed at a timeout is waited for first), so no lease runs out while the agent
imports. For each claimed attempt the thread builds the :class:`~tracerl.agent.LLM` handle, hands the task to its
:class:`~tracerl.runner.process.AgentProcess`, and while the agent runs it

* writes each span the agent emits to the store at once and only then acknowledges it, so the ``emit_*``
  call returns after its span is stored and the store's order is the order things happened
  (:mod:`tracerl.store.order`; spans stay buffered, in order, while the store is unreachable),
* heartbeats the lease every ``lease_s / 3`` seconds (a lost lease — expired, or the rollout cancelled —
  kills the agent: its result could no longer be recorded),
* kills the process when the agent overruns ``timeout_s`` and finishes the attempt as ``timeout``,

then writes the last spans and finishes the attempt: ``succeeded`` with the agent's reward, or ``failed``
with the error (the exception's span, with traceback, is already recorded). Retries of failed and timed-out
attempts follow the rollout's ``max_attempts`` (the store requeues them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tracerl.agent import LLM, AgentRef
from tracerl.errors import AttemptFinished, NotFound, StoreUnavailable, TracerlError
from tracerl.prompts import PROMPTS_RESOURCE, PROMPTS_VERSION_KEY, PromptBook
from tracerl.runner.prefetch import ClaimQueue
from tracerl.runner.process import AgentProcess, WorkerDied
from tracerl.store import order
from tracerl.store.base import Store
from tracerl.tracing import SpanWriter
from tracerl.types import AttemptStatus, Claim, Mode, Span, SpanKind

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: the longest the worker sleeps before checking for a stop request, heartbeat, timeout or flush
TICK_S = 0.25
#: failed starts of the agent worker process in a row after which the worker gives up (with that error)
START_TRIES = 3


@dataclass(slots=True)
class _Beats:
    """When one attempt's lease was last renewed, to tell why a heartbeat came late (monotonic seconds).

    A lease runs out when no heartbeat lands within ``lease_s`` of the last one. A heartbeat is sent every
    ``lease_s / 3``, so one that lands more than ``2 lease_s / 3`` after the last was delayed, and the delay
    has two possible places: the store call itself (``store.heartbeat`` waited for a lock: sqlite's
    ``busy_timeout_s``, postgres row locks, a slow server), or this thread before it (the worker's loop did
    not run: the process was starved of CPU or held by another thread). The messages give both numbers."""

    last: float
    lease_s: float

    def renewed(self, sent: float, landed: float) -> str | None:
        """Record a heartbeat sent at ``sent`` that landed at ``landed``; a warning if it was late."""
        gap, last = landed - self.last, self.last
        self.last = landed
        if gap <= 2 * self.lease_s / 3:
            return None
        where = self._where(last, sent, landed)
        return f"landed {gap:.1f} s after the last one, {self.lease_s:g} s lease ({where})"

    def lost(self, sent: float, landed: float) -> str | None:
        """Why a heartbeat sent at ``sent`` found its attempt ended at ``landed``, if the lease had run out
        by then (``None`` otherwise: the rollout was cancelled)."""
        gap = landed - self.last
        if gap <= self.lease_s:
            return None
        where = self._where(self.last, sent, landed)
        return f"the heartbeat landed {gap:.1f} s after the last one, past the {self.lease_s:g} s lease: {where}"

    def _where(self, last: float, sent: float, landed: float) -> str:
        waited, call = max(0.0, sent - last - self.lease_s / 3), landed - sent
        return f"the store call took {call:.1f} s, the worker sent it {waited:.1f} s after it was due"


@dataclass(slots=True)
class WorkerConfig:
    """What every worker of a runner shares (see :class:`tracerl.runner.Runner` for the meanings)."""

    agent: AgentRef
    gateway_url: str | None
    timeout_s: float
    lease_s: float
    modes: Sequence[Mode] | None
    model: str
    api_key: str
    sampling: dict[str, Any] = field(default_factory=dict)
    resources_name: str = "resources"
    claim_wait_s: float = 1.0


@dataclass(slots=True)
class WorkerStats:
    """Counts of how this worker's attempts ended."""

    succeeded: int = 0
    failed: int = 0
    timeout: int = 0
    lost: int = 0  # lease lost or rollout cancelled while the agent ran

    def add(self, other: WorkerStats) -> None:
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.timeout += other.timeout
        self.lost += other.lost


class Worker(threading.Thread):
    """Claims and runs rollouts until ``stopping`` is set; aborts a running one when ``aborting`` is set."""

    def __init__(
        self,
        worker_id: str,
        store: Store,
        config: WorkerConfig,
        process: AgentProcess,
        *,
        claims: ClaimQueue,
        stopping: threading.Event,
        aborting: threading.Event,
    ) -> None:
        super().__init__(name=f"tracerl-{worker_id}", daemon=True)
        self.worker_id = worker_id
        self.store = store
        self.config = config
        self.claims = claims
        self.stats = WorkerStats()
        self.error: BaseException | None = None
        self._process: AgentProcess | None = process
        self._stopping = stopping
        self._aborting = aborting
        self._start_failures = 0

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                if not self._ready_to_claim():
                    continue
                try:
                    claim = self.claims.get(self._stopping)
                except StoreUnavailable as e:
                    logger.warning("%s: store unavailable (%s); retrying", self.worker_id, e)
                    self._stopping.wait(1.0)
                    continue
                if claim is None:
                    continue
                try:
                    self.execute(claim)
                except Exception as e:  # a bug or a store failure past the retries: fail this attempt, go on
                    logger.exception("%s: attempt %s failed in the runner", self.worker_id, claim.attempt.attempt_id)
                    self._kill_process()
                    self.stats.failed += 1
                    try:
                        self.store.finish(claim.attempt.attempt_id, AttemptStatus.FAILED, error=f"runner error: {e}")
                    except Exception:
                        logger.exception("%s: could not finish attempt %s", self.worker_id, claim.attempt.attempt_id)
        except BaseException as e:  # reported by the runner, not lost in a thread
            self.error = e
            logger.exception("%s stopped on an unexpected error", self.worker_id)
        finally:
            if self._process is not None:
                self._process.close()
                self._process = None

    def _ready_to_claim(self) -> bool:
        """Start the agent worker process (or wait for it to finish starting) before claiming, so no lease
        ever runs while the agent imports. A start that fails is retried with backoff; after
        :data:`START_TRIES` failures in a row the error ends this worker (the runner reports it)."""
        try:
            process = self._process_for_rollout(self._stopping)
        except TracerlError as e:
            self._start_failures += 1
            if self._start_failures >= START_TRIES:
                raise
            delay = min(30.0, 2.0**self._start_failures)
            logger.warning("%s: agent worker did not start (%s); trying again in %g s", self.worker_id, e, delay)
            self._stopping.wait(delay)
            return False
        self._start_failures = 0
        return process is not None

    # -- one attempt --------------------------------------------------------------------------------
    def execute(self, claim: Claim) -> None:
        """Run the agent on ``claim`` and finish its attempt (whatever happens)."""
        rollout, attempt = claim.rollout, claim.attempt
        aid = attempt.attempt_id
        writer = SpanWriter(self.store)
        try:
            llm = self._llm_for(claim)
        except TracerlError as e:
            self._fail(writer, aid, AttemptStatus.FAILED, "resources", str(e))
            return
        try:
            process = self._process_for_rollout()  # ready already, unless it died since the claim
        except TracerlError as e:
            self._fail(writer, aid, AttemptStatus.FAILED, "worker_start", str(e))
            return
        assert process is not None  # without a stop event it is never left starting
        started = time.monotonic()
        deadline = started + self.config.timeout_s
        next_heartbeat = started + self.config.lease_s / 3
        beat, why_lost = _Beats(started, self.config.lease_s), None
        result: dict[str, Any] = {}
        try:
            process.run(llm, rollout.task)
            while True:
                if self._aborting.is_set():
                    self._kill_process()
                    self._fail(writer, aid, AttemptStatus.FAILED, "runner_stopped", _stopped_message())
                    return
                now = time.monotonic()
                wake = min(deadline, next_heartbeat, now + TICK_S)
                due = writer.due_in()
                if due is not None:
                    wake = min(wake, now + due)
                msg = process.recv(wake - now)
                if msg is not None:
                    kind, payload = msg
                    if kind == "done":
                        result = payload
                        break
                    span: Span = payload
                    writer.add(span)
                    writer.flush()  # stored before the agent goes on: the store's order is the order of events
                    process.ack()
                # the checks run after every message too, so an agent that emits without pause still times out
                now = time.monotonic()
                if now >= deadline:
                    self._kill_process()
                    message = f"the agent ran past its {self.config.timeout_s:g}s timeout and was killed"
                    self._fail(writer, aid, AttemptStatus.TIMEOUT, "timeout", message)
                    return
                if now >= next_heartbeat:
                    try:
                        self.store.heartbeat(aid, lease_s=self.config.lease_s)
                        next_heartbeat = now + self.config.lease_s / 3
                        late = beat.renewed(now, time.monotonic())
                        if late:
                            logger.warning("%s: heartbeat of %s %s", self.worker_id, aid, late)
                    except (AttemptFinished, NotFound):
                        why_lost = beat.lost(now, time.monotonic())
                        raise
                    except StoreUnavailable as e:
                        logger.warning("%s: heartbeat of %s failed (%s); retrying in 1 s", self.worker_id, aid, e)
                        next_heartbeat = now + 1.0
                due = writer.due_in()
                if due is not None and due <= 0:
                    writer.flush()
        except WorkerDied as e:
            self._kill_process()
            self._fail(writer, aid, AttemptStatus.FAILED, "worker_died", str(e))
            return
        except (AttemptFinished, NotFound) as e:
            # the lease ran out or the rollout was cancelled: nothing this attempt does can count any more
            self._kill_process()
            writer.flush()
            self.stats.lost += 1
            logger.warning("%s: attempt %s lost while running (%s%s); agent killed", self.worker_id, aid, e,
                           f"; {why_lost}" if why_lost else "")  # fmt: skip
            return
        self._finish(writer, aid, result)

    def _finish(self, writer: SpanWriter, attempt_id: str, result: dict[str, Any]) -> None:
        _retrying(lambda: writer.flush(raise_unavailable=True))
        try:
            if result["status"] == "succeeded":
                _retrying(lambda: self.store.finish(attempt_id, AttemptStatus.SUCCEEDED, reward=result["reward"]))
                self.stats.succeeded += 1
            else:
                _retrying(lambda: self.store.finish(attempt_id, AttemptStatus.FAILED, error=result["error"]))
                self.stats.failed += 1
        except AttemptFinished as e:
            self.stats.lost += 1
            logger.warning("%s: attempt %s ended before its result was recorded (%s)", self.worker_id, attempt_id, e)

    def _fail(
        self,
        writer: SpanWriter,
        attempt_id: str,
        status: AttemptStatus,
        name: str,
        message: str,
    ) -> None:
        """Record an ``error`` span written by the runner itself and end the attempt with ``status``."""
        writer.add(
            Span(
                attempt_id=attempt_id,
                seq=order.new_seq(),
                kind=SpanKind.ERROR,
                name=name,
                attributes={"type": name, "message": message},
            )
        )
        _retrying(lambda: writer.flush(raise_unavailable=True))
        try:
            _retrying(lambda: self.store.finish(attempt_id, status, error=message))
        except AttemptFinished as e:
            logger.warning("%s: attempt %s had already ended (%s)", self.worker_id, attempt_id, e)
        if status is AttemptStatus.TIMEOUT:
            self.stats.timeout += 1
        else:
            self.stats.failed += 1

    # -- helpers ------------------------------------------------------------------------------------
    def _llm_for(self, claim: Claim) -> LLM:
        cfg = self.config
        rollout = claim.rollout
        resources: dict[str, Any] = {}
        version: int | None = None
        try:
            res = self.store.get_resource(cfg.resources_name, rollout.resources_version)
            resources, version = res.value, res.version
        except NotFound:
            if rollout.resources_version is not None:
                raise
        # for agents that read their prompts themselves: llm.resources["prompts"] (tracerl.prompts)
        prompts_version = rollout.metadata.get(PROMPTS_VERSION_KEY, resources.get(PROMPTS_VERSION_KEY))
        if prompts_version is not None:
            table = PromptBook(self.store).table(prompts_version)
            resources = {**resources, PROMPTS_RESOURCE: {"version": table.version, "prompts": {
                k: r.to_json() for k, r in table.replacements.items()}}}
        sampling = {**cfg.sampling, **resources.get("sampling", {})}
        evaluation = rollout.eval_sampling()  # greedy, unless the rollout asks to sample (pass@k evaluation)
        if evaluation is not None:
            sampling.update(evaluation)
        return LLM(
            gateway_url=cfg.gateway_url,
            rollout_id=rollout.rollout_id,
            attempt_id=claim.attempt.attempt_id,
            model=str(resources.get("model", cfg.model)),
            api_key=cfg.api_key,
            temperature=sampling.get("temperature"),
            top_p=sampling.get("top_p"),
            max_tokens=sampling.get("max_tokens"),
            mode=rollout.mode.value,
            resources=resources,
            resources_version=version,
        )

    def _process_for_rollout(self, stop: threading.Event | None = None) -> AgentProcess | None:
        """The worker process, started (or replaced, if it died while idle) and ready; ``None`` if ``stop``
        was set while it was still starting."""
        if self._process is not None and not self._process.alive:
            logger.warning(
                "%s: agent worker process %s exited while idle; starting another", self.worker_id, self._process.pid
            )
            self._process.kill()
            self._process = None
        if self._process is None:
            self._process = AgentProcess(self.config.agent)
            self._process.spawn()
        if not self._process.ready:
            try:
                if not self._process.wait_ready(stop):
                    return None
            except TracerlError:
                self._process = None
                raise
        return self._process

    def _kill_process(self) -> None:
        """Kill the worker process and start its replacement at once, so it imports the agent while this
        thread records the attempt and claims the next rollout."""
        if self._process is not None:
            self._process.kill()
            self._process = None
        if not self._stopping.is_set():
            self._process = AgentProcess(self.config.agent)
            self._process.spawn()


def _retrying(call: Callable[[], T], attempts: int = 6) -> T:
    """``call()``, retried with backoff (0.25 s, 0.5 s, ... ≤ 4 s) while the store is unavailable."""
    for k in range(attempts):
        try:
            return call()
        except StoreUnavailable as e:
            if k == attempts - 1:
                raise
            delay = min(4.0, 0.25 * 2**k)
            logger.warning("store unavailable (%s); retrying in %.2fs", e, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _stopped_message() -> str:
    return (
        "the runner was stopped and its shutdown grace period ran out; the rollout is requeued if it has attempts left"
    )
