"""``tracerl bench learn``'s summary: the headline numbers come from the curves as a reader would read them."""

from __future__ import annotations

from tracerl.bench.learn import _summarise


def test_summary_reports_finals_and_when_tracerl_reached_trls_final_number() -> None:
    curves = {
        "tracerl": [{"minutes": 0.0, "reward": 0.3}, {"minutes": 2.0, "reward": 0.45}, {"minutes": 4.0, "reward": 0.6}],
        "trl": [{"minutes": 0.0, "reward": 0.3}, {"minutes": 2.0, "reward": 0.35}, {"minutes": 4.0, "reward": 0.44}],
    }
    out = _summarise(curves, {}, {"model": "m", "task": "t"}, 240.0, 48)
    assert out["tracerl_final"] == 0.6 and out["trl_final"] == 0.44
    assert out["tracerl_minutes_to_trl_final"] == 2.0  # the first snapshot at or above TRL's final number
    assert out["budget_minutes"] == 4.0


def test_summary_says_none_when_tracerl_never_reached_trl() -> None:
    curves = {"tracerl": [{"minutes": 0.0, "reward": 0.3}], "trl": [{"minutes": 4.0, "reward": 0.5}]}
    assert _summarise(curves, {}, {"model": "m", "task": "t"}, 240.0, 48)["tracerl_minutes_to_trl_final"] is None
