"""``tracerl bench packing``: the workload has an agent's shape, and the tree packing holds fewer tokens
for the same log-probs (a real, tiny model; the timings themselves are not asserted)."""

from __future__ import annotations

import argparse

from tracerl.bench import BENCHMARKS, add_arguments
from tracerl.bench.packing import run, workload


def parse(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["packing", *extra])


def test_workload_repeats_the_head_and_each_earlier_turn() -> None:
    args = parse("--head", "10", "--question", "3", "--response", "4", "--tool", "2", "--turns", "3",
                 "--tasks", "2", "--group", "2")  # fmt: skip
    calls = workload(args, vocab=50)
    assert len(calls) == 2 * 2 * 3 and len({tuple(c.prompt_ids[:10]) for c in calls}) == 1
    first, second, third = calls[:3]  # task 0, rollout 0
    assert len(first.prompt_ids) == 13
    assert second.prompt_ids == first.prompt_ids + first.response_ids + second.prompt_ids[17:]  # + the tool result
    assert len(second.prompt_ids) == 13 + 4 + 2
    assert third.prompt_ids[: len(second.prompt_ids) + 4] == second.prompt_ids + second.response_ids
    assert calls[3].prompt_ids == first.prompt_ids  # the group's other rollout asks the same first question


def test_tree_packing_holds_fewer_tokens_and_gives_the_same_log_probs() -> None:
    assert "packing" in BENCHMARKS
    args = parse("--model", "tiny-random", "--head", "40", "--question", "4", "--response", "6", "--tool", "3",
                 "--turns", "3", "--group", "2", "--rounds", "1")  # fmt: skip
    result = run(args)
    tree, apart = result["sides"]["tree"], result["sides"]["identical prompts only"]
    assert result["calls"] == 6 and tree["rows"] == 1 and apart["rows"] == 5
    assert tree["tokens"] < apart["tokens"] and result["token_ratio"] < 0.6
    assert result["logprob_gap"] < 1e-4 and result["speedup"] > 0
