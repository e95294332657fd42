"""Held-out reward of the RAG agent: answer F1 and exact match, greedy, for one or two models.

    cd examples && python -m rag_agents.evaluate                               # SmolLM2-135M, test split
    cd examples && python -m rag_agents.evaluate --after runs/rag_agents/final  # before vs after training

For each model it runs the unchanged agent once on each question of ``--split`` (temperature 0) through
tracerl's gateway and prints the mean F1 (the reward), the exact-match rate (both SQuAD-normalised, see
:mod:`rag_agents.reward`), how many runs called the search tool at all, and the mean number of LLM calls
per question, overall and for 1-hop / 2-hop questions.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (python examples/rag_agents/evaluate.py)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tracerl
from rag_agents.data import make_tasks
from rag_agents.reward import exact_match, extract_answer

AGENT = "rag_agents.agent:rag_agent"


def _final_text(result: Any) -> str:
    """The text of the run's last LLM call (its final reply when the run ended normally)."""
    return result.calls[-1].text if result.calls else ""


def _searched(messages: list[dict[str, Any]]) -> bool:
    """Whether a call's request holds a tool result after the question (the worked example's do not count)."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages))
    return any(m.get("role") == "tool" for m in messages[last_user:])


def summarize(results: tracerl.EvalResults) -> dict[str, dict[str, float]]:
    """Mean F1, EM, share of runs that searched, and calls per question: overall and per hop count."""
    rows: dict[str, list[Any]] = {"all": list(results), "1-hop": [], "2-hop": []}
    for r in results:
        rows[f"{r.task['hops']}-hop"].append(r)
    out: dict[str, dict[str, float]] = {}
    for name, rs in rows.items():
        if not rs:
            continue
        n = len(rs)
        searched = sum(any(_searched(c.messages or []) for c in r.calls) for r in rs)
        out[name] = {
            "n": n,
            "f1": sum(r.reward or 0.0 for r in rs) / n,
            "em": sum(exact_match(extract_answer(_final_text(r)), r.task["answers"]) for r in rs) / n,
            "searched": searched / n,
            "calls": sum(len(r.calls) for r in rs) / n,
            "failed": sum(r.status != "succeeded" for r in rs),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--before", default="smollm2-135m", help="the base model (name or folder)")
    p.add_argument("--after", default=None, help="a trained model folder (for example RUN_DIR/final)")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--n", type=int, default=None, help="only the first n questions of the split")
    p.add_argument("--runners", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--store", default=None, help="keep the recorded calls: a sqlite:///PATH.db URL (one per model)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tasks = make_tasks(args.split, args.n)
    for label, model in (("before", args.before), ("after", args.after)):
        if model is None:
            continue
        store = f"{args.store.removesuffix('.db')}-{label}.db" if args.store else None
        results = tracerl.evaluate(
            AGENT, tasks, model=model, store=store, runners=args.runners, max_tokens=args.max_tokens
        )
        print(f"{label} ({model}, {args.split}, {len(tasks)} questions, {results.seconds:.0f} s):")
        for name, m in summarize(results).items():
            print(
                f"  {name:6s} n={m['n']:3.0f}  F1={m['f1']:.3f}  EM={m['em']:.3f}  "
                f"searched={m['searched']:.2f}  calls/question={m['calls']:.2f}  failed={m['failed']:.0f}"
            )


if __name__ == "__main__":
    main()
