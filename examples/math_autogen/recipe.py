"""The math agent's recipe: base → warm start on gold calculator demonstrations → GRPO, on held-out tasks.

    python examples/math_autogen/recipe.py                        # 2 seeds, runs/math_recipe/results.json
    python examples/math_autogen/recipe.py --train-questions my_train.jsonl --test-questions my_test.jsonl

The gold policy answers each call the AutoGen agent makes the way a good model would: its first call with a
``calculator`` tool call on the task's gold ``expression`` (train split only), its call after the tool
result with ``"<expression> = <result>\\nAnswer: <result>"``. :func:`tracerl.record_demonstrations` runs
the unchanged agent against it, so the transcripts hold AutoGen's own system message, tool schema and
history layout. See ``examples/recipes.py`` for the stages and the report.

Your own questions (JSONL, ``{"question", "answer", "expression"}``; ``expression`` is needed for the train
questions' demonstrations): ``--train-questions``, ``--val-questions``, ``--test-questions``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes import Recipe, add_arguments, rl_algorithm_options, rl_trainer_options, run_or_write

import tracerl

JSON = dict[str, Any]
SOURCES = ("easy_arithmetic", "basic_arithmetic", "long_arithmetic")
#: the RL stage's default curriculum: the sources the warm start still gets wrong (easy_arithmetic is near 1.0
#: after it, so its groups would mostly have no reward variance)
RL_SOURCES = ("basic_arithmetic", "long_arithmetic")


def gold(task: JSON, messages: list[JSON], tools: list[JSON]) -> JSON:
    """Call the calculator on the task's gold expression, then answer with its result."""
    results = [m.get("content") for m in messages if m.get("role") == "tool"]
    if not results:
        return tracerl.tool_call("calculator", expression=task["expression"])
    return {"content": f"{task['expression']} = {results[-1]}\nAnswer: {results[-1]}"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    add_arguments(p, run_dir="runs/math_recipe", lr=1e-5)
    # 12 demonstrations (4 per source, 6 SFT steps) leave the warm start room and entropy for RL (README)
    p.set_defaults(grpo_minutes=12.0, demos=12, dynamic_sampling=True)
    p.add_argument("--n-test", type=int, default=50, help="test tasks per source (default: 50)")
    p.add_argument("--n-val", type=int, default=8, help="val tasks per source (default: 8)")
    p.add_argument("--kl-coef", type=float, default=0.0, help="GRPO's KL penalty to the warm start (default: 0)")
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES,
                   help=f"task sources of every stage (default: {' '.join(SOURCES)})")
    p.add_argument("--rl-sources", nargs="+", default=list(RL_SOURCES), choices=SOURCES,
                   help=f"sources of the RL stage's train tasks (default: {' '.join(RL_SOURCES)})")
    for split in ("train", "val", "test"):
        p.add_argument(f"--{split}-questions", default=None, help=f"JSONL file of {split} questions")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> JSON:
    args = parse_args(argv)
    from math_autogen.data import load_questions, make_tasks

    def tasks(split: str, n: int | None) -> list[JSON]:
        path = getattr(args, f"{split}_questions")
        if path:
            return load_questions(path)
        out: list[JSON] = []
        for source in args.sources:
            out.extend(make_tasks(split, sources=(source,), n=n))
        return out

    train = tasks("train", None)
    # interleave the sources so the demonstrations cover each of them
    train.sort(key=lambda t: (int(t["id"].rsplit("-", 1)[-1]) if t["id"][-1].isdigit() else 0, t["source"]))
    missing = [t["id"] for t in train[: args.demos] if "expression" not in t]
    if missing:
        raise SystemExit(f"train questions without an 'expression' cannot be demonstrated: {missing[:5]}")
    rl_train = None if args.train_questions else [t for t in train if t.get("source") in args.rl_sources]
    if rl_train == []:
        raise SystemExit(f"--rl-sources {' '.join(args.rl_sources)}: none is in --sources {' '.join(args.sources)}")
    recipe = Recipe(
        name="math_autogen", agent="math_autogen.agent:math_agent", train=train, val=tasks("val", args.n_val),
        test=tasks("test", args.n_test), policy=gold, run_dir=Path(args.run_dir), model=args.model,
        demos=args.demos, sft_epochs=args.sft_epochs, sft_lr=args.sft_lr, grpo_minutes=args.grpo_minutes,
        grpo_epochs=args.rl_epochs, group_size=args.group_size,
        grpo_lr=args.lr, grpo_temperature=args.rl_temperature, runners=args.runners, max_tokens=96,
        grpo_options=rl_algorithm_options(args, kl_coef=args.kl_coef),
        grpo_trainer_options=rl_trainer_options(args),
        rl_train=rl_train, breakdown="source",
    )
    return run_or_write(recipe, args)


if __name__ == "__main__":
    main()
