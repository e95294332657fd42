"""The reward plot marks where each later stage of a multi-stage run begins."""

from __future__ import annotations

import json
from pathlib import Path

from tracerl.metrics import plot_rewards, stage_boundaries


def test_stage_boundaries_lie_between_the_last_and_first_steps_of_two_stages(tmp_path: Path) -> None:
    records = [{"kind": "train", "step": s, "stage": 1, "reward_mean": 0.1} for s in (1, 2, 3)]
    records += [{"kind": "val", "step": 3, "val_reward": 0.2}]
    records += [{"kind": "train", "step": s, "stage": 2, "reward_mean": 0.4} for s in (4, 5)]
    records += [{"kind": "train", "step": 9, "stage": 3, "reward_mean": 0.6}]
    assert stage_boundaries(records) == [(3.5, 2), (7.0, 3)]
    assert stage_boundaries(records[:3]) == []  # one stage: nothing to mark

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    png = plot_rewards(path, tmp_path / "rewards.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
