"""Asynchronous updates (``TrainerConfig.async_updates``): the update of step k runs in a background thread
while the rollouts of step k+1 are sampled with the weights of step k−1.

    sample B1 (W0) ─▶ update U1 ───────────────┐
                      sample B2 (W0) ─▶ wait U1, serve W1 ─▶ update U2 ──────────────┐
                                                  sample B3 (W1) ─▶ wait U2, serve W2 ─▶ update U3 …

The engine swaps weights only between steps (when the finished update is collected), so each batch is
sampled by one weights version, exactly one update older than the learner that trains on it (except the
first). The learner handles that as it handles any stale call (:mod:`tracerl.algorithms.learner`): its
recorded sampling log-probs are π_old, so the PPO ratio reweights it by importance sampling, and calls
more than ``max_staleness`` updates old (default 1) are dropped; ``staleness_mean``/``staleness_max`` in
the metrics show the lag. A step then costs ``max(rollouts, update)`` instead of ``rollouts + update``.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class PendingUpdate:
    """``algorithm.update(batch)`` running in a daemon thread, with what the step's record needs later."""

    def __init__(self, algorithm: Any, batch: Any, rollouts: list[Any], used_items: list[Any], t0: float,
                 rollout_s: float, extra: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.batch, self.rollouts, self.used_items, self.t0, self.rollout_s = batch, rollouts, used_items, t0, rollout_s
        self.extra = extra or {}  # the step's own metrics, logged with its record
        self.result: Any = None
        self.error: BaseException | None = None
        self.update_s = 0.0
        self._thread = threading.Thread(target=self._run, args=(algorithm,), name="tracerl-update", daemon=True)
        self._thread.start()

    def _run(self, algorithm: Any) -> None:
        start = time.monotonic()
        try:
            self.result = algorithm.update(self.batch)
        except BaseException as e:  # re-raised in the trainer's thread by join()
            self.error = e
        self.update_s = time.monotonic() - start

    def join(self) -> Any:
        """Wait for the update; returns its result (or raises what it raised)."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.result
