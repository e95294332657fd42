"""The paired bootstrap on hand-computed cases: constant gains, two tasks, and bad input."""

from __future__ import annotations

import pytest

from tracerl.errors import ConfigError
from tracerl.stats import paired_bootstrap


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
