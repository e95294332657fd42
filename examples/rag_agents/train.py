"""Train the RAG agent's model with GRPO through tracerl (the agent's code is not changed).

    cd examples && python -m rag_agents.train                      # SmolLM2-135M on this CPU
    cd examples && python -m rag_agents.train --steps 2 --model tiny-random --max-tokens 16   # smoke run

Each step takes ``--batch-size`` training questions, runs the agent ``--group-size`` times on each (sampled
at temperature 1), scores every run with the answer F1, and updates the model on all the LLM calls of those
runs (every call of a run gets the run's reward, GRPO advantages are taken within each question's group).
Held-out reward (greedy, the ``val`` split) is measured before the first and after the last step. Outputs
go to ``--run-dir``: ``metrics.jsonl``, ``rewards.png``, the store with every recorded call, ``final/``.

On a GPU with a larger model (a local Hugging Face folder; nothing is downloaded at run time)::

    python -m rag_agents.train --model /models/Qwen2.5-1.5B-Instruct --device cuda --lora-r 16 \\
        --group-size 8 --batch-size 8 --runners 16 --max-tokens 256 --lr 1e-5 --steps 200
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (python examples/rag_agents/train.py): import as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tracerl
from rag_agents.data import make_tasks

AGENT = "rag_agents.agent:rag_agent"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny-random or a model folder")
    p.add_argument("--steps", type=int, default=30, help="GRPO steps (each: batch-size questions)")
    p.add_argument("--group-size", type=int, default=4, help="runs of the agent per question")
    p.add_argument("--batch-size", type=int, default=2, help="questions per step")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--max-tokens", type=int, default=96, help="tokens per LLM call")
    p.add_argument("--runners", type=int, default=4, help="agent worker processes")
    p.add_argument("--val-size", type=int, default=40, help="held-out questions (val split, ≤ 40)")
    p.add_argument("--val-every", type=int, default=0, help="also validate every k steps (0: before/after)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if there is one)")
    p.add_argument("--lora-r", type=int, default=0, help="train LoRA adapters of this rank (0: full weights)")
    p.add_argument("--run-dir", default="runs/rag_agents")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    grpo: dict[str, Any] = {"model": args.model, "group_size": args.group_size, "lr": args.lr, "seed": args.seed}
    if args.device:
        grpo["device"] = args.device
    if args.lora_r:
        grpo["lora"] = {"r": args.lora_r, "alpha": 2 * args.lora_r}
    trainer = tracerl.Trainer(
        agent=AGENT,
        algorithm=tracerl.GRPO(**grpo),
        runners=args.runners,
        run_dir=args.run_dir,
        batch_size=args.batch_size,
        max_steps=args.steps,
        epochs=100,  # max_steps ends the run
        val_every=args.val_every,
        max_tokens=args.max_tokens,
        seed=args.seed,
        resume=False,
    )
    result = trainer.fit(make_tasks("train"), val_tasks=make_tasks("val", args.val_size))
    print(f"steps: {result.steps}  held-out F1 before: {result.val_before:.3f}  after: {result.val_after:.3f}")
    print(f"metrics: {result.metrics_path}  plot: {result.plot_path}  model: {result.final_model}")


if __name__ == "__main__":
    main()
