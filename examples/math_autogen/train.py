"""Train the AutoGen math agent's model with GRPO: ``python examples/math_autogen/train.py``.

Defaults (this 2-core CPU): SmolLM2-135M-Instruct on the ``easy_arithmetic`` tasks (its sampled base reward
there was 3/16; on ``basic_arithmetic`` 0/16, and the ``gsm_symbolic`` word problems are harder still, so
GRPO would get no signal there),
groups of 4 rollouts per task, 2 tasks per step, lr 1e-5, 96 new tokens per call, 4 runner processes,
validation on 10 held-out tasks every 5 steps, a 15-minute budget. The agent is run unchanged
(``math_autogen.agent:math_agent``); the run folder gets ``metrics.jsonl``, ``rewards.png``,
checkpoints and ``final/`` (evaluate it with ``evaluate.py --model runs/math_autogen/final``).

On a GPU with a larger model, for example::

    python examples/math_autogen/train.py --model /models/Qwen2.5-1.5B-Instruct --sources gsm_symbolic \\
        basic_arithmetic --group-size 8 --batch-size 8 --lr 1e-6 --max-tokens 512 --runners 16 \\
        --minutes 120 --lora-rank 16

(``--model`` takes a short name or a local Hugging Face model folder, e.g. one fetched beforehand with
``huggingface-cli download Qwen/Qwen2.5-1.5B-Instruct --local-dir /models/Qwen2.5-1.5B-Instruct``;
the learner uses CUDA when there is one.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[1]
AGENT = "math_autogen.agent:math_agent"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m", help="model name or folder (default: smollm2-135m)")
    p.add_argument("--sources", nargs="+", default=["easy_arithmetic"], help="task sources (data.SOURCES)")
    p.add_argument("--n-train", type=int, default=None, help="train tasks per source (default: all)")
    p.add_argument("--n-val", type=int, default=10, help="validation tasks per source (default: 10)")
    p.add_argument("--group-size", type=int, default=4, help="rollouts per task (default: 4)")
    p.add_argument("--batch-size", type=int, default=2, help="tasks per step (default: 2)")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate (default: 1e-5)")
    p.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (0: full weights)")
    p.add_argument("--max-tokens", type=int, default=96, help="new tokens per LLM call (default: 96)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--minutes", type=float, default=15.0, help="time budget in minutes (default: 15)")
    p.add_argument("--val-every", type=int, default=5, help="validate every k steps (default: 5)")
    p.add_argument("--runners", type=int, default=4, help="agent worker processes (default: 4)")
    p.add_argument("--run-dir", default="runs/math_autogen", help="output folder (default: runs/math_autogen)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Any:
    """Run the training; returns :class:`tracerl.trainer.FitResult`."""
    args = parse_args(argv)
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))  # the runner's worker processes import the agent from here

    import tracerl
    from math_autogen.data import make_tasks

    sources = tuple(args.sources)
    train_tasks = make_tasks("train", sources=sources, n=args.n_train)
    val_tasks = make_tasks("val", sources=sources, n=args.n_val)
    lora = {"r": args.lora_rank, "alpha": 2 * args.lora_rank} if args.lora_rank else None
    trainer = tracerl.Trainer(
        agent=AGENT,
        algorithm=tracerl.GRPO(model=args.model, group_size=args.group_size, lr=args.lr, lora=lora, seed=args.seed),
        runners=args.runners,
        run_dir=args.run_dir,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        time_budget_s=args.minutes * 60 if args.minutes else None,
        val_every=args.val_every,
        max_tokens=args.max_tokens,
        seed=args.seed,
        progress=not args.no_progress,
    )
    result = trainer.fit(train_tasks, val_tasks=val_tasks)
    print(
        f"{result.steps} steps ({result.stopped_by}); held-out reward {result.val_before} -> {result.val_after}; "
        f"metrics in {result.metrics_path}, final model in {result.final_model}"
    )
    return result


if __name__ == "__main__":
    main()
