"""The runner worker's account of late heartbeats: where the time between two renewals of a lease went."""

from __future__ import annotations

from tracerl.runner.worker import _Beats


def test_on_time_heartbeats_say_nothing_and_a_late_one_splits_its_delay_between_worker_and_store() -> None:
    beats = _Beats(last=0.0, lease_s=30.0)  # due every 10 s; late once more than 20 s pass between renewals
    assert beats.renewed(sent=10.0, landed=10.5) is None
    assert beats.renewed(sent=20.5, landed=30.4) is None  # 19.9 s: still within 2/3 of the lease
    # due at 40.4, sent at 45.0 (the worker's loop was 4.6 s late), landed at 57.4 (the store took 12.4 s)
    late = beats.renewed(sent=45.0, landed=57.4)
    assert late == (
        "landed 27.0 s after the last one, 30 s lease "
        "(the store call took 12.4 s, the worker sent it 4.6 s after it was due)"
    )
    assert beats.last == 57.4


def test_a_lost_lease_is_explained_only_when_the_lease_had_run_out() -> None:
    beats = _Beats(last=100.0, lease_s=30.0)
    assert beats.lost(sent=110.0, landed=110.2) is None  # 10.2 s: the rollout was cancelled, not expired
    why = beats.lost(sent=128.0, landed=131.0)
    assert why == (
        "the heartbeat landed 31.0 s after the last one, past the 30 s lease: "
        "the store call took 3.0 s, the worker sent it 18.0 s after it was due"
    )
