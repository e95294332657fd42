"""A runner's claims, taken from the store in batches and handed to its workers one at a time.

Claiming one rollout per transaction caps a shared postgres store at a few hundred claims per second
(``benchmarks/claims.md``); :meth:`Store.claim_many` takes several queue heads in one transaction. So a
runner's workers do not claim for themselves: a worker that is ready asks :class:`ClaimQueue` for its next
claim, and the queue takes, in one ``claim_many``, one claim for every worker waiting at that moment plus up
to ``prefetch`` more, which it holds for the next workers to come free::

    claims = ClaimQueue(store, "host-1234", prefetch=4, lease_s=30, modes=None, claim_wait_s=1.0)
    claim = claims.get(stopping)        # a Claim, or None when nothing came within claim_wait_s
    ...
    claims.close()                      # hands back what no worker started

What keeps a held claim safe:

* **Leases.** A claim waiting in the queue is heartbeated every ``lease_s / 3`` seconds, like a running one,
  so its lease never runs out while it waits; one whose heartbeat is refused (the rollout was cancelled, or
  its lease ran out while the store was unreachable) is dropped, never handed to a worker.
* **Shutdown.** :meth:`ClaimQueue.close` releases every held claim (:meth:`Store.release`): the rollout is
  queued again at no cost to its ``max_attempts``. A runner killed outright (SIGKILL) cannot do that; the
  leases of its held claims run out and the store requeues those rollouts, as it does for running ones.
* **No double run.** A claim is handed to exactly one worker (popped under the queue's lock); the store
  never gives one rollout to two claimers.

The attempts it claims carry the runner's id as ``worker_id`` (``HOST-PID``, with ``-aN`` for a Ray actor):
the runner claimed them, and any of its workers may run them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

from tracerl.errors import AttemptFinished, NotFound, StoreUnavailable, TracerlError
from tracerl.store.base import MAX_CLAIM_MANY, Store
from tracerl.types import Claim, Mode

logger = logging.getLogger(__name__)


class ClaimQueue:
    """See the module docstring. Thread-safe: every worker thread of a runner calls :meth:`get`."""

    def __init__(
        self,
        store: Store,
        worker_id: str,
        *,
        prefetch: int,
        lease_s: float,
        modes: Sequence[Mode] | None,
        claim_wait_s: float,
    ) -> None:
        self.store, self.worker_id, self.prefetch = store, worker_id, prefetch
        self.lease_s, self.modes, self.claim_wait_s = lease_s, modes, claim_wait_s
        self._held: deque[Claim] = deque()
        self._lock = threading.Lock()  # guards _held and _waiting
        self._fetch = threading.Lock()  # one store call at a time claims for this runner
        self._waiting = 0  # workers inside get() that have no claim yet
        self._closed = threading.Event()
        self._keeper: threading.Thread | None = None
        self.claimed = 0  # attempts taken from the store (for tests and logs)
        self.released = 0  # held attempts handed back at close
        self.dropped = 0  # held attempts whose heartbeat was refused

    @property
    def held(self) -> int:
        """Claims taken from the store and not yet handed to a worker."""
        with self._lock:
            return len(self._held)

    def get(self, stopping: threading.Event) -> Claim | None:
        """The next claim for a ready worker: a held one, else a batch from the store (this worker's claim,
        one for each other worker waiting, and up to ``prefetch`` held for later). ``None`` when the store
        had nothing within ``claim_wait_s``, or ``stopping`` is set. ``StoreUnavailable`` propagates."""
        with self._lock:
            if stopping.is_set() or self._closed.is_set():
                return None
            if self._held:
                return self._held.popleft()
            self._waiting += 1
        try:
            with self._fetch:  # the others wait here; the batch taken by the one ahead may cover them
                with self._lock:
                    if stopping.is_set() or self._closed.is_set():
                        return None
                    if self._held:
                        return self._held.popleft()
                    want = min(MAX_CLAIM_MANY, self._waiting + self.prefetch)
                claims = self.store.claim_many(self.worker_id, want, lease_s=self.lease_s, modes=self.modes)
                if not claims:  # an empty queue: a long poll (it wakes on enqueue) for this worker alone
                    one = self.store.claim(
                        self.worker_id, lease_s=self.lease_s, modes=self.modes, wait_s=self.claim_wait_s
                    )
                    claims = [one] if one is not None else []
                self.claimed += len(claims)
                if not claims:
                    return None
                with self._lock:
                    closed = self._closed.is_set()
                    if not closed:
                        self._held.extend(claims[1:])
                        if len(claims) > 1:
                            self._start_keeper()
                if closed:  # closed while the batch was being taken: no worker will run any of it
                    self._release(claims)
                    return None
                return claims[0]
        finally:
            with self._lock:
                self._waiting -= 1

    # -- held claims ----------------------------------------------------------------------------------
    def _start_keeper(self) -> None:
        """Start the heartbeat thread for held claims (once; the caller holds ``_lock``)."""
        if self._keeper is None and not self._closed.is_set():
            self._keeper = threading.Thread(target=self._keep, name=f"tracerl-{self.worker_id}-held", daemon=True)
            self._keeper.start()

    def _keep(self) -> None:
        """Heartbeat the held claims every ``lease_s / 3`` seconds until :meth:`close`."""
        interval = self.lease_s / 3
        while not self._closed.wait(interval):
            with self._lock:
                held = list(self._held)
            for claim in held:
                aid = claim.attempt.attempt_id
                try:
                    self.store.heartbeat(aid, lease_s=self.lease_s)
                except (AttemptFinished, NotFound) as e:
                    self._drop(claim, e)
                except StoreUnavailable as e:  # the next round tries again; a worker's own heartbeat too
                    logger.warning("%s: heartbeat of held attempt %s failed (%s)", self.worker_id, aid, e)
                except TracerlError:
                    logger.exception("%s: heartbeat of held attempt %s failed", self.worker_id, aid)

    def _drop(self, claim: Claim, why: Exception) -> None:
        with self._lock:
            try:
                self._held.remove(claim)
            except ValueError:
                return  # a worker took it meanwhile; its own heartbeat will meet the same refusal
            self.dropped += 1
        logger.warning("%s: dropped held attempt %s (%s)", self.worker_id, claim.attempt.attempt_id, why)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop heartbeating and hand every held claim back to the store (:meth:`Store.release`). A claim
        that cannot be released (the store is unreachable) is left to its lease, which then runs out."""
        self._closed.set()
        keeper = self._keeper
        if keeper is not None:
            keeper.join(timeout_s)
        with self._lock:
            held, self._held = list(self._held), deque()
        self._release(held, timeout_s)

    def _release(self, held: list[Claim], timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        for claim in held:
            aid = claim.attempt.attempt_id
            try:
                self.store.release(aid)
                self.released += 1
            except (AttemptFinished, NotFound):
                pass  # ended meanwhile (cancelled, or its lease ran out): nothing to hand back
            except TracerlError as e:
                logger.warning("%s: could not release held attempt %s (%s); its lease will run out", self.worker_id,
                               aid, e)  # fmt: skip
            if time.monotonic() > deadline:
                logger.warning("%s: stopped releasing held attempts after %g s; their leases will run out",
                               self.worker_id, timeout_s)  # fmt: skip
                break
