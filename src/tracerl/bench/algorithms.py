"""``tracerl bench algorithms``: GRPO, PPO, REINFORCE++ and RLOO on the same task at the same wall-clock
budget of training time, one table of held-out reward and steps.

Every algorithm runs the demo's settings (:data:`tracerl.demo.DEMO`: the arithmetic task, SmolLM2-135M,
group size, tasks per step, learning rate, completion length, runners) — or, with ``--quick``, the CI
smoke settings (:data:`tracerl.demo.QUICK`: the tiny random model on the digits toy task) — through the
same :class:`~tracerl.Trainer` (gateway, runner processes, sqlite store), one after the other, each with
``time_budget_s = --minutes × 60`` of training and the same seed. Only the algorithm differs; each keeps
its own defaults beyond the shared settings (PPO: value head, 2 epochs, γ = 1, λ = 0.95; REINFORCE++:
no KL unless ``--kl``; RLOO: leave-one-out baseline without std scaling). Held-out reward is the Trainer's
own greedy validation on the task's held-out split before and after training (outside the budget).

Steps in the same time differ by algorithm (PPO's extra value pass and epochs cost time): the table
reports both, so "better per step" and "better per minute" can both be read off it. One run per
algorithm and seed: on a shared CPU and a short budget the differences are within noise unless large.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

ALGORITHMS = ("grpo", "ppo", "reinforce++", "rloo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=5.0, help="training time per algorithm (default 5)")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help=f"comma-separated of {ALGORITHMS}")
    parser.add_argument("--quick", action="store_true", help="the tiny random model on the toy task (CI size)")
    parser.add_argument("--model", default=None, help="model (default: the demo's, or tiny-random with --quick)")
    parser.add_argument("--n-val", type=int, default=None, help="held-out tasks (default: the demo's)")
    parser.add_argument("--kl", type=float, default=0.0, help="kl_coef for every algorithm (default 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-algorithms", help="folder for the runs, JSON and table")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console

    from tracerl.demo import DEMO, QUICK

    base = QUICK if args.quick else DEMO
    settings = {**base, "model": args.model or base["model"], "n_val": args.n_val or base["n_val"]}
    names = [n.strip() for n in args.algorithms.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALGORITHMS))
    if unknown:
        raise SystemExit(f"unknown algorithm(s) {unknown}; choose from {list(ALGORITHMS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [_run_one(name, settings, args.minutes * 60, args.seed, args.kl, out) for name in names]
    result = {
        "task": settings["task"], "model": settings["model"], "minutes": args.minutes, "seed": args.seed,
        "n_val": settings["n_val"], "kl_coef": args.kl, "algorithm": settings["algorithm"],
        "trainer": trainer_settings(settings), "runners": settings["runners"], "rows": rows,
    }  # fmt: skip
    (out / "algorithms.json").write_text(json.dumps(result, indent=2))
    table = markdown_table(result)
    (out / "algorithms.md").write_text(table + "\n")
    Console().print(table)
    return result


def _run_one(name: str, settings: dict[str, Any], budget_s: float, seed: int, kl: float, out: Path) -> dict[str, Any]:
    import tracerl
    from tracerl.config import RunnerConfig, StageSpec, TrainerConfig
    from tracerl.train.cli import build_algorithm

    task = _task_module(settings["task"])
    options = {"model": settings["model"], "seed": seed, **settings["algorithm"]}
    if kl:
        options["kl_coef"] = kl
    algorithm = build_algorithm(StageSpec(name, options))
    trainer = tracerl.Trainer(
        agent=task.AGENT, algorithm=algorithm, runners=RunnerConfig(n=settings["runners"]),
        config=TrainerConfig(
            run_dir=str(out / name.replace("+", "p")), experiment=f"bench-{name}", seed=seed, time_budget_s=budget_s,
            progress=False, resume=False, checkpoint_at_end=False, val_every=0, **trainer_settings(settings),
        ),
    )  # fmt: skip
    t0 = time.monotonic()
    train, val = task.make_tasks("train", settings["n_train"]), task.make_tasks("val", settings["n_val"])
    fit = trainer.fit(train, val_tasks=val)
    train_s = sum(h["step_s"] for h in fit.history)
    return {
        "algorithm": name, "steps": fit.steps, "val_before": fit.val_before, "val_after": fit.val_after,
        "train_s": round(train_s, 1), "wall_s": round(time.monotonic() - t0, 1),
        "s_per_step": round(train_s / fit.steps, 2) if fit.steps else None,
        "train_reward_last": fit.history[-1].get("reward_mean") if fit.history else None,
    }  # fmt: skip


def trainer_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The demo's trainer settings every algorithm shares: its own, less the step cap and the periodic
    validation (the budget is time; held-out reward is measured once before and once after)."""
    return {k: v for k, v in settings["trainer"].items() if k not in ("val_every", "max_steps")}


class _Task:
    def __init__(self, agent: Any, make_tasks: Any) -> None:
        self.AGENT, self.make_tasks = agent, make_tasks


def _task_module(name: str) -> _Task:
    if name == "toy":
        from tracerl.tasks import toy

        return _Task(toy.digits_agent, toy.make_tasks)
    from tracerl.tasks import arithmetic

    return _Task(arithmetic.arithmetic_agent, arithmetic.make_tasks)


def markdown_table(result: dict[str, Any]) -> str:
    """The result as a Markdown table: one row per algorithm."""

    def num(x: Any, fmt: str = ".3f") -> str:
        return "–" if x is None else format(x, fmt)

    head = (
        f"{result['task']} task, {result['model']}, {result['minutes']:g} min of training per algorithm, "
        f"seed {result['seed']}, {result['n_val']} held-out tasks (greedy)\n\n"
        "| algorithm | steps | s/step | held-out before | held-out after | last train reward |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    lines = [
        f"| {r['algorithm']} | {r['steps']} | {num(r['s_per_step'], '.2f')} | {num(r['val_before'])} | "
        f"{num(r['val_after'])} | {num(r['train_reward_last'])} |"
        for r in result["rows"]
    ]
    return "\n".join([head, *lines])
