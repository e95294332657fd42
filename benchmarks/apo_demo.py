"""Demonstration search (APO) on the demo task with SmolLM2-135M on this CPU: held-out reward of the agent's
own prompt vs the optimized one. No weight changes, no critic model: the few-shot demonstrations are the
model's own correct answers to train questions (bootstrapped from the store), chosen by random search on a
validation split, and the gateway inserts them after the unchanged agent's system prompt.

    python benchmarks/apo_demo.py --run-dir runs/apo-demo [--seed 0] [--held-out 24] [--budget-s 420] [--grpo]

Splits: APO scores candidates on ``--apo-val`` tasks and takes demonstrations from ``--train`` tasks, both
from the demo task's train split; the held-out reward (greedy, before and after) is on the first
``--held-out`` tasks of its ``val`` split, which APO never sees. Prints one JSON line with the numbers and
writes the Trainer's usual run folder (``apo_candidates.json``, ``best_prompt.json``, ``metrics.jsonl``).
``--grpo`` then trains GRPO (``tracerl demo``'s settings) for as long as the whole APO run took (model
loading and both validations included, which favours GRPO) and reports its held-out reward on the same tasks.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def run_apo(args: argparse.Namespace) -> dict[str, Any]:
    import tracerl
    from tracerl.tasks import arithmetic

    pool = arithmetic.make_tasks("train", args.train + args.apo_val)
    train, apo_val = pool[: args.train], pool[args.train :]
    held_out = arithmetic.make_tasks("val", args.held_out)
    apo = tracerl.APO(
        "smollm2-135m", arithmetic.SYSTEM_PROMPT, strategy="demos", demo_search=args.demo_search,
        val_tasks=apo_val, num_candidates=args.candidates, max_demos=args.max_demos, demo_min_reward=1.0,
        seed=args.seed,
    )  # fmt: skip
    trainer = tracerl.Trainer(
        agent="tracerl.tasks.arithmetic:arithmetic_agent", algorithm=apo, runners=args.runners,
        run_dir=f"{args.run_dir}/apo-s{args.seed}", batch_size=args.train, epochs=args.steps, max_steps=args.steps,
        val_every=0, time_budget_s=args.budget_s, max_tokens=args.max_tokens, seed=args.seed, progress=False,
    )  # fmt: skip
    t0 = time.monotonic()
    result = trainer.fit(train, val_tasks=held_out)
    seconds = time.monotonic() - t0
    found = json.loads((result.run_dir / "apo_candidates.json").read_text())
    best = json.loads((result.run_dir / "best_prompt.json").read_text())
    return {
        "algorithm": "apo-demos", "seed": args.seed, "steps": result.steps, "seconds": round(seconds, 1),
        "held_out_tasks": len(held_out), "held_out_before": result.val_before, "held_out_after": result.val_after,
        "apo_val_base": found["candidates"][0]["mean"], "apo_val_best": best["mean_val_score"],
        "best": best["candidate"], "best_demos": len(best["demos"]) // 2, "candidates": len(found["candidates"]),
        "rollouts_used": found["rollouts_used"], "demo_pool": len(found["demo_pool"]),
    }  # fmt: skip


def run_grpo(args: argparse.Namespace, budget_s: float) -> dict[str, Any]:
    """GRPO with the settings of ``tracerl demo`` on the same held-out tasks, for ``budget_s`` of training."""
    import tracerl
    from tracerl.demo import DEMO
    from tracerl.tasks import arithmetic

    held_out = arithmetic.make_tasks("val", args.held_out)
    trainer = tracerl.Trainer(
        agent="tracerl.tasks.arithmetic:arithmetic_agent",
        algorithm=tracerl.GRPO(model="smollm2-135m", seed=args.seed, **DEMO["algorithm"]),
        runners=args.runners, run_dir=f"{args.run_dir}/grpo-s{args.seed}", seed=args.seed, progress=False,
        time_budget_s=budget_s, checkpoint_at_end=False,
        **{**DEMO["trainer"], "val_every": 0, "max_tokens": args.max_tokens},
    )  # fmt: skip
    t0 = time.monotonic()
    result = trainer.fit(arithmetic.make_tasks("train", 2000), val_tasks=held_out)
    return {
        "algorithm": "grpo", "seed": args.seed, "steps": result.steps, "seconds": round(time.monotonic() - t0, 1),
        "train_budget_s": round(budget_s, 1), "held_out_tasks": len(held_out),
        "held_out_before": result.val_before, "held_out_after": result.val_after,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--run-dir", default="runs/apo-demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=8, help="train tasks (demonstration pool)")
    parser.add_argument("--apo-val", type=int, default=8, help="tasks APO scores candidates on")
    parser.add_argument("--held-out", type=int, default=24, help="held-out tasks (before/after)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=2, help="candidates per step")
    parser.add_argument("--max-demos", type=int, default=2)
    parser.add_argument("--demo-search", default="random", choices=["random", "pareto"])
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--runners", type=int, default=4)
    parser.add_argument("--budget-s", type=float, default=420.0, help="time budget of the search steps")
    parser.add_argument("--grpo", action="store_true",
                        help="then GRPO (tracerl demo's settings) for as long as the APO run took, same held-out")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    apo = run_apo(args)
    print(json.dumps(apo), flush=True)
    if args.grpo:
        print(json.dumps(run_grpo(args, apo["seconds"])), flush=True)


if __name__ == "__main__":
    main()
