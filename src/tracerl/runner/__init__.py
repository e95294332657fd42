"""Runners: claim rollouts from the store and run the user's unchanged agent on them.

* :mod:`tracerl.runner.pool` — :class:`Runner` / :func:`start_runners`: n workers, start and graceful stop;
* :mod:`tracerl.runner.worker` — one worker thread: claim, heartbeat, timeout, record, finish;
* :mod:`tracerl.runner.process` — the persistent agent worker process the thread drives;
* :mod:`tracerl.runner.child` — the code that runs inside that process;
* :mod:`tracerl.runner.cli` — ``tracerl runner``.

Runner code never imports torch: it reaches models only through the gateway URL it gives the agent.
"""

from __future__ import annotations

from tracerl.runner.pool import Runner, start_runners
from tracerl.runner.worker import WorkerStats

__all__ = ["Runner", "WorkerStats", "start_runners"]
