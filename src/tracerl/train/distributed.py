"""A Trainer run under ``torchrun``: rank 0 runs everything, the other ranks only take part in updates.

    torchrun --nproc-per-node 4 -m tracerl train config.toml                 # one machine, 4 processes
    torchrun --nnodes 2 --node-rank R --nproc-per-node 8 \\
             --master-addr HOST0 --master-port 29500 -m tracerl train config.toml   # 2 machines

:meth:`tracerl.Trainer.fit` calls :func:`join` first. In a single process (no ``WORLD_SIZE`` > 1) nothing
changes. Under torchrun every process joins the process group (gloo on CPU, NCCL on GPUs); rank 0 goes on
with the whole run (store, gateway, engine, runners, validation, checkpoints, metrics) and its GRPO updates
become data-parallel (:mod:`tracerl.algorithms.distributed`); every other rank loads the same model, builds
the same learner and waits in :func:`follow` for each batch until rank 0 releases it at the end of the run.
Rank 0's parameters and optimizer state are copied to the others at the first update, so a resumed run
stays in step. One GRPO stage per run (SFT stages and stage chains run in one process).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tracerl.errors import ConfigError

if TYPE_CHECKING:
    from tracerl.config import TrainerConfig
    from tracerl.train.trainer import FitResult, Stage, Trainer

logger = logging.getLogger(__name__)


def join(stages: list[Stage]) -> bool:
    """Join torchrun's process group when launched by it; True on a follower rank (> 0)."""
    from tracerl.algorithms import distributed as dp

    if not dp.launched_by_torchrun():
        return False
    from tracerl.algorithms.grpo import GRPO

    if len(stages) != 1 or not isinstance(stages[0].algorithm, GRPO):
        names = [s.algorithm.name for s in stages]
        raise ConfigError(
            f"a run under torchrun trains one GRPO stage, got stages {names}; run the other stages in one "
            "process (plain `tracerl train`) and start the GRPO stage from their final weights"
        )
    dp.init_from_env()
    return dp.rank() > 0


def release() -> None:
    """On rank 0 at the end of a run (whatever ended it): let the follower ranks return."""
    from tracerl.algorithms import distributed as dp

    if dp.world_size() > 1 and dp.rank() == 0:
        dp.release_followers()


def follow(trainer: Trainer, cfg: TrainerConfig) -> FitResult:
    """A follower rank's whole run: the learner on the same model, every update rank 0 starts."""
    from tracerl.algorithms import distributed as dp
    from tracerl.algorithms.torch_types import manual_seed
    from tracerl.engines.models import load_model
    from tracerl.metrics import METRICS_FILE, PLOT_FILE
    from tracerl.train.trainer import FitResult

    algorithm: Any = trainer.algorithm
    manual_seed(cfg.seed)
    model, tokenizer = load_model(trainer.model)
    learner = algorithm.setup(model, tokenizer)
    logger.info("rank %d of %d: following rank 0's updates", dp.rank(), dp.world_size())
    steps = dp.follow(learner)
    return FitResult(
        steps=steps, val_before=None, val_after=None, history=[], run_dir=cfg.run_path,
        metrics_path=cfg.run_path / METRICS_FILE, plot_path=cfg.run_path / PLOT_FILE, checkpoint=None,
        final_model=None, stopped_by="rank 0",
    )  # fmt: skip
