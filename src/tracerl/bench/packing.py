"""``tracerl bench packing``: one GRPO update on agent-shaped calls, prompts sharing a head packed as a tree
(``share_prefix_tokens``, the default) against identical prompts only (``share_prefix_tokens=None``).

An agent framework sends the same head on every call (system prompt, tool schemas: the SQL example's is
≈ 400 tokens), and call k + 1 of a rollout repeats call k's conversation. The workload has that shape:
``tasks`` tasks × ``group`` rollouts × ``turns`` calls, every prompt ::

    head (shared by all) + question (per task) + for each earlier turn: its response + a tool result

with random tokens (seeded) for the question, responses and tool results. The first calls of a group send
the same prompt, so both sides pack those together; the later calls differ after the head, and only the
tree packing forwards their head once per micro-batch.

Both sides are :class:`~tracerl.algorithms.learner.GRPOLearner` on their own copy of the same weights, with
the same config but ``share_prefix_tokens``; their updates alternate (machine load hits both alike) and the
ratio is the median of the per-pair time ratios::

    speed-up = update seconds (identical prompts only) / update seconds (tree)

Every update is on-policy (the calls carry the learner's current weights version, so the ratio is 1 and
the gradient is the policy gradient). Reported per side: rows and tokens of the packed micro-batches (with
padding) and seconds per update (median); and the largest difference between the two sides' log-probs of
the same response tokens at the same weights, which must be float rounding only.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import random
import statistics
import time
from typing import Any

SIDES = {"tree": 16, "identical prompts only": None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="model name or folder (load_model)")
    parser.add_argument("--head", type=int, default=400, help="tokens every prompt starts with (default: 400)")
    parser.add_argument("--question", type=int, default=24, help="task-specific prompt tokens (default: 24)")
    parser.add_argument("--response", type=int, default=48, help="tokens per model reply (default: 48)")
    parser.add_argument("--tool", type=int, default=32, help="tool-result tokens after each reply (default: 32)")
    parser.add_argument("--turns", type=int, default=3, help="LLM calls per rollout (default: 3)")
    parser.add_argument("--tasks", type=int, default=1, help="tasks per update (default: 1)")
    parser.add_argument("--group", type=int, default=4, help="rollouts per task (default: 4)")
    parser.add_argument("--micro-batch", type=int, default=8, help="calls per forward/backward (default: 8)")
    parser.add_argument("--rounds", type=int, default=3, help="timed updates per side, after one warm-up")
    parser.add_argument("--seed", type=int, default=0)


def workload(args: argparse.Namespace, vocab: int) -> list[Any]:
    """The transitions of one update (see the module docstring), with advantages ±1 alternating."""
    from tracerl.algorithms.transitions import Transition

    rng = random.Random(args.seed)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(n)]

    head = tokens(args.head)
    out: list[Transition] = []
    for task in range(args.tasks):
        question = tokens(args.question)
        for g in range(args.group):
            history: list[int] = []
            for _ in range(args.turns):
                response = tokens(args.response)
                prompt = head + question + history
                logprobs = [-1.0] * len(response)  # unused: the calls are on-policy (see run)
                out.append(Transition(prompt, response, logprobs, 1.0 if g % 2 else -1.0, f"t{task}g{g}",
                                      weights_version=0))  # fmt: skip
                history = history + response + tokens(args.tool)
    return out


def _logprobs(learner: Any, mbs: list[Any], transitions: list[Any]) -> list[float]:
    """Every response token's log-prob under ``learner``'s weights, in transition order."""
    import torch

    out: dict[int, list[float]] = {}
    with torch.no_grad():
        for mb in mbs:
            logp = learner.logprobs(mb)
            for b, row in enumerate(mb.rows):
                out[row] = logp[b, : len(transitions[row].response_ids)].tolist()
    return [x for i in range(len(transitions)) for x in out[i]]


def _summary(side: dict[str, Any]) -> dict[str, Any]:
    keep = ("rows", "tokens")
    return {**{k: side[k] for k in keep}, "update_s": statistics.median(side["times"])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from rich.console import Console
    from rich.table import Table

    from tracerl.algorithms.batch import build_micro_batches
    from tracerl.algorithms.grpo import GRPOConfig
    from tracerl.algorithms.learner import GRPOLearner
    from tracerl.engines.models import load_model

    for name in ("head", "response", "turns", "tasks", "group", "micro_batch", "rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model)
    transitions = workload(args, int(model.config.vocab_size))
    pad = int(tokenizer.pad_token_id or 0)
    console = Console()
    sides: dict[str, Any] = {}
    for side, share in SIDES.items():
        config = GRPOConfig(model=args.model, lr=1e-5, micro_batch_size=args.micro_batch, bf16=False, device="cpu",
                            share_prefix_tokens=share, seed=args.seed)  # fmt: skip
        mbs = build_micro_batches(transitions, micro_batch_size=args.micro_batch, share_prefix_tokens=share,
                                  micro_batch_tokens=config.micro_batch_tokens)  # what the learner builds
        learner = GRPOLearner(copy.deepcopy(model), config, pad_id=pad)
        sides[side] = {
            "learner": learner,
            "rows": sum(int(mb.input_ids.shape[0]) for mb in mbs),
            "tokens": sum(int(mb.input_ids.numel()) for mb in mbs),
            "logprobs": _logprobs(learner, mbs, transitions),  # at the shared starting weights
            "times": [],
        }
    tree, apart = sides["tree"], sides["identical prompts only"]
    gap = max(abs(a - b) for a, b in zip(tree["logprobs"], apart["logprobs"], strict=True))
    for i in range(args.rounds + 1):  # round 0 warms up
        for s in sides.values():
            learner = s["learner"]
            calls = [dataclasses.replace(t, weights_version=learner.weights_version) for t in transitions]
            t0 = time.perf_counter()
            learner.update(calls)
            if i > 0:
                s["times"].append(time.perf_counter() - t0)
        console.log(f"round {i}: " + ", ".join(f"{k} {v['times'][-1]:.2f} s" for k, v in sides.items() if v["times"]))
    results: dict[str, Any] = {
        "model": args.model,
        "calls": len(transitions),
        "shape": {k: getattr(args, k) for k in ("head", "question", "response", "tool", "turns", "tasks", "group")},
        "micro_batch": args.micro_batch,
        "sides": {k: _summary(v) for k, v in sides.items()},
        "speedup": statistics.median([a / t for a, t in zip(apart["times"], tree["times"], strict=True)]),
        "token_ratio": tree["tokens"] / apart["tokens"],
        "logprob_gap": gap,
    }
    table = Table(title=f"GRPO update on {len(transitions)} agent calls ({args.model}, {args.head}-token head)")
    for col in ("packing", "rows", "tokens (with padding)", "s / update"):
        table.add_column(col)
    for k, v in results["sides"].items():
        table.add_row(k, str(v["rows"]), str(v["tokens"]), f"{v['update_s']:.2f}")
    console.print(table)
    console.print(f"speed-up {results['speedup']:.2f}×, tokens {results['token_ratio']:.2f}× (tree / apart), "
                  f"largest log-prob difference {results['logprob_gap']:.1e}")  # fmt: skip
    return results
