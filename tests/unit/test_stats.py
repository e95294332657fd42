"""The paired bootstrap on hand-computed cases (constant gains, two tasks, bad input) and the seed table."""

from __future__ import annotations

import pytest

from tracerl.errors import ConfigError
from tracerl.stats import paired_bootstrap, seed_average, seed_table


def test_a_constant_gain_has_a_zero_width_interval() -> None:
    r = paired_bootstrap([0.0, 0.5, 0.25], [0.25, 0.75, 0.5])
    assert (r.mean, r.low, r.high, r.n) == pytest.approx((0.25, 0.25, 0.25, 3))


def test_two_tasks_give_the_hand_computed_resampling_distribution() -> None:
    # d = [0, 1]: resampled means are 0 (p 1/4), 0.5 (1/2), 1 (1/4) -> 2.5 % and 97.5 % quantiles 0 and 1;
    # at 40 % confidence the 30 % and 70 % quantiles both fall on 0.5
    wide = paired_bootstrap([0, 0], [0, 1], n_boot=20_000, seed=1)
    assert (wide.mean, wide.low, wide.high) == (0.5, 0.0, 1.0)
    narrow = paired_bootstrap([0, 0], [0, 1], n_boot=20_000, confidence=0.4, seed=1)
    assert (narrow.low, narrow.high) == (0.5, 0.5)
    assert str(wide) == "+0.500 [+0.000, +1.000] (95%, n=2)"


def test_unpaired_or_empty_scores_are_refused() -> None:
    with pytest.raises(ConfigError, match="equally long"):
        paired_bootstrap([1, 0], [1])
    with pytest.raises(ConfigError, match="equally long"):
        paired_bootstrap([], [])
    with pytest.raises(ConfigError, match="confidence must be between 0 and 1"):
        paired_bootstrap([1], [1], confidence=95)


def test_seed_table_rows_means_times_and_the_per_task_seed_average() -> None:
    sft = [{"mean": 0.5, "rewards": [1.0, 0.0], "train_seconds": 90.0, "steps": 12},
           {"mean": 1.0, "rewards": [1.0, 1.0], "train_seconds": 30.0}]  # fmt: skip
    rows = [("warm start", sft), ("RL", [sft[0], None])]  # RL: seed 1 not run yet -> no row
    assert seed_table(["0", "1"], ("base", 0.25), rows) == [
        "| stage | seed 0 | seed 1 | mean | train time per seed |",
        "|---|---|---|---|---|",
        "| base | 0.250 | 0.250 | 0.250 | – |",
        "| warm start | 0.500 | 1.000 | 0.750 | 1.5 min (12 steps), 0.5 min |",
    ]
    assert seed_average(sft) == [1.0, 0.5]
