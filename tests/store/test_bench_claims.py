"""``tracerl bench claims`` end to end on a small queue: every rollout claimed exactly once, in both modes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tracerl.bench.claims import run_case

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("mode", ["claim", "claim_many"])
def test_claiming_processes_take_every_rollout_once(pg_schema: Callable[[], str], mode: str) -> None:
    base = pg_schema().rsplit("?schema=", 1)[0]  # the case makes (and drops) its own schema
    case = run_case(base, processes=3, rollouts=120, mode=mode, batch=8)
    assert (case["claims"], case["double_claims"], case["unclaimed"]) == (120, 0, 0)
    assert case["claims_per_s"] > 0 and case["batch"] == (8 if mode == "claim_many" else 1)
