"""Small statistics for reporting learning results honestly: a paired bootstrap interval for a gain.

Two evaluations of the same held-out tasks (before and after a training stage) are paired: task ``i`` has
scores ``a_i`` and ``b_i``, and the gain is the mean of the differences ``d_i = b_i − a_i``. The paired
bootstrap resamples tasks with replacement ``B`` times and reads the interval off the resampled means::

    d̄ = (1/n) Σ_i d_i,      d̄*_k = (1/n) Σ_j d_{I_kj},  I_kj ~ Uniform{1..n}  (k = 1..B)
    interval = [ q_{α/2}(d̄*), q_{1−α/2}(d̄*) ]            (percentile interval, confidence 1 − α)

With several training seeds, average each task's scores over the seeds first (``a_i``, ``b_i`` are means),
so the interval is over tasks — the unit others will evaluate on — and seeds only reduce noise.

    r = paired_bootstrap(before=[0, 1, 0, 0], after=[1, 1, 0, 1])
    r.mean, r.low, r.high        # 0.5, 0.0, 1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tracerl.errors import ConfigError

__all__ = ["Interval", "paired_bootstrap"]


@dataclass(frozen=True)
class Interval:
    """A mean difference with its bootstrap interval (``low``, ``high``) at ``confidence``, over ``n`` tasks."""

    mean: float
    low: float
    high: float
    confidence: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}] ({self.confidence:.0%}, n={self.n})"


def paired_bootstrap(
    before: Sequence[float],
    after: Sequence[float],
    *,
    n_boot: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """The mean of ``after − before`` over paired tasks and its percentile bootstrap interval (see module)."""
    a = np.asarray(before, dtype=np.float64)
    b = np.asarray(after, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ConfigError(
            f"paired_bootstrap needs two equally long, non-empty lists of per-task scores; got {a.shape} and {b.shape}"
        )
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}")
    if n_boot < 1:
        raise ConfigError(f"n_boot must be ≥ 1, got {n_boot!r}")
    d = b - a
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(float(d.mean()), float(low), float(high), confidence, int(d.size))
