"""Demonstration search (APO) on the demo task with SmolLM2-135M on this CPU: held-out reward of the agent's
own prompt vs the optimized one, and GRPO at the same wall-clock budget, in one table. No weight changes, no
critic model: the few-shot demonstrations are the model's own correct answers to train questions
(bootstrapped from the store), chosen by random search on a validation split, and the gateway inserts them
after the unchanged agent's system prompt.

    python benchmarks/apo_demo.py [--seeds 0 1] [--run-dir runs/apo-demo]     # results.json + results.md

Splits: APO scores candidates on ``--apo-val`` tasks and takes demonstrations from ``--train`` tasks (the same
ones each step), both from the demo task's train split; the held-out reward (greedy) is on the first
``--held-out`` tasks of its ``val`` split, which APO never sees. GRPO (``tracerl demo``'s settings) trains
for as long as the whole APO run took (model loading and candidate scoring included, which favours GRPO).
The stages, the table and the bootstrap intervals: ``apo_compare.py`` (shared with ``apo_math.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from apo_compare import Comparison, run


def comparison(args: argparse.Namespace) -> Comparison:
    from tracerl.demo import DEMO
    from tracerl.tasks import arithmetic

    pool = arithmetic.make_tasks("train", args.train + args.apo_val)
    return Comparison(
        name="demo", agent="tracerl.tasks.arithmetic:arithmetic_agent", prompt=arithmetic.SYSTEM_PROMPT,
        train=pool[: args.train], apo_val=pool[args.train :], test=arithmetic.make_tasks("val", args.held_out),
        grpo_train=arithmetic.make_tasks("train", 2000), run_dir=Path(args.run_dir), model=args.model,
        apo_steps=args.steps, apo_batch_size=args.train, apo_budget_s=args.budget_s, candidates=args.candidates,
        max_demos=args.max_demos, demo_min_reward=1.0, grpo=DEMO["algorithm"],
        grpo_trainer={**DEMO["trainer"], "max_tokens": args.max_tokens}, max_tokens=args.max_tokens,
        runners=args.runners, grpo_runners=DEMO["runners"],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--run-dir", default="runs/apo-demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--model", default="smollm2-135m", help="tiny-random: a smoke run of the pipeline")
    parser.add_argument("--train", type=int, default=16, help="train tasks (demonstration pool)")
    parser.add_argument("--apo-val", type=int, default=16, help="tasks APO scores candidates on")
    parser.add_argument("--held-out", type=int, default=48, help="held-out tasks")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=3, help="candidates per step")
    parser.add_argument("--max-demos", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--runners", type=int, default=4)
    parser.add_argument("--budget-s", type=float, default=420.0, help="time budget of the search steps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    return run(comparison(args), seeds=args.seeds)


if __name__ == "__main__":
    main()
