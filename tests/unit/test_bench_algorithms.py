"""``tracerl bench algorithms``: the command is registered, refuses unknown algorithms, and its table."""

from __future__ import annotations

import argparse

import pytest

from tracerl.bench import BENCHMARKS, add_arguments
from tracerl.bench.algorithms import markdown_table, run


def test_registered_and_refuses_an_unknown_algorithm(tmp_path: object) -> None:
    assert "algorithms" in BENCHMARKS
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["algorithms", "--quick", "--algorithms", "grpo,dpo", "--out", str(tmp_path)])
    assert (args.minutes, args.quick) == (5.0, True)
    with pytest.raises(SystemExit, match=r"unknown algorithm\(s\) \['dpo'\]"):
        run(args)


def test_table_has_one_row_per_algorithm_with_missing_values_as_dashes() -> None:
    result = {
        "task": "toy", "model": "tiny-random", "minutes": 1.0, "seed": 0, "n_val": 16,
        "rows": [
            {"algorithm": "grpo", "steps": 12, "s_per_step": 4.25, "val_before": 0.01, "val_after": 0.5,
             "train_reward_last": 0.4},
            {"algorithm": "ppo", "steps": 0, "s_per_step": None, "val_before": 0.01, "val_after": None,
             "train_reward_last": None},
        ],
    }  # fmt: skip
    lines = markdown_table(result).splitlines()
    assert lines[0].startswith("toy task, tiny-random, 1 min of training per algorithm, seed 0, 16 held-out")
    assert lines[-2] == "| grpo | 12 | 4.25 | 0.010 | 0.500 | 0.400 |"
    assert lines[-1] == "| ppo | 0 | – | 0.010 | – | – |"
