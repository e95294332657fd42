"""``tracerl train CONFIG``: a run from a TOML file (layout: :mod:`tracerl.config`), stopped cleanly by
Ctrl-C or SIGTERM (a checkpoint is saved; ``tracerl train CONFIG`` again resumes it).

Importing this module is light; torch and the rest load when the run starts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
from collections.abc import Generator
from typing import Any

from tracerl.config import RunConfig, StageSpec, load_run_config


@contextlib.contextmanager
def stop_on_sigterm() -> Generator[None, None, None]:
    """Inside the block, SIGTERM (a job scheduler, ``kill``) stops a run like Ctrl-C does: runners, gateway
    and engine are shut down and a checkpoint is saved. The previous handler is restored afterwards."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_algorithm(spec: StageSpec) -> Any:
    """The algorithm object a stage of a run config names (``grpo`` → :class:`tracerl.GRPO`, ...)."""
    options = dict(spec.options)
    model = options.pop("model")
    if spec.algorithm == "sft":
        from tracerl.algorithms.sft import SFT

        return SFT(model, **options)
    if spec.algorithm == "ppo":
        from tracerl.algorithms.ppo import PPO

        return PPO(model, **options)
    if spec.algorithm == "reinforce++":
        from tracerl.algorithms.ppo import REINFORCEpp

        return REINFORCEpp(model, **options)
    if spec.algorithm == "rloo":
        from tracerl.algorithms.rloo import RLOO

        return RLOO(model, **options)
    if spec.algorithm == "apo":
        from tracerl.algorithms.apo import APO

        return APO(model, **options)
    from tracerl.algorithms.grpo import GRPO

    return GRPO(model, **options)


def build_stages(run: RunConfig) -> list[Any]:
    from tracerl.train.trainer import Stage

    return [Stage(build_algorithm(s), **s.trainer) for s in run.stages]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a run configuration in TOML (layout: see the tracerl.config docstring)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a checkpoint")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each stage after this many steps")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tracerl.train.data import load_tasks
    from tracerl.train.trainer import Trainer

    run = load_run_config(args.config)
    trainer_cfg = run.trainer
    if args.no_resume:
        trainer_cfg = dataclasses.replace(trainer_cfg, resume=False)
    if args.max_steps is not None:
        trainer_cfg = dataclasses.replace(trainer_cfg, max_steps=args.max_steps)
    train = load_tasks(run.train_tasks)
    val = load_tasks(run.val_tasks) if run.val_tasks else None
    trainer = Trainer(
        agent=run.agent, algorithm=build_stages(run), store=run.store.url, runners=run.runners, engine=run.engine,
        config=trainer_cfg, roles=run.roles,
    )
    with stop_on_sigterm():
        result = trainer.fit(train, val_tasks=val)
    out = Console()  # results on stdout; progress and logs on stderr
    if result.val_before is not None and result.val_after is not None:
        out.print(f"held-out reward: before {result.val_before:.3f} → after {result.val_after:.3f}")
    for i, stage in enumerate(result.stages, start=1):
        if len(result.stages) > 1:
            after = "–" if stage.val_after is None else f"{stage.val_after:.3f}"
            minutes = stage.seconds / 60
            out.print(f"stage {i} ({stage.name}): {stage.steps} steps in {minutes:.1f} min, held-out {after}")
    out.print(f"{result.steps} steps (stopped by {result.stopped_by}); metrics {result.metrics_path}, "
              f"plot {result.plot_path}")
    best_prompt = result.run_dir / "best_prompt.json"  # written by APO (tracerl.algorithms.apo)
    if best_prompt.is_file():
        out.print(f"best prompt (text, demonstrations, the prompts resource to evaluate it): {best_prompt}")
    return 0
