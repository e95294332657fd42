"""``tracerl bench NAME``: the project's own benchmarks, each reporting ratios against a baseline measured
in the same run (timings on a shared 2-core machine are noisy; ratios are what to compare).

Each benchmark is a module ``tracerl.bench.<name>`` with ``add_arguments(parser)`` and ``run(args) -> dict``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

BENCHMARKS: dict[str, str] = {
    "store": "store lifecycle throughput per backend (memory, sqlite, postgres, http)",
    "claims": "postgres claims/s with N claiming processes (claim vs claim_many) and double claims counted",
    "stall": "light-client throughput of tracerl serve with vs without one client looping 10,000-row queries",
    "gateway": "gateway overhead per call and hf engine tokens/s through the gateway",
    "prefix": "hf engine rollouts/s on agent-shaped traffic with its prefix cache on vs off",
    "grpo": "GRPO update step time against TRL's GRPOTrainer on the same batch",
    "packing": "GRPO update on agent calls sharing a prompt head: tree packing vs identical prompts only",
    "dashboard": "dashboard rollouts table at 100,000 rollouts (sort, filter, deep pages) against the store API page",
    "learn": "held-out reward against training time on the demo task, tracerl beside TRL's GRPOTrainer",
    "algorithms": "GRPO, PPO, REINFORCE++ and RLOO on the demo task at the same training time",
    "pipeline": "steps per hour with synchronous vs asynchronous updates (async_updates) on the toy task",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, help_text in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
        try:
            mod = importlib.import_module(f"tracerl.bench.{name}")
        except ModuleNotFoundError:
            p.set_defaults(_missing=name)
            continue
        mod.add_arguments(p)


def main(args: argparse.Namespace) -> int:
    if getattr(args, "_missing", None):
        print(f"benchmark {args._missing!r} is not available in this build", file=sys.stderr)
        return 2
    mod = importlib.import_module(f"tracerl.bench.{args.bench}")
    results = mod.run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0
