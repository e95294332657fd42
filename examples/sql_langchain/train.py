"""Train the text-to-SQL agent's model with GRPO through tracerl, on this CPU with SmolLM2-135M by default.

    python examples/sql_langchain/train.py                          # SmolLM2-135M, 20 minutes
    python examples/sql_langchain/train.py --time-budget 3600 --group-size 8
    python examples/sql_langchain/train.py --model tiny-random --max-steps 3    # a smoke run, seconds

The agent (:mod:`sql_langchain.agent`) is not changed: runner processes run it as ``sql_langchain.agent:
sql_agent`` and tracerl's gateway records every ``ChatOpenAI`` call it makes. Each step takes
``--batch-size`` training questions, runs each ``--group-size`` times (temperature 1), and makes one GRPO
update. Credit assignment is ``returns="step"``: each call gets the rewards that came after it, the
intermediate rewards recorded after the call whose query ran (``valid_sql`` 0.1, and ``result_overlap``
0.3 × the row F1 against the gold result) plus the final execution-match reward, so a query that runs, and
one that returns most of the right rows, is rewarded even before the model gets the result exactly right.
The returns are discounted (``--gamma``, default 0.5). With γ = 1, a failing query followed by a correct retry
would be credited with the retry's whole reward, as much as a correct first query.

Outputs in ``--run-dir`` (default ``runs/sql``): ``metrics.jsonl``, ``rewards.png``, checkpoints, and the
trained weights in ``final/`` (evaluate them with ``evaluate.py --model runs/sql/final``). The held-out
reward on the validation split (greedy) is measured before the first and after the last step.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))  # runner worker processes import the agent from here too

import tracerl  # noqa: E402
from sql_langchain.agent import ROLES, TRAINED_ROLES  # noqa: E402
from sql_langchain.data import load_tasks  # noqa: E402

AGENT = "sql_langchain.agent:sql_agent"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="GRPO on the text-to-SQL agent.")
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny-random or a model folder")
    parser.add_argument("--run-dir", default="runs/sql")
    parser.add_argument("--group-size", type=int, default=4, help="rollouts per question")
    parser.add_argument("--batch-size", type=int, default=2, help="questions per step")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--max-tokens", type=int, default=96, help="completion length per call")
    parser.add_argument("--runners", type=int, default=4, help="agent worker processes")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--time-budget", type=float, default=1200.0, help="seconds of training (default 20 min)")
    parser.add_argument("--val-n", type=int, default=None, help="validation questions (default: the whole split)")
    parser.add_argument("--val-every", type=int, default=0, help="validate every k steps (0: before and after)")
    parser.add_argument("--gamma", type=float, default=0.5,
                        help="discount of the step returns: a failing query gets only γ^k of what its corrected "
                             "retry k calls later earned, not all of it (default: 0.5; 1.0 credits it fully)")
    parser.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (0: full weights)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    lora = {"r": args.lora_rank, "alpha": 2 * args.lora_rank} if args.lora_rank else None
    trainer = tracerl.Trainer(
        agent=AGENT,
        algorithm=tracerl.GRPO(
            model=args.model, group_size=args.group_size, lr=args.lr, returns="step", gamma=args.gamma, lora=lora,
            seed=0, train_models=TRAINED_ROLES,  # the query writer's calls; the answer's text cannot change the reward
        ),
        roles=ROLES,  # both of the agent's roles are served by the model being trained
        runners=args.runners,
        run_dir=args.run_dir,
        experiment="sql-langchain",
        batch_size=args.batch_size,
        epochs=args.epochs,
        max_steps=args.max_steps,
        time_budget_s=args.time_budget,
        val_every=args.val_every,
        max_tokens=args.max_tokens,
        resume=False,
    )
    result = trainer.fit(load_tasks("train"), val_tasks=load_tasks("val", args.val_n))
    print(f"steps: {result.steps} (stopped by {result.stopped_by})")
    print(f"held-out reward (val, greedy): before {result.val_before:.4f}, after {result.val_after:.4f}")
    print(f"metrics: {result.metrics_path}  plot: {result.plot_path}  weights: {result.final_model}")


if __name__ == "__main__":
    main()
