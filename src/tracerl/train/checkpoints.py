"""Checkpoints of a training run: the algorithm's state plus where the loop was, so a run resumes exactly.

Layout in the run folder::

    checkpoints/
        latest                  the name of the newest complete checkpoint folder (replaced atomically)
        step-000040/
            learner.pt          weights, optimizer, RNG states (written by the algorithm)
            trainer.json        {"stage", "step", "epoch", "batch", "val_before", "model", "weights_version"}
    stages/
        1-sft/model.safetensors the weights a finished stage handed to the next one (resuming a later
                                stage starts from them)

``latest`` is only moved once both files are written, so a crash mid-save leaves the previous checkpoint in
charge. The newest ``keep`` checkpoints are kept (a 135M-parameter model's AdamW state is ≈ 1.6 GB each).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tracerl.errors import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STAGES = "stages"
LATEST = "latest"
TRAINER_STATE = "trainer.json"
STAGE_WEIGHTS = "model.safetensors"


@dataclass
class Position:
    """Where the training loop is: stage (0-based), steps done in all stages, epoch and batches done in the
    stage's current epoch, steps done in this stage, and the held-out reward measured before the first step."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    val_before: float | None = None
    stage: int = 0
    stage_step: int = 0


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of ``run_dir``, or None."""
    pointer = run_dir / CHECKPOINTS / LATEST
    if not pointer.exists():
        return None
    folder = run_dir / CHECKPOINTS / pointer.read_text().strip()
    return folder if (folder / TRAINER_STATE).exists() else None


def save_checkpoint(algorithm: Any, run_dir: Path, pos: Position, *, model: str, keep: int = 1) -> Path:
    """Write the checkpoint of step ``pos.step``, point ``latest`` at it, then keep only the newest ``keep``."""
    root = run_dir / CHECKPOINTS
    folder = root / f"step-{pos.step:06d}"
    algorithm.save(folder)
    state = {**asdict(pos), "model": model, "weights_version": algorithm.weights_version}
    (folder / TRAINER_STATE).write_text(json.dumps(state, indent=2))
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(folder.name)
    os.replace(tmp, root / LATEST)
    for old in sorted(root.glob("step-*"))[: -max(keep, 1)]:
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint of step %d in %s (%s)", pos.step, folder, human_size(folder_size(folder)))
    return folder


def clear_run(run_dir: Path) -> None:
    """Delete the checkpoints and stage weights of an earlier run in ``run_dir`` (a run that starts over
    must not resume them)."""
    for name in (CHECKPOINTS, STAGES):
        root = run_dir / name
        if root.exists():
            logger.warning("starting over in %s: deleting %s/ of the earlier run", run_dir, name)
            shutil.rmtree(root)


def read_position(run_dir: Path, *, model: str) -> tuple[Position, Path | None]:
    """The loop position of the newest checkpoint of ``run_dir`` and its folder (a fresh position and
    None when there is none). Refuses a checkpoint of another model."""
    folder = latest_checkpoint(run_dir)
    if folder is None:
        return Position(), None
    state = json.loads((folder / TRAINER_STATE).read_text())
    if state.get("model") != model:
        raise ConfigError(
            f"the checkpoint {folder} trained model {state.get('model')!r} but this run trains {model!r}; "
            "use another run_dir, or resume=False to start over"
        )
    fields = {k: state[k] for k in ("step", "epoch", "batch", "val_before") if k in state}
    pos = Position(**fields, stage=int(state.get("stage", 0)), stage_step=int(state.get("stage_step", state["step"])))
    return pos, folder


def stage_weights_path(run_dir: Path, stage: int, name: str) -> Path:
    return run_dir / STAGES / f"{stage + 1}-{name}" / STAGE_WEIGHTS


def save_stage_weights(weights: dict[str, Any], path: Path) -> None:
    """The full weights a finished stage hands on (safetensors, written atomically)."""
    from tracerl.algorithms.torch_types import save_tensors

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_tensors({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp)
    os.replace(tmp, path)


def load_stage_weights(path: Path) -> dict[str, Any]:
    from tracerl.algorithms.torch_types import load_tensors

    if not path.exists():
        raise ConfigError(f"{path} is missing: the weights of an earlier stage are needed to resume this run; "
                          "start over with resume=False")
    return load_tensors(path)


def folder_size(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit in ("B", "KB") else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
