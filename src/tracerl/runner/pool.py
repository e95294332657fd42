"""A runner: ``n_workers`` workers that claim rollouts from a store and run an agent on them.

Each worker is a thread of this process driving its own persistent agent worker process (the agent is
imported there from its ``module:function`` reference), so n rollouts run in parallel and a hung agent can
be killed without harming the others. Use it from code (the trainer does)::

    runner = start_runners("my_agents:sql_agent", "sqlite:///runs/sql.db", "http://127.0.0.1:8000", n_workers=4)
    ...
    runner.stop()          # graceful: running rollouts finish within the grace period

or from the shell: ``tracerl runner --agent my_agents:sql_agent --store URL --gateway URL -n 4``.

Claims are taken in batches for all the runner's workers and a few are held ahead for workers still busy
(``prefetch``; :mod:`tracerl.runner.prefetch`): many small rollouts then cost one store transaction per
batch, not one each.

Stopping (``stop()``, or SIGTERM/SIGINT to ``tracerl runner``): workers stop claiming at once, and claims
held for them go back to the queue (released, at no cost to ``max_attempts``); rollouts
already running get ``grace_s`` seconds to finish normally; after that their agents are killed and their
attempts finished as ``failed`` with an ``error`` span named ``runner_stopped``. ``failed`` is retryable, so
the store requeues those rollouts for another runner (unless they used their last attempt, in which case
they end ``failed``). A runner that is killed outright (SIGKILL, power loss) cannot do this; its attempts'
leases (of held claims too) run out and the store requeues them as ``unresponsive``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tracerl.agent import AgentRef, agent_ref
from tracerl.errors import ConfigError
from tracerl.runner.prefetch import ClaimQueue
from tracerl.runner.process import AgentProcess
from tracerl.runner.worker import Worker, WorkerConfig, WorkerStats
from tracerl.store import connect
from tracerl.store.base import Store
from tracerl.types import Mode

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
DEFAULT_LEASE_S = 30.0
DEFAULT_GRACE_S = 30.0


class Runner:
    """Runs ``agent`` on rollouts claimed from ``store``.

    Args:
        agent: the agent function, or ``"module:function"``.
        store: a store URL (each worker opens its own connection) or a :class:`Store` object (shared;
            the only way to use ``memory://`` stores, which live in one process).
        gateway_url: ``http://HOST:PORT`` of the gateway; agents get ``{gateway_url}/r/{rollout}/{attempt}/v1``.
            ``None`` for agents that call no LLM.
        n_workers: rollouts run in parallel (one agent worker process each).
        timeout_s: per-attempt wall-clock limit; an agent that overruns is killed, the attempt ends ``timeout``.
        lease_s: lease length; the worker heartbeats every ``lease_s / 3`` while the agent runs.
        modes: only claim rollouts of these modes (``None``: any).
        model, api_key, sampling: what the ``LLM`` handle carries unless the resources bundle overrides it
            (``"model"`` and ``"sampling"`` keys of the ``resources_name`` resource).
        grace_s: how long :meth:`stop` lets running rollouts finish before ending them as ``failed``.
        prefetch: claims the runner may hold for workers that are still busy (default ``n_workers``; 0: claim
            only for workers that are waiting). Claims are taken in batches (``claim_many``), held claims are
            heartbeated and handed back on :meth:`stop` (:mod:`tracerl.runner.prefetch`).
        token: bearer token of an ``http://`` store given by URL (default: ``TRACERL_TOKEN``).
    """

    def __init__(
        self,
        agent: Callable[..., Any] | str | AgentRef,
        store: str | Store,
        gateway_url: str | None = None,
        *,
        n_workers: int = 1,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        lease_s: float = DEFAULT_LEASE_S,
        modes: Sequence[Mode | str] | None = None,
        model: str = "default",
        api_key: str = "tracerl",
        sampling: dict[str, Any] | None = None,
        resources_name: str = "resources",
        grace_s: float = DEFAULT_GRACE_S,
        claim_wait_s: float = 1.0,
        worker_prefix: str | None = None,
        token: str | None = None,
        prefetch: int | None = None,
    ) -> None:
        if not isinstance(n_workers, int) or n_workers < 1:
            raise ConfigError(f"n_workers must be an integer ≥ 1, got {n_workers!r}")
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")
        if not 0 < lease_s <= 86_400:
            raise ConfigError(f"lease_s must be in (0, 86400] seconds, got {lease_s!r}")
        if prefetch is not None and (not isinstance(prefetch, int) or prefetch < 0):
            raise ConfigError(f"prefetch must be an integer ≥ 0 (claims held for busy workers), got {prefetch!r}")
        if grace_s < 0:
            raise ConfigError(f"grace_s must be ≥ 0 seconds, got {grace_s!r}")
        if gateway_url is not None and not gateway_url.startswith(("http://", "https://")):
            raise ConfigError(f"gateway URL {gateway_url!r} must start with http:// or https://")
        unknown = set(sampling or {}) - {"temperature", "top_p", "max_tokens"}
        if unknown:
            raise ConfigError(
                f"sampling defaults {sorted(unknown)} are not supported; use temperature, top_p, max_tokens"
            )
        try:
            modes_ = [Mode(m) for m in modes] if modes else None
        except ValueError:
            raise ConfigError(f"modes {modes!r} must be among {[m.value for m in Mode]}") from None
        self._token = token
        self.config = WorkerConfig(
            agent=agent_ref(agent),
            gateway_url=gateway_url,
            timeout_s=float(timeout_s),
            lease_s=float(lease_s),
            modes=modes_,
            model=model,
            api_key=api_key,
            sampling=dict(sampling or {}),
            resources_name=resources_name,
            claim_wait_s=claim_wait_s,
        )
        self.store = store
        self.n_workers = n_workers
        self.grace_s = grace_s
        self.prefetch = n_workers if prefetch is None else prefetch
        self.claims: ClaimQueue | None = None
        self.worker_prefix = worker_prefix or f"{socket.gethostname()}-{os.getpid()}"
        self._stopping = threading.Event()
        self._aborting = threading.Event()
        self._workers: list[Worker] = []
        self._own_stores: list[Store] = []
        self._stopped = False

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> Runner:
        """Start the agent worker processes (all in parallel; raises :class:`ConfigError` if the agent
        cannot be imported) and the worker threads. Returns ``self``."""
        if self._workers:
            raise ConfigError("this runner is already started; create a new Runner to start again")
        processes = [AgentProcess(self.config.agent) for _ in range(self.n_workers)]
        try:
            for p in processes:
                p.spawn()
            for p in processes:
                p.wait_ready()
            cfg = self.config
            self.claims = ClaimQueue(
                self._store_for_worker(), self.worker_prefix, prefetch=self.prefetch, lease_s=cfg.lease_s,
                modes=cfg.modes, claim_wait_s=cfg.claim_wait_s,
            )  # fmt: skip
            for i, process in enumerate(processes):
                store = self._store_for_worker()
                worker = Worker(
                    f"{self.worker_prefix}-w{i}",
                    store,
                    self.config,
                    process,
                    claims=self.claims,
                    stopping=self._stopping,
                    aborting=self._aborting,
                )
                self._workers.append(worker)
        except BaseException:
            for p in processes:
                p.kill()
            self._close_stores()
            raise
        for w in self._workers:
            w.start()
        logger.info("runner started %d workers for %s", self.n_workers, self.config.agent)
        return self

    def stop(self, grace_s: float | None = None) -> WorkerStats:
        """Stop claiming; let running rollouts finish within ``grace_s`` (default: the runner's), then end
        the rest as ``failed`` (requeued while attempts remain). Returns the counts of how attempts ended."""
        if not self._stopped:
            self._stopped = True
            grace = self.grace_s if grace_s is None else grace_s
            self._stopping.set()
            if self.claims is not None:
                self.claims.close()  # held claims no worker started go back to the queue at once
            deadline = time.monotonic() + grace
            for w in self._workers:
                w.join(max(0.0, deadline - time.monotonic()))
            if any(w.is_alive() for w in self._workers):
                logger.warning("runner grace period of %gs ran out; ending the running rollouts as failed", grace)
                self._aborting.set()
                for w in self._workers:
                    w.join()
            self._close_stores()
        return self.stats

    def stop_claiming(self) -> None:
        """Make the workers claim no new rollout (the first step of :meth:`stop`); returns at once."""
        self._stopping.set()

    def abort(self) -> None:
        """End running rollouts now, as the end of the grace period would (safe from a signal handler)."""
        self._stopping.set()
        self._aborting.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until every worker thread ended (after :meth:`stop`, or on an unexpected error); returns
        whether they all did within ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for w in self._workers:
            w.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(w.is_alive() for w in self._workers)

    @property
    def alive(self) -> bool:
        """Whether any worker thread is still running."""
        return any(w.is_alive() for w in self._workers)

    @property
    def stats(self) -> WorkerStats:
        total = WorkerStats()
        for w in self._workers:
            total.add(w.stats)
        return total

    @property
    def errors(self) -> list[BaseException]:
        """Unexpected errors that ended worker threads (a healthy runner has none)."""
        return [w.error for w in self._workers if w.error is not None]

    def __enter__(self) -> Runner:
        return self.start() if not self._workers else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ------------------------------------------------------------------------------------
    def _store_for_worker(self) -> Store:
        if isinstance(self.store, Store):
            return self.store
        store = connect(self.store, token=self._token)
        self._own_stores.append(store)
        return store

    def _close_stores(self) -> None:
        for s in self._own_stores:
            try:
                s.close()
            except Exception:
                logger.exception("closing store %s failed", s.url)
        self._own_stores.clear()


def start_runners(
    agent: Callable[..., Any] | str,
    store: str | Store,
    gateway_url: str | None = None,
    *,
    n_workers: int = 1,
    **options: Any,
) -> Runner:
    """Start a :class:`Runner` with ``n_workers`` workers in this process tree; call ``.stop()`` when done."""
    return Runner(agent, store, gateway_url, n_workers=n_workers, **options).start()
