"""Held-out reward of the text-to-SQL agent with a model (greedy decoding), overall and per difficulty.

    python examples/sql_langchain/evaluate.py                              # SmolLM2-135M, the 28 test questions
    python examples/sql_langchain/evaluate.py --model runs/sql/final       # the weights a training run saved
    python examples/sql_langchain/evaluate.py --split val --n 10 --model tiny-random
    python examples/sql_langchain/evaluate.py --model runs/sql/final --samples 16 --temperature 1.0   # pass@k

Prints the execution-match reward (the mean of the agent's final rewards), the share of questions whose last
query ran (the ``valid_sql`` intermediate reward was recorded), and the mean number of LLM calls; the
recorded calls stay in ``--store`` (default ``runs/sql-eval/store.db``) for a look at what the model wrote.
With ``--samples K`` (and a ``--temperature`` above 0) each question runs K times, sampled, and it prints
pass@k for k = 1, 2, 4, … K (an exact match counts as a pass): what an RL stage could make the model do
greedily, at most, is what it already does in some of its samples.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parent.parent
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))  # runner worker processes import the agent from here too

import tracerl  # noqa: E402
from sql_langchain.agent import ROLES  # noqa: E402
from sql_langchain.data import DIFFICULTIES, load_tasks  # noqa: E402
from tracerl.config import RunnerConfig  # noqa: E402
from tracerl.types import SpanKind  # noqa: E402

AGENT = "sql_langchain.agent:sql_agent"


def run(
    model: str, split: str, n: int | None, store: str, runners: int, max_tokens: int, timeout_s: float = 300.0,
    samples: int = 1, temperature: float | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on the first ``n`` questions of ``split``; returns the summary that :func:`main` prints.

    ``timeout_s`` bounds one question (all its calls); a question that runs out counts 0. ``samples`` > 1 runs
    each question that many times at ``temperature`` and adds pass@k (k = 1, 2, 4, …, ``samples``)."""
    tasks = load_tasks(split, n)
    runner_cfg = RunnerConfig(n=runners, timeout_s=timeout_s, max_attempts=1)
    # the agent's two roles (query writer, answer writer) are both served by ``model``
    results = tracerl.evaluate(AGENT, tasks, model=model, store=store, runners=runner_cfg, max_tokens=max_tokens,
                               roles=ROLES, samples=samples, temperature=temperature)
    st = tracerl.connect(store)
    try:
        ran = [
            any(s.kind is SpanKind.REWARD and s.name == "valid_sql" for s in st.get_spans(rollout_id=r.rollout_id))
            for r in results
        ]
    finally:
        st.close()
    by_difficulty: dict[str, list[float]] = defaultdict(list)
    for r in results:
        by_difficulty[r.task["difficulty"]].append(r.reward or 0.0)
    ks = sorted({*(2**i for i in range(samples.bit_length())), samples}) if samples > 1 else []
    solved: dict[str, list[bool]] = defaultdict(list)  # per question: some sample matched (pass@samples)
    for group in results.by_task():
        solved[group[0].task["difficulty"]].append(any((r.reward or 0.0) >= 1.0 for r in group))
    return {
        "model": model,
        "split": split,
        "n": len(results),
        "reward": results.mean_reward,
        "valid_sql": sum(ran) / len(ran),
        "calls_per_question": sum(len(r.calls) for r in results) / len(results),
        "failed": results.failed,
        "seconds": results.seconds,
        **{f"reward_{d}": sum(v) / len(v) for d in DIFFICULTIES if (v := by_difficulty[d])},
        **{f"pass@{k}": results.pass_at(k) for k in ks},
        **{f"pass@{samples}_{d}": sum(v) / len(v) for d in DIFFICULTIES if ks and (v := solved[d])},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Held-out reward of the text-to-SQL agent.")
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny-random or a model folder")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--n", type=int, default=None, help="only the first N questions of the split")
    parser.add_argument("--store", default="sqlite:///runs/sql-eval/store.db")
    parser.add_argument("--runners", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per question (raise on a busy CPU)")
    parser.add_argument("--samples", type=int, default=1, help="runs per question, sampled, for pass@k (default: 1)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sample at this temperature instead of greedy decoding (needed with --samples > 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.store.startswith("sqlite:///"):
        Path(args.store.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    summary = run(args.model, args.split, args.n, args.store, args.runners, args.max_tokens, args.timeout,
                  samples=args.samples, temperature=args.temperature)
    for key, value in summary.items():
        print(f"{key:>20}: {value:.4f}" if isinstance(value, float) else f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
