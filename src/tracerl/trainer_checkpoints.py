"""Checkpoints of a training run: the learner's state plus where the loop was, so a run resumes exactly.

Layout in the run folder::

    checkpoints/
        latest                  the name of the newest complete checkpoint folder (replaced atomically)
        step-000040/
            learner.pt          weights, optimizer, RNG states (written by the learner)
            trainer.json        {"step", "epoch", "batch", "val_before", "model", "weights_version"}

``latest`` is only moved once both files are written, so a crash mid-save leaves the previous checkpoint in
charge. Only the newest checkpoint is kept (a 135M-parameter model's AdamW state is ≈ 1.6 GB).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracerl.errors import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINER_STATE = "trainer.json"


@dataclass
class Position:
    """Where the training loop is: steps done, epoch, batches done in that epoch, first held-out reward."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    val_before: float | None = None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of ``run_dir``, or None."""
    pointer = run_dir / CHECKPOINTS / LATEST
    if not pointer.exists():
        return None
    folder = run_dir / CHECKPOINTS / pointer.read_text().strip()
    return folder if (folder / TRAINER_STATE).exists() else None


def save_checkpoint(learner: Any, run_dir: Path, pos: Position, *, model: str) -> Path:
    """Write the checkpoint of step ``pos.step``, point ``latest`` at it, then delete the older ones."""
    root = run_dir / CHECKPOINTS
    folder = root / f"step-{pos.step:06d}"
    learner.save_checkpoint(folder)
    state = {
        "step": pos.step,
        "epoch": pos.epoch,
        "batch": pos.batch,
        "val_before": pos.val_before,
        "model": model,
        "weights_version": learner.weights_version,
    }
    (folder / TRAINER_STATE).write_text(json.dumps(state, indent=2))
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(folder.name)
    os.replace(tmp, root / LATEST)
    for old in root.glob("step-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint of step %d in %s", pos.step, folder)
    return folder


def clear_checkpoints(run_dir: Path) -> None:
    """Delete the checkpoints of an earlier run in ``run_dir`` (a run that starts over must not resume them)."""
    root = run_dir / CHECKPOINTS
    if root.exists():
        logger.warning("starting over in %s: deleting the checkpoints of the earlier run", run_dir)
        shutil.rmtree(root)


def resume(learner: Any, run_dir: Path, *, model: str) -> Position:
    """Load the newest checkpoint of ``run_dir`` into ``learner`` and return the loop position it saved
    (a fresh :class:`Position` when there is none)."""
    folder = latest_checkpoint(run_dir)
    if folder is None:
        return Position()
    state = json.loads((folder / TRAINER_STATE).read_text())
    if state.get("model") != model:
        raise ConfigError(
            f"the checkpoint {folder} trained model {state.get('model')!r} but this run trains {model!r}; "
            "use another run_dir, or resume=False to start over"
        )
    learner.load_checkpoint(folder)
    logger.info("resuming from %s (step %d)", folder, state["step"])
    return Position(step=state["step"], epoch=state["epoch"], batch=state["batch"], val_before=state["val_before"])
