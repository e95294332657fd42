"""The RAG agent's recipe: base → warm start on gold search demonstrations → GRPO, on held-out questions.

    python examples/rag_agents/recipe.py                          # 2 seeds, runs/rag_recipe/results.json
    python examples/rag_agents/recipe.py --corpus docs.jsonl --train-questions train.jsonl \\
        --val-questions val.jsonl --test-questions test.jsonl

The gold policy answers each call of the Agents SDK run the way a good model would: a ``search`` call for the
next title of the task's ``evidence`` (the articles to read, in order; train split only), then
``Answer: <gold answer>`` once every evidence article has been retrieved. :func:`tracerl.record_demonstrations`
runs the unchanged agent against it, so the transcripts hold the SDK's own instructions, tool schema and
worked example. See ``examples/recipes.py`` for the stages and the report.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes import (
    Recipe,
    add_arguments,
    rl_algorithm_options,
    rl_trainer_options,
    run_or_write,
    spread,
)

import tracerl

JSON = dict[str, Any]
DEMO_HOPS: tuple[int, int] = (16, 32)  # demonstrated 1-hop and 2-hop questions, unless --demos or --demo-hops
DEMOS_WITHOUT_HOPS = 48  # demonstrated questions when yours carry no hop count (no evidence lists)


def gold(task: JSON, messages: list[JSON], tools: list[JSON]) -> JSON:
    """Search the evidence titles one by one, then answer (the worked example's turns are not this task's)."""
    question_at = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    searched = sum(1 for m in messages[question_at:] if m.get("role") == "tool")
    if searched < len(task["evidence"]):
        return tracerl.tool_call("search", query=task["evidence"][searched])
    return {"content": f"Answer: {task['answers'][0]}"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0], conflict_handler="resolve")
    add_arguments(p, run_dir="runs/rag_recipe")
    p.add_argument("--demos", type=int, default=None,  # replaces the shared option: by default, --demo-hops
                   help="demonstrate on the first N train questions instead of --demo-hops' mix")
    # measured in the README ("Twice the demonstrations, and updates trimmed to balance"): 16 + 32 demonstrations,
    # one article a search, credit by the rollout's total with a 0.1 evidence reward, 16 minutes of RL on steps
    # balanced by hops, each update with as many informative groups of either kind
    p.set_defaults(grpo_minutes=16.0, dynamic_sampling=True, balance_by="hops", balance_trim=True)
    p.add_argument("--corpus", default=None, help="your JSONL documents (id, title, text)")
    for split in ("train", "val", "test"):
        p.add_argument(f"--{split}-questions", default=None, help=f"JSONL {split} questions (question, answers)")
    p.add_argument("--n-test", type=int, default=40, help="test questions (default: 40)")
    p.add_argument("--n-val", type=int, default=10, help="validation questions during GRPO (default: 10)")
    p.add_argument("--balance-hops", action=argparse.BooleanOptionalAction, default=True,
                   help="demonstrate, train and validate on 1-hop and 2-hop questions in turn, and run RL on as "
                        "many of each (two thirds of the train questions are 2-hop: an RL model that always "
                        "searches twice is paid on average and loses the 1-hop ones; default: on)")
    p.add_argument("--returns", choices=("uniform", "step", "total"), default="total",
                   help="the RL stage's credit (tracerl.credit): uniform ignores the agent's intermediate rewards; "
                        "step credits each to the call that searched; total adds them to the rollout's score "
                        "(default: total; see the README)")
    p.add_argument("--evidence-reward", type=float, default=0.1,
                   help="the `evidence` intermediate reward per needed article a search brings in, on the RL "
                        "questions (default: 0.1; the agent's own EVIDENCE_REWARD is 0.2)")
    p.add_argument("--top-k", type=int, default=1,
                   help="articles a search returns, in every split's questions (default: 1; the agent's own TOP_K "
                        "is 3)")
    p.add_argument("--demo-hops", type=int, nargs=2, default=None, metavar=("ONE_HOP", "TWO_HOP"),
                   help="demonstrate on this many 1-hop and 2-hop train questions, the first of each kind in the "
                        "train order (default: 16 32, or as many as the train split has; --demos N takes the "
                        "first N train questions instead)")
    p.add_argument("--search-cost", type=float, default=0.0,
                   help="a search on an RL question that brings in no needed article records -this (default: 0)")
    return p.parse_args(argv)


def demo_first(train: list[JSON], counts: dict[int, int]) -> list[JSON]:
    """``train`` reordered so that its first ``sum(counts)`` questions hold ``counts[h]`` of each hop count ``h``,
    taken in turn (the first of each kind), followed by the rest in their order. Within a kind the order is
    unchanged, so the RL questions picked by kind are the same questions as without it."""
    of_kind = {h: [t for t in train if t.get("hops") == h] for h in counts}
    for h, n in counts.items():
        if not 0 <= n <= len(of_kind[h]):
            raise SystemExit(f"--demo-hops: {n} demonstrations of {h}-hop questions asked for; the train split has "
                             f"{len(of_kind[h])} (give 0 to {len(of_kind[h])})")
    picked = {id(t) for h, n in counts.items() for t in of_kind[h][:n]}
    first = spread([t for t in train if id(t) in picked], "hops", len(picked))
    return first + [t for t in train if id(t) not in picked]


def build(args: argparse.Namespace) -> Recipe:
    """The recipe ``args`` describe: its questions (from your files if given), gold policy and settings."""
    from rag_agents.data import load_questions, make_tasks

    def questions(split: str, n: int | None) -> list[JSON]:
        path = getattr(args, f"{split}_questions")
        if path:
            return load_questions(path, corpus=args.corpus)[:n]
        if args.corpus:
            raise SystemExit(f"with --corpus, give your own --{split}-questions too")
        return make_tasks(split, n)

    if args.top_k is not None and args.top_k < 1:
        raise SystemExit(f"--top-k {args.top_k}: a search must return at least 1 article")
    setting = {"top_k": args.top_k} if args.top_k is not None else {}

    def tasks(split: str, n: int | None) -> list[JSON]:  # every split's questions carry top_k
        return [{**t, **setting} for t in questions(split, n)]

    train, val, rl_train = tasks("train", None), tasks("val", args.n_val), None
    if args.demos is not None and args.demo_hops is not None:
        raise SystemExit(f"--demos {args.demos} and --demo-hops {' '.join(map(str, args.demo_hops))}: give one "
                         "(the first N train questions, or N of each hop count)")
    demos, balance_by = args.demos, args.balance_by
    if not all(isinstance(t.get("hops"), int) for t in train):  # no evidence lists, so no hop count to balance
        if args.demo_hops is not None:
            raise SystemExit("--demo-hops needs train questions with 'evidence' (the articles to read, which give "
                             "the hop count); some of yours have none: give --demos N instead")
        print(f"[rag_agents] some train questions have no 'evidence' (so no hop count): demonstrating the first "
              f"{demos or DEMOS_WITHOUT_HOPS} of them, with no balancing by hops")
        demos, balance_by = demos or DEMOS_WITHOUT_HOPS, "" if balance_by == "hops" else balance_by
    elif args.balance_hops:  # each kind in turn: demos (the first ``demos`` train questions), RL and validation
        hops = [t["hops"] for t in train]
        train = spread(train, "hops", len(train))
        rl_train = spread(train, "hops", len(set(hops)) * min(hops.count(h) for h in set(hops)))
        val = spread(tasks("val", None), "hops", args.n_val)
    if demos is None:  # the first of each kind: by default 16 1-hop and 32 2-hop, as far as your questions have them
        counts: dict[int, int] = dict(zip((1, 2), args.demo_hops or DEMO_HOPS, strict=True))
        if args.demo_hops is None:
            have = Counter(t["hops"] for t in train)
            counts = {h: min(n, have[h]) for h, n in counts.items()}
        train, demos = demo_first(train, counts), sum(counts.values())
    shaping = {"evidence_reward": args.evidence_reward}  # the intermediate rewards' weights, read by the agent
    if args.search_cost:
        shaping["search_cost"] = args.search_cost
    rl_train = [{**t, **shaping} for t in (rl_train or train)]  # in the RL questions only
    return Recipe(
        name="rag_agents", agent="rag_agents.agent:rag_agent", train=train,
        val=val, test=tasks("test", args.n_test), policy=gold, run_dir=Path(args.run_dir),
        model=args.model, demos=demos, sft_epochs=args.sft_epochs, sft_lr=args.sft_lr,
        grpo_minutes=args.grpo_minutes, grpo_epochs=args.rl_epochs,
        group_size=args.group_size, grpo_lr=args.lr, grpo_temperature=args.rl_temperature, runners=args.runners,
        max_tokens=64, grpo_options=rl_algorithm_options(args, returns=args.returns),
        grpo_trainer_options=rl_trainer_options(args, balance_by),
        breakdown="hops", rl_train=rl_train,
    )


def main(argv: list[str] | None = None) -> JSON:
    args = parse_args(argv)
    recipe = build(args)
    return run_or_write(recipe, args)


if __name__ == "__main__":
    main()
