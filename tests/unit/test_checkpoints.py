"""Checkpoint folders of a run: the newest ``keep`` stay on disk, ``latest`` names the newest, and resuming
refuses another model's checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracerl.errors import ConfigError
from tracerl.train.checkpoints import Position, latest_checkpoint, read_position, save_checkpoint


class StateWriter:
    """The part of the Algorithm protocol a checkpoint uses: ``save(folder)`` and ``weights_version``."""

    weights_version = 7

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "learner.pt").write_bytes(b"x" * 1000)


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_only_the_newest_keep_checkpoints_stay_on_disk(tmp_path: Path, keep: int) -> None:
    for step in range(1, 6):
        save_checkpoint(StateWriter(), tmp_path, Position(step=step, epoch=0, batch=step), model="m", keep=keep)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert kept == [f"step-{s:06d}" for s in range(6 - keep, 6)]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000005"
    pos, folder = read_position(tmp_path, model="m")
    assert (pos.step, pos.batch, folder) == (5, 5, tmp_path / "checkpoints" / "step-000005")
    with pytest.raises(ConfigError, match="trained model 'm' but this run trains 'other'"):
        read_position(tmp_path, model="other")
