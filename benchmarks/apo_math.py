"""APO on a framework example: the AutoGen math agent (``examples/math_autogen``, unchanged), SmolLM2-135M on
this CPU. Held-out reward of the agent's own system message vs the APO-optimized prompt (demonstration search
with the local model, no critic), and GRPO at the same wall-clock budget, 2 seeds, in one table.

    python benchmarks/apo_math.py                          # SmolLM2, 2 seeds: runs/apo-math/results.{json,md}
    python benchmarks/apo_math.py --quick                  # the tiny random model: the pipeline, 3-6 min

How (``apo_compare.py``): APO rolls out the ``easy_arithmetic`` train tasks at temperature 1 with the current
best prompt — each step ``--apo-batch`` new ones — and keeps the correct replies (question, answer) as the
demonstration pool; each step scores ``--candidates`` random sets of up to ``--max-demos`` of them greedily on
``--n-apo-val`` tasks of the example's ``val`` split. The gateway inserts the chosen demonstrations after
AutoGen's system message (matched by its exact text; the tool schema is still rendered after it), so the
agent is not changed. The test tasks (``--n-test`` of the ``test`` split, which APO never sees) are then
evaluated with ``tracerl.evaluate(..., prompts_version=...)``. GRPO (``train.py``'s settings: groups of 4,
2 tasks a step, lr 1e-5) trains from the base model on the train split for as long as the APO run took.

Why ``easy_arithmetic`` (2 terms of 1–2 digits, ``+ -``): demonstrations come from the model's own
successful rollouts, and SmolLM2-135M solves ≈ 20 % of these (greedy test reward 0.20; sampled 3/16), so
16 rollouts a step give ≈ 3 new demonstrations; on ``basic_arithmetic`` it solves ≈ 4 %, on
``gsm_symbolic`` none. ``demo_pool`` in ``results.json`` says how many it found.

Defaults sized for ≈ 35 min on 2 cores (base: 1 evaluation of 50 tasks; per seed: APO ≤ 6 min, GRPO for
the same time, 2 evaluations). ``--quick``: the tiny random model, tiny sizes, ``demo_min_reward 0`` (a
random model solves nothing, so its replies are taken as demonstrations to exercise the whole search).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT / "benchmarks", ROOT / "examples"):  # the runner's worker processes inherit sys.path
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from apo_compare import Comparison, run  # noqa: E402

AGENT = "math_autogen.agent:math_agent"
SOURCES = ("easy_arithmetic", "basic_arithmetic", "gsm_symbolic")

#: the full run (SmolLM2) and ``--quick`` (the tiny random model); flags override
FULL: dict[str, Any] = {
    "model": "smollm2-135m", "run_dir": "runs/apo-math", "n_train": 48, "n_apo_val": 16, "n_test": 50,
    "apo_steps": 3, "apo_batch": 16, "apo_budget_s": 360.0, "candidates": 3, "max_demos": 2,
    "demo_min_reward": 1.0, "max_tokens": 96, "runners": 4,
    "grpo": {"group_size": 4, "lr": 1e-5}, "grpo_trainer": {"batch_size": 2},
}  # fmt: skip
QUICK: dict[str, Any] = {
    "model": "tiny-random", "run_dir": "runs/apo-math-quick", "n_train": 4, "n_apo_val": 3, "n_test": 4,
    "apo_steps": 2, "apo_batch": 2, "apo_budget_s": None, "candidates": 2, "max_demos": 1,
    "demo_min_reward": 0.0, "max_tokens": 8, "runners": 2,
    "grpo": {"group_size": 2, "lr": 1e-3}, "grpo_trainer": {"batch_size": 2},
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the tiny random model and tiny sizes (3-6 min)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (default: 0 1)")
    p.add_argument(
        "--sources",
        nargs="+",
        default=["easy_arithmetic"],
        choices=SOURCES,
        help="task sources of every split (default: easy_arithmetic)",
    )
    for key, kind in (("model", str), ("run_dir", str), ("n_train", int), ("n_apo_val", int), ("n_test", int),
                      ("apo_steps", int), ("apo_batch", int), ("apo_budget_s", float), ("candidates", int),
                      ("max_demos", int), ("max_tokens", int), ("runners", int)):  # fmt: skip
        p.add_argument(f"--{key.replace('_', '-')}", type=kind, default=None,
                       help=f"default: {FULL[key]} ({QUICK[key]} with --quick)")  # fmt: skip
    return p.parse_args(argv)


def comparison(args: argparse.Namespace) -> Comparison:
    """The benchmark the flags describe (per source: the first ``n_train`` train tasks are APO's pool, the
    first ``n_apo_val`` val tasks score its candidates, the first ``n_test`` test tasks are held out)."""
    from math_autogen.agent import SYSTEM_MESSAGE
    from math_autogen.data import make_tasks

    base = QUICK if args.quick else FULL
    s: dict[str, Any] = {
        k: (getattr(args, k, None) if getattr(args, k, None) is not None else v) for k, v in base.items()
    }
    sources = tuple(args.sources)
    return Comparison(
        name="math_autogen", agent=AGENT, prompt=SYSTEM_MESSAGE, model=s["model"], run_dir=Path(s["run_dir"]),
        train=make_tasks("train", sources=sources, n=s["n_train"]),
        apo_val=make_tasks("val", sources=sources, n=s["n_apo_val"]),
        test=make_tasks("test", sources=sources, n=s["n_test"]),
        grpo_train=make_tasks("train", sources=sources),
        apo_steps=s["apo_steps"], apo_batch_size=s["apo_batch"], apo_budget_s=s["apo_budget_s"],
        candidates=s["candidates"], max_demos=s["max_demos"], demo_min_reward=s["demo_min_reward"],
        grpo=s["grpo"], grpo_trainer=s["grpo_trainer"], max_tokens=s["max_tokens"], runners=s["runners"],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(2)
    return run(comparison(args), seeds=args.seeds)


if __name__ == "__main__":
    main()
