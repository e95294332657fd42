"""The APO benchmarks' own logic (``benchmarks/apo_compare.py``, ``benchmarks/apo_math.py``): the results table
with its paired bootstrap over seed-averaged task rewards, resuming from ``results.json``, and the math
benchmark's splits. The runs themselves are end to end: ``python benchmarks/apo_math.py --quick``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tracerl.stats import paired_bootstrap

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def benchmarks_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))


def result(rewards: list[float], seconds: float = 90.0, steps: int = 3) -> dict[str, Any]:
    return {"mean": sum(rewards) / len(rewards), "rewards": rewards, "train_seconds": seconds, "steps": steps}


RESULTS: dict[str, Any] = {
    "name": "t",
    "base": {"mean": 0.25, "rewards": [0.0, 1.0, 0.0, 0.0]},
    "seeds": {
        "1": {"apo": result([0.0, 1.0, 1.0, 0.0], 120), "grpo": result([1.0, 1.0, 1.0, 1.0], 150, 7)},
        "0": {"apo": result([1.0, 1.0, 0.0, 0.0], 60, 2)},  # GRPO of seed 0 not run yet
    },
}


def test_table_averages_each_task_over_seeds_before_the_paired_bootstrap() -> None:
    from apo_compare import report

    table = report(RESULTS).splitlines()
    assert table[0] == "| prompt / model | seed 0 | seed 1 | mean | train wall time per seed |"
    assert table[2] == "| base prompt | 0.250 | 0.250 | 0.250 | – |"
    assert table[3] == "| APO, demonstration search | 0.500 | 0.500 | 0.500 | 1.0 min (2 steps), 2.0 min (3 steps) |"
    assert not any(line.startswith("| GRPO") for line in table)  # a method is shown once every seed has it
    # per-task APO rewards averaged over the seeds: [0.5, 1, 0.5, 0] against the base's [0, 1, 0, 0]
    assert table[-1] == f"APO − base: {paired_bootstrap([0, 1, 0, 0], [0.5, 1, 0.5, 0])}."
    assert table[-1].startswith("APO − base: +0.250 [")
    assert "Test tasks: 4, greedy" in table[-2]

    done = json.loads(json.dumps(RESULTS))
    done["seeds"]["0"]["grpo"] = result([0.0, 1.0, 1.0, 1.0], 66, 4)
    table = report(done).splitlines()
    assert table[4] == "| GRPO, same wall time | 0.750 | 1.000 | 0.875 | 1.1 min (4 steps), 2.5 min (7 steps) |"
    assert table[-1] == f"GRPO − base: {paired_bootstrap([0, 1, 0, 0], [0.5, 1, 1, 1])}."


def test_a_rerun_resumes_from_results_json_without_running_anything(tmp_path: Path) -> None:
    from apo_compare import Comparison, run

    done = json.loads(json.dumps(RESULTS))
    done["seeds"]["0"]["grpo"] = result([0.0, 1.0, 1.0, 1.0])
    (tmp_path / "results.json").write_text(json.dumps(done))
    task = {"question": "q"}
    cmp = Comparison(name="t", agent="no_such_module:agent", prompt="p", train=[task], apo_val=[task],
                     test=[task] * 4, grpo_train=[task], run_dir=tmp_path, model="no-such-model")  # fmt: skip
    out = run(cmp, seeds=(0, 1))  # any stage it ran would fail on the missing agent and model
    assert out["seeds"] == done["seeds"] and out["settings"]["test"] == 4
    assert (tmp_path / "results.md").read_text().startswith("| prompt / model | seed 0 | seed 1 |")


def test_math_benchmark_splits_are_disjoint_and_apo_gets_the_agents_own_prompt() -> None:
    pytest.importorskip("autogen_agentchat")
    pytest.importorskip("reasoning_gym")
    import apo_math
    from math_autogen.agent import SYSTEM_MESSAGE

    full = apo_math.comparison(apo_math.parse_args([]))
    assert full.prompt == SYSTEM_MESSAGE and full.model == "smollm2-135m"
    assert (len(full.train), len(full.apo_val), len(full.test)) == (48, 16, 50)
    questions = [{t["question"] for t in ts} for ts in (full.grpo_train, full.apo_val, full.test)]
    assert not questions[0] & questions[1] and not questions[0] & questions[2] and not questions[1] & questions[2]
    assert {t["source"] for t in full.grpo_train + full.test} == {"easy_arithmetic"}

    quick = apo_math.comparison(apo_math.parse_args(["--quick", "--n-test", "6", "--run-dir", "x"]))
    assert quick.model == "tiny-random" and len(quick.test) == 6 and quick.run_dir == Path("x")
    assert quick.demo_min_reward == 0.0 and quick.apo_budget_s is None
