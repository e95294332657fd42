"""Runners as Ray actors: ``actors`` actors on a Ray cluster, each a :class:`~tracerl.runner.pool.Runner`
with ``workers_per_actor`` workers (rollouts in parallel per actor), all claiming from one store.

    tracerl runner --ray 10.0.0.5:6379 --actors 8 -n 4 --agent my_agents:sql_agent \\
        --store postgresql://db-host/tracerl --gateway http://trainer:8765 --ray-working-dir .

    runners = RayRunners("my_agents:sql_agent", "postgresql://db-host/tracerl", "http://trainer:8765",
                         address="10.0.0.5:6379", actors=8, workers_per_actor=4).start()
    ...
    runners.stop()         # graceful: running rollouts get the grace period, then the actors are killed

(``tracerl.Trainer(..., runners=RunnerConfig(n=4, ray="ADDRESS", actors=8))`` does the same for a run.)

Ray places the actors and restarts one that dies (up to ``max_restarts`` times; the restarted actor starts
its runner again). Nothing else is special about them: each actor's workers claim, heartbeat and finish
through the store like any runner, so an actor that dies (node lost, OOM-killed, ``ray.kill``) simply stops
heartbeating; its attempts' leases run out and the store hands those rollouts to another runner. Stopping
asks every actor to stop its runner (graceful, as :meth:`Runner.stop`), then kills the actors and, if this
object connected to Ray, disconnects.

The agent module must be importable on every node: installed there, or shipped with ``working_dir`` (Ray
uploads the folder and puts it on the actors' ``sys.path``). Importing this module does not import Ray;
:meth:`RayRunners.start` does (``pip install 'tracerl[ray]'``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from tracerl.agent import AgentRef, agent_ref
from tracerl.errors import ConfigError
from tracerl.runner.pool import DEFAULT_GRACE_S, Runner
from tracerl.runner.worker import WorkerStats

logger = logging.getLogger(__name__)

#: seconds a call to an actor (ready, stats, stop) may take beyond the grace period before it counts as dead
CALL_TIMEOUT_S = 60.0


class RunnerActor:
    """The body of one Ray actor: a :class:`Runner` started in the actor's process (and again on a restart).

    Its worker ids are ``{host}-{pid}-a{index}-w{k}`` (``pid``: the actor's process).
    """

    def __init__(self, index: int, agent: AgentRef, store: str, gateway_url: str | None, options: dict[str, Any],
                 sys_path: list[str]) -> None:  # fmt: skip
        for entry in reversed(sys_path):  # folders that exist on this node (the driver's --app-dir)
            if os.path.isdir(entry) and entry not in sys.path:
                sys.path.insert(0, entry)
        prefix = f"{socket.gethostname()}-{os.getpid()}-a{index}"
        self.runner = Runner(agent, store, gateway_url, worker_prefix=prefix, **options).start()
        self.prefix = prefix

    def ready(self) -> str:
        return self.prefix

    def stats(self) -> dict[str, int]:
        return dataclasses.asdict(self.runner.stats)

    def alive(self) -> bool:
        return self.runner.alive

    def stop(self, grace_s: float | None) -> dict[str, int]:
        return dataclasses.asdict(self.runner.stop(grace_s))

    def abort(self) -> None:
        self.runner.abort()


class RayRunners:
    """``actors`` Ray actors, each running a :class:`Runner` of ``workers_per_actor`` workers.

    Args:
        agent, store, gateway_url: as for :class:`Runner` (``store`` must be a URL every node can reach:
            ``postgresql://…`` or ``http://…`` of a ``tracerl serve``; ``sqlite`` only on a one-node cluster).
        address: the Ray cluster (``auto``, ``HOST:PORT`` of the head, ``ray://HOST:10001``); None: the
            cluster this process is already connected to, or a new local one.
        actors: actors to start; workers_per_actor: rollouts each runs in parallel.
        num_cpus: CPUs Ray reserves per actor (default: ``workers_per_actor``, one per agent process).
        max_restarts: how often Ray restarts an actor that died (its rollouts are retried via lease expiry).
        working_dir: a folder Ray ships to every actor and puts on its ``sys.path`` (the agent's code).
        runner_options: the other keyword arguments of :class:`Runner` (``timeout_s``, ``lease_s``, ``modes``,
            ``model``, ``api_key``, ``sampling``, ``resources_name``, ``grace_s``, ``token``).
    """

    def __init__(
        self,
        agent: Callable[..., Any] | str,
        store: str,
        gateway_url: str | None = None,
        *,
        address: str | None = None,
        actors: int = 1,
        workers_per_actor: int = 1,
        num_cpus: float | None = None,
        max_restarts: int = 3,
        working_dir: str | None = None,
        **runner_options: Any,
    ) -> None:
        if not isinstance(store, str) or store.lower().startswith("memory://"):
            raise ConfigError(
                f"Ray actors reach the store by URL; {store!r} cannot be shared across processes: use "
                "postgresql://…, http://… (a `tracerl serve`) or, on a one-machine cluster, sqlite:///…"
            )
        for name, value in (("actors", actors), ("workers_per_actor", workers_per_actor)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer ≥ 1, got {value!r}")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < -1:
            raise ConfigError(f"max_restarts must be an integer ≥ 0 (or -1: always), got {max_restarts!r}")
        Runner(agent, store, gateway_url, n_workers=workers_per_actor, **runner_options)  # validate the options here
        self.agent = agent_ref(agent)
        self.store, self.gateway_url, self.address = store, gateway_url, address
        self.actors, self.workers_per_actor = actors, workers_per_actor
        self.num_cpus = float(workers_per_actor) if num_cpus is None else float(num_cpus)
        self.max_restarts, self.working_dir = max_restarts, working_dir
        self.options = {"n_workers": workers_per_actor, **runner_options}
        self.grace_s = float(runner_options.get("grace_s", DEFAULT_GRACE_S))
        self._handles: list[Any] = []
        self._connected_here = False
        self._stopped = False
        self._stats = WorkerStats()
        self._errors: list[BaseException] = []

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> RayRunners:
        """Connect to Ray, start the actors and wait until each runner is claiming. Returns ``self``."""
        ray = _ray()
        if not ray.is_initialized():
            runtime_env = {"working_dir": self.working_dir} if self.working_dir else None
            ray.init(address=self.address, namespace="tracerl", runtime_env=runtime_env)
            self._connected_here = True
        actor_cls = ray.remote(RunnerActor).options(
            num_cpus=self.num_cpus, max_restarts=self.max_restarts, max_concurrency=4
        )
        sys_path = [p for p in sys.path if p and os.path.isdir(p)]
        self._handles = [
            actor_cls.remote(i, self.agent, self.store, self.gateway_url, self.options, sys_path)
            for i in range(self.actors)
        ]
        try:
            prefixes = ray.get([h.ready.remote() for h in self._handles], timeout=CALL_TIMEOUT_S * 2)
        except BaseException:
            self._kill_all()
            raise
        logger.info("started %d Ray runner actors: %s", len(prefixes), ", ".join(prefixes))
        return self

    def stop(self, grace_s: float | None = None) -> WorkerStats:
        """Stop every actor's runner (running rollouts get ``grace_s``), then kill the actors; returns the
        summed counts of how attempts ended (actors that died meanwhile count nothing)."""
        if self._stopped:
            return self._stats
        self._stopped = True
        ray = _ray()
        grace = self.grace_s if grace_s is None else grace_s
        refs = [h.stop.remote(grace) for h in self._handles]
        for ref in refs:
            try:
                self._stats.add(WorkerStats(**ray.get(ref, timeout=grace + CALL_TIMEOUT_S)))
            except Exception as e:  # a dead or hung actor: its rollouts come back through lease expiry
                logger.warning("a Ray runner actor did not stop cleanly: %s", e)
        self._kill_all()
        return self._stats

    def stop_claiming(self) -> None:
        """Nothing to do before :meth:`stop` (each actor's runner stops claiming when told to stop)."""

    def abort(self) -> None:
        """End running rollouts now on every actor (as the end of the grace period would)."""
        for h in self._handles:
            h.abort.remote()

    @property
    def alive(self) -> bool:
        """Whether any actor still runs a runner (a restarting actor counts once it is back)."""
        ray = _ray()
        for h in self._handles:
            try:
                if ray.get(h.alive.remote(), timeout=CALL_TIMEOUT_S):
                    return True
            except Exception:
                continue
        return False

    @property
    def stats(self) -> WorkerStats:
        if self._stopped:
            return self._stats
        ray = _ray()
        total = WorkerStats()
        for h in self._handles:
            try:
                total.add(WorkerStats(**ray.get(h.stats.remote(), timeout=CALL_TIMEOUT_S)))
            except Exception:
                continue
        return total

    @property
    def errors(self) -> list[BaseException]:
        return self._errors

    def __enter__(self) -> RayRunners:
        return self.start() if not self._handles else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _kill_all(self) -> None:
        ray = _ray()
        for h in self._handles:
            try:
                ray.kill(h, no_restart=True)
            except Exception as e:
                logger.debug("ray.kill: %s", e)
        if self._connected_here:
            ray.shutdown()
            self._connected_here = False


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("Ray runners need ray: pip install 'tracerl[ray]' (or pip install ray)") from None
    return ray
