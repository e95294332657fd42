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

:func:`seed_table` writes the markdown table the example recipes and benchmarks report (one column per seed,
their mean, the training time), and :func:`seed_average` the per-task means the intervals are taken over.

:func:`pass_at_k` is the unbiased estimate of pass@k (Chen et al., 2021, "Evaluating Large Language Models
Trained on Code"): the chance that at least one of ``k`` samples solves a task, estimated from ``n ≥ k``
samples of which ``c`` solved it, without the bias of drawing only ``k``::

    pass@k = 1 − C(n − c, k) / C(n, k) = 1 − Π_{i = n−c+1}^{n} (1 − k / i)     (1 when n − c < k)

    pass_at_k(4, 1, 1), pass_at_k(4, 1, 2), pass_at_k(4, 2, 2)   # 0.25, 0.5, 5/6

For RL this is the ceiling check: a policy-gradient stage reweights what the policy already samples, so on
held-out tasks its greedy gain is bounded in practice by how far pass@k of the starting policy lies above its
pass@1 (Yue et al., 2025, "Does Reinforcement Learning Really Incentivize Reasoning Capacity in LLMs Beyond the
Base Model?").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tracerl.errors import ConfigError

__all__ = ["Interval", "paired_bootstrap", "pass_at_k", "seed_average", "seed_table"]


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


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one task from ``n`` samples of which ``c`` passed (see module): the product form,
    which stays exact where the binomial coefficients would overflow a float."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)) or not 0 <= c <= n or not 1 <= k <= n:
        raise ConfigError(f"pass@k needs integers 0 ≤ c ≤ n and 1 ≤ k ≤ n; got n={n!r}, c={c!r}, k={k!r} "
                          "(draw at least k samples per task)")
    if n - c < k:
        return 1.0
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def seed_average(runs: Sequence[Mapping[str, Any]], key: str = "rewards") -> list[float]:
    """Each task's reward averaged over the seeds' runs (each run a mapping with per-task ``"rewards"``; ``key``
    names another per-task list to average, e.g. ``"calls"``)."""
    return [sum(col) / len(col) for col in zip(*(r[key] for r in runs), strict=True)]


def seed_table(
    seeds: Sequence[str],
    base: tuple[str, float],
    rows: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
    *,
    first_column: str = "stage",
    time_column: str = "train time per seed",
) -> list[str]:
    """A markdown table of held-out results over seeds: a header, the base row (``(label, mean)``: greedy
    decoding of the base model does not depend on the seed, so its mean fills every seed's column), then one
    row per ``(label, runs)`` with each seed's ``"mean"``, their mean, and each run's ``"train_seconds"`` (with
    ``"steps"`` where the run has them). A row whose runs are not all there yet (``None`` or missing) is left out.
    """
    lines = [
        f"| {first_column} | {' | '.join(f'seed {s}' for s in seeds)} | mean | {time_column} |",
        "|---|" + "---|" * (len(seeds) + 2),
        f"| {base[0]} | {' | '.join(f'{base[1]:.3f}' for _ in seeds)} | {base[1]:.3f} | – |",
    ]
    for label, runs in rows:
        if not seeds or len(runs) != len(seeds) or not all(runs):
            continue
        means = [float(r["mean"]) for r in runs]
        times = ", ".join(
            f"{r['train_seconds'] / 60:.1f} min" + (f" ({r['steps']} steps)" if "steps" in r else "") for r in runs
        )
        lines.append(f"| {label} | {' | '.join(f'{m:.3f}' for m in means)} | {sum(means) / len(means):.3f} | {times} |")
    return lines
