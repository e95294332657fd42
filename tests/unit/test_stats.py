"""The paired bootstrap on hand-computed cases (constant gains, two tasks, bad input), the seed table, and pass@k
(the estimator, and ``EvalResults.pass_at`` over hand-built sampled results)."""

from __future__ import annotations

import pytest

import tracerl
from tracerl.errors import ConfigError
from tracerl.evaluate import EvalResult, EvalResults
from tracerl.stats import paired_bootstrap, pass_at_k, seed_average, seed_table


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


def test_pass_at_k_on_hand_computed_cases() -> None:
    # 1 − C(n−c, k)/C(n, k): n=4, c=1: k=1 → 1 − 3/4; k=2 → 1 − 3/6; n=4, c=2, k=2 → 1 − 1/6
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    assert (pass_at_k(4, 0, 4), pass_at_k(4, 3, 2), pass_at_k(4, 4, 1)) == (0.0, 1.0, 1.0)  # none / n−c < k / all
    # n=10, c=3, k=5: 1 − C(7,5)/C(10,5) = 1 − 21/252
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert pass_at_k(200, 5, 100) == pytest.approx(0.9703083947657)  # 1 − C(195,100)/C(200,100), no overflow
    for bad in ((4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)):
        with pytest.raises(ConfigError, match="pass@k needs integers"):
            pass_at_k(*bad)


def _sampled(rewards: list[list[float | None]]) -> EvalResults:
    results = [
        EvalResult(task={"id": t}, rollout_id=f"r{t}-{i}", status="failed" if r is None else "succeeded", reward=r,
                   error=None)
        for t, group in enumerate(rewards) for i, r in enumerate(group)
    ]  # fmt: skip
    return EvalResults(results, "memory://", 0.0, samples=len(rewards[0]))


def test_eval_results_pass_at_k_per_task_then_averaged() -> None:
    res = _sampled([[1.0, 0.0, 0.0, 1.0], [0.0, None, 0.6, 0.0]])  # task 0: c = 2 of 4; task 1: c = 0 (≥ 1)
    assert [[r.task["id"] for r in g] for g in res.by_task()] == [[0] * 4, [1] * 4]
    assert res.pass_at(1) == pytest.approx((0.5 + 0) / 2)
    assert res.pass_at(2) == pytest.approx((5 / 6 + 0) / 2)
    assert res.pass_at(4) == pytest.approx((1 + 0) / 2)
    assert res.pass_at(2, threshold=0.5) == pytest.approx((5 / 6 + 0.5) / 2)  # task 1's 0.6 passes now
    assert res.mean_reward == pytest.approx(2.6 / 8)  # the failed rollout counts 0
    assert repr(res) == "EvalResults(n=8, samples=4, mean_reward=0.3250, failed=1)"
    with pytest.raises(ConfigError, match=r"1 ≤ k ≤ samples \(4\)"):
        res.pass_at(5)
    with pytest.raises(ValueError, match="groups of samples=4"):
        EvalResults(list(res)[:7], "memory://", 0.0, samples=4)


def test_evaluate_refuses_bad_sampling_before_loading_anything() -> None:
    tasks = [{"id": 1}]
    with pytest.raises(ConfigError, match="samples=4 with greedy decoding gives 4 copies"):
        tracerl.evaluate("nowhere:agent", tasks, samples=4)
    with pytest.raises(ConfigError, match="samples must be a whole number ≥ 1"):
        tracerl.evaluate("nowhere:agent", tasks, samples=0, temperature=1.0)
    with pytest.raises(ConfigError, match="temperature must be a number between 0"):
        tracerl.evaluate("nowhere:agent", tasks, samples=2, temperature=-1.0)
    with pytest.raises(ConfigError, match=r"top_p must be a number in \(0, 1\]"):
        tracerl.evaluate("nowhere:agent", tasks, temperature=1.0, top_p=0.0)
