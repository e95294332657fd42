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
    assert out["budget_minutes"] == 4.0 and out["trl_gained"]
    assert out["mean_after_start"] == {"tracerl": 0.525, "trl": (0.35 + 0.44) / 2}


def test_summary_says_none_when_tracerl_never_reached_trl() -> None:
    curves = {
        "tracerl": [{"minutes": 0.0, "reward": 0.3}, {"minutes": 4.0, "reward": 0.45}],
        "trl": [{"minutes": 0.0, "reward": 0.3}, {"minutes": 4.0, "reward": 0.5}],
    }
    out = _summarise(curves, {}, {"model": "m", "task": "t"}, 240.0, 48)
    assert out["trl_gained"] and out["tracerl_minutes_to_trl_final"] is None


def test_summary_gives_no_time_to_match_when_trl_ended_below_the_start() -> None:
    # TRL fell from the shared 0.42 to 0.31: "tracerl reached it at minute 0" would read as a win it is not
    curves = {
        "tracerl": [{"minutes": 0.0, "reward": 0.42}, {"minutes": 3.0, "reward": 0.64}, {"minutes": 6, "reward": 0.48}],
        "trl": [{"minutes": 0.0, "reward": 0.42}, {"minutes": 3.0, "reward": 0.57}, {"minutes": 6, "reward": 0.31}],
    }
    out = _summarise(curves, {}, {"model": "m", "task": "t"}, 360.0, 48)
    assert not out["trl_gained"] and out["tracerl_minutes_to_trl_final"] is None
