"""Held-out reward of the AutoGen math agent: ``python examples/math_autogen/evaluate.py``.

    python examples/math_autogen/evaluate.py                                   # SmolLM2-135M, test split
    python examples/math_autogen/evaluate.py --model runs/math_autogen/final   # after training
    python examples/math_autogen/evaluate.py --compare runs/math_autogen/final # before and after, side by side

Each task runs once with greedy decoding (``tracerl.evaluate``: the same engine, gateway and runner
processes as training). It prints the mean reward per source and overall, and the share of rollouts in
which the agent called the calculator (AutoGen calls the model a second time only after running a tool).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[1]
AGENT = "math_autogen.agent:math_agent"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--model", default="smollm2-135m", help="model name or folder (default: smollm2-135m)")
    p.add_argument("--compare", default=None, help="a second model (e.g. the trained final/ folder) to evaluate too")
    p.add_argument("--split", default="test", choices=("val", "test"), help="held-out split (default: test)")
    p.add_argument(
        "--sources", nargs="+", default=["easy_arithmetic", "basic_arithmetic", "gsm_symbolic"], help="task sources"
    )
    p.add_argument("--n", type=int, default=50, help="tasks per source (default: 50)")
    p.add_argument("--max-tokens", type=int, default=96, help="new tokens per LLM call (default: 96)")
    p.add_argument("--runners", type=int, default=4, help="agent worker processes (default: 4)")
    p.add_argument("--store", default=None, help="keep the recorded calls, e.g. sqlite:///runs/math_eval.db")
    return p.parse_args(argv)


def summarize(results: Any) -> dict[str, float]:
    """Mean reward per source and ``all``, and the share of rollouts with a calculator call (``tool_use``)."""
    by_source: dict[str, list[float]] = {}
    tool_use = 0
    for r in results:
        by_source.setdefault(r.task["source"], []).append(r.reward or 0.0)
        tool_use += len(r.calls) > 1  # AutoGen calls the model again only after running a tool call
    summary = {source: sum(v) / len(v) for source, v in by_source.items()}
    summary["all"] = results.mean_reward
    summary["tool_use"] = tool_use / max(1, len(results))
    return summary


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Evaluate the model(s); returns ``{model: summary}`` (see :func:`summarize`)."""
    args = parse_args(argv)
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))

    import tracerl
    from math_autogen.data import make_tasks

    tasks = make_tasks(args.split, sources=tuple(args.sources), n=args.n)
    out: dict[str, dict[str, float]] = {}
    for model in [args.model] + ([args.compare] if args.compare else []):
        results = tracerl.evaluate(
            AGENT, tasks, model=model, store=args.store, runners=args.runners, max_tokens=args.max_tokens
        )
        out[model] = summarize(results)
        failed = f", {results.failed} failed" if results.failed else ""
        print(f"{model}: {len(results)} {args.split} tasks in {results.seconds:.0f} s{failed}")
        for key, value in out[model].items():
            print(f"  {key:>18}: {value:.3f}")
    return out


if __name__ == "__main__":
    main()
