"""The recipe runner (examples/recipes.py) end to end with the tiny model on the toy task: gold demonstrations,
base → SFT → GRPO per seed, per-task results, the report with bootstrap intervals, and resuming."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))  # runner worker processes inherit this sys.path

from recipes import Recipe, report, run_recipe  # noqa: E402

import tracerl  # noqa: E402
from tracerl.tasks import toy  # noqa: E402
from tracerl.types import Mode, RolloutQuery  # noqa: E402


@pytest.mark.timeout(900)  # 3 evaluations and 2 trainers, each starting its runner processes
def test_recipe_runs_every_stage_reports_and_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe = Recipe(
        name="toy", agent="tracerl.tasks.toy:digits_agent", train=toy.make_tasks("train", 16),
        val=toy.make_tasks("val", 2), test=toy.make_tasks("val", 6), policy=lambda task, messages, tools: {
            "content": "4217"}, run_dir=tmp_path / "recipe", model=str(tiny_model_dir), demos=16, sft_epochs=3,
        sft_lr=3e-3, sft_batch_size=4, grpo_max_steps=1, group_size=2, batch_size=2, grpo_lr=1e-4, max_tokens=6,
        runners=2, val_every=0, rl_train=toy.make_tasks("train", 16)[:3],
    )
    results = run_recipe(recipe, seeds=[0])

    demos = [json.loads(line) for line in (tmp_path / "recipe" / "demos.jsonl").read_text().splitlines()]
    assert len(demos) == 16 and demos[0]["messages"][-1] == {"role": "assistant", "content": "4217", "weight": 1}
    assert results["demos"]["solved_by_gold"] == 16
    base, sft, grpo = results["base"], results["seeds"]["0"]["sft"], results["seeds"]["0"]["grpo"]
    assert len(base["rewards"]) == len(sft["rewards"]) == len(grpo["rewards"]) == 6
    assert base["mean"] < 0.3 and sft["mean"] > 0.8  # the warm start taught the digits
    assert sft["steps"] == 12 and grpo["steps"] == 1 and Path(grpo["model"]).is_dir()  # 16 demos / 4 × 3 epochs
    assert grpo["stopped_by"] == "max_steps"  # the first of grpo_max_steps, grpo_epochs and grpo_minutes
    assert results["settings"]["rl_train"] == 3 and results["settings"]["grpo_lr"] == 1e-4
    store = tracerl.connect(f"sqlite:///{tmp_path / 'recipe' / 'seed0' / 'grpo' / 'store.db'}", create=False)
    trained_on = {r.task["question"] for r in store.query_rollouts(RolloutQuery(mode=Mode.TRAIN, limit=100)).items}
    assert trained_on and trained_on <= {t["question"] for t in recipe.rl_train or []}  # the RL stage's curriculum
    table = report(results)
    assert "| warm start (SFT) |" in table and "| RL (GRPO) |" in table
    assert "Warm start − base: +" in table and "RL − warm start:" in table and "n=6" in table

    saved = (tmp_path / "recipe" / "results.json").read_text()
    again = run_recipe(recipe, seeds=[0])  # everything is in results.json: nothing is trained or evaluated again
    assert again == results and (tmp_path / "recipe" / "results.json").read_text() == saved


@pytest.mark.timeout(600)
def test_recipe_configs_run_with_tracerl_train(
        tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``recipe.py --write-config``: the same stages as a ``tracerl train`` config, which runs as written."""
    import argparse
    import os
    import subprocess

    from recipes import run_or_write

    from tracerl.config import load_run_config

    train = toy.make_tasks("train", 8)
    recipe = Recipe(
        name="toy", agent="tracerl.tasks.toy:digits_agent", train=train, val=toy.make_tasks("val", 2),
        test=toy.make_tasks("val", 2), policy=lambda task, messages, tools: {"content": "4217"},
        run_dir=tmp_path / "recipe", model=str(tiny_model_dir), demos=8, sft_epochs=2, sft_lr=3e-3, sft_batch_size=4,
        grpo_minutes=5, group_size=2, batch_size=2, grpo_lr=1e-4, grpo_temperature=1.5, max_tokens=6, runners=2,
        val_every=0, grpo_options={"returns": "step"}, rl_train=train[:4],
    )
    assert run_or_write(recipe, argparse.Namespace(write_config=True, seeds=[3])) == {}  # nothing trained
    path = tmp_path / "recipe" / "seed3.toml"
    assert f"wrote {path}; run it with: PYTHONPATH=examples tracerl train {path}" in capsys.readouterr().out
    assert not (tmp_path / "recipe" / "seed3").exists()
    run = load_run_config(path)
    sft, grpo = run.stages
    assert (sft.algorithm, sft.options["lr"], sft.options["seed"], sft.trainer["epochs"]) == ("sft", 3e-3, 3, 2)
    assert grpo.algorithm == "grpo" and grpo.options["returns"] == "step" and grpo.options["group_size"] == 2
    assert grpo.trainer["time_budget_s"] == 300 and grpo.trainer["epochs"] == 1 and run.runners.n == 2
    assert run.trainer.seed == 3
    assert grpo.trainer["temperature"] == 1.5 and "temperature" not in sft.trainer  # only the RL stage samples hot
    assert len((tmp_path / "recipe" / "rl_train_tasks.jsonl").read_text().splitlines()) == 4

    proc = subprocess.run(
        [sys.executable, "-m", "tracerl", "train", str(path), "--max-steps", "2"], capture_output=True, text=True,
        timeout=500, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stage 1 (sft): 2 steps" in proc.stdout and "stage 2 (grpo): 2 steps" in proc.stdout, proc.stdout
    assert (tmp_path / "recipe" / "seed3" / "train" / "final").is_dir()
    records = [json.loads(line) for line in (tmp_path / "recipe" / "seed3" / "train" / "metrics.jsonl").open()]
    grpo_steps = [r for r in records if r["kind"] == "train" and r.get("stage_name") == "grpo"]
    assert len(grpo_steps) == 2 and all(r["dropped"] == 0 for r in grpo_steps)  # trained at 1.5, nothing stale


def test_recipe_configs_carry_the_roles_of_an_agent(tmp_path: Path) -> None:
    """A recipe whose agent names several models writes them as the config's ``[roles]`` table, and the RL
    stage's ``train_models`` as a list: what ``tracerl train`` reads back is what ``run_recipe`` passes."""
    from recipes import write_configs

    from tracerl.config import load_run_config

    train = toy.make_tasks("train", 2)
    recipe = Recipe(
        name="toy", agent="tracerl.tasks.toy:digits_agent", train=train, val=train, test=train,
        policy=lambda task, messages, tools: {"content": "4217"}, run_dir=tmp_path / "recipe", demos=2,
        roles={"solver": None, "summary": None, "critic": "smollm2-135m"},
        grpo_options={"train_models": ["solver"]},
    )
    (path,) = write_configs(recipe, seeds=[0])
    run = load_run_config(path)
    assert run.roles == {"solver": None, "summary": None, "critic": "smollm2-135m"}
    assert run.stages[1].options["train_models"] == ["solver"]
    plain = load_run_config(write_configs(Recipe(**{**vars(recipe), "roles": None, "grpo_options": {}}), seeds=[0])[0])
    assert plain.roles is None


def test_spread_takes_every_kind_in_turn() -> None:
    from recipes import spread

    tasks = [{"id": i, "difficulty": d} for i, d in enumerate(["easy"] * 4 + ["medium"] * 3 + ["hard"] * 1)]
    picked = spread(tasks, "difficulty", 6)
    assert [t["difficulty"] for t in picked] == ["easy", "medium", "hard", "easy", "medium", "easy"]
    assert [t["id"] for t in picked] == [0, 4, 7, 1, 5, 2]  # each kind in file order
    assert len(spread(tasks, "difficulty", 50)) == 8  # asking for more than there are gives them all


def test_interleave_gives_every_prefix_each_kind_in_its_share() -> None:
    from recipes import interleave

    tasks = [{"id": f"e{i}", "difficulty": "easy"} for i in range(6)] + [
        {"id": f"h{i}", "difficulty": "hard"} for i in range(3)]
    order = [t["id"] for t in interleave(tasks, "difficulty")]
    # easy i at (i + .5) / 6, hard i at (i + .5) / 3
    assert order == ["e0", "h0", "e1", "e2", "h1", "e3", "e4", "h2", "e5"]
    assert sorted(order) == sorted(t["id"] for t in tasks)  # a reordering: nothing lost or repeated


def test_report_breaks_the_test_reward_down_by_a_task_field() -> None:
    """Per-kind means on hand-computed numbers: 2 easy and 2 hard test tasks, 2 seeds."""
    results = {
        "base": {"mean": 0.0, "rewards": [0.0, 0.0, 0.0, 0.0]},
        "seeds": {
            "0": {"sft": {"mean": 0.5, "rewards": [1.0, 1.0, 0.0, 0.0], "train_seconds": 60.0},
                  "grpo": {"mean": 0.75, "rewards": [1.0, 1.0, 1.0, 0.0], "train_seconds": 60.0}},
            "1": {"sft": {"mean": 0.25, "rewards": [1.0, 0.0, 0.0, 0.0], "train_seconds": 60.0},
                  "grpo": {"mean": 0.5, "rewards": [1.0, 1.0, 0.0, 0.0], "train_seconds": 60.0}},
        },
        "test_groups": {"field": "difficulty", "values": ["easy", "hard", "easy", "hard"]},
    }
    table = report(results).splitlines()
    at = table.index("| difficulty | tasks | base | warm start | RL |")
    # easy = tasks 0 and 2: warm start (1 + 0 + 1 + 0) / 4 = 0.5, RL (1 + 1 + 1 + 0) / 4 = 0.75
    # hard = tasks 1 and 3: warm start (1 + 0 + 0 + 0) / 4 = 0.25, RL (1 + 0 + 1 + 0) / 4 = 0.5
    assert table[at + 2 : at + 4] == ["| easy | 2 | 0.000 | 0.500 | 0.750 |", "| hard | 2 | 0.000 | 0.250 | 0.500 |"]
    assert "LLM calls" not in report(results)  # results from before calls were recorded: no calls column
    assert "stopped by" not in report(results)  # nor which rule stopped the RL stage
    results["seeds"]["0"]["grpo"]["stopped_by"], results["seeds"]["1"]["grpo"]["stopped_by"] = "epochs", "time_budget"
    assert "RL stage stopped by: seed 0 epochs, seed 1 time_budget." in report(results).splitlines()
    # with each test rollout's LLM calls: their means per stage, seed-averaged, overall and per kind
    results["base"]["calls"] = [1, 1, 1, 1]
    for seed, sft, grpo in (("0", [2, 2, 2, 2], [2, 3, 2, 4]), ("1", [2, 2, 2, 2], [2, 3, 2, 2])):
        results["seeds"][seed]["sft"]["calls"], results["seeds"][seed]["grpo"]["calls"] = sft, grpo
    table = report(results).splitlines()
    # RL: per task (2 + 2) / 2, (3 + 3) / 2, 2, (4 + 2) / 2 = 2, 3, 2, 3; overall 2.5; easy 2, hard 3
    assert "LLM calls a test rollout (seed-averaged): base 1.00, warm start 2.00, RL 2.50." in table
    at = table.index("| difficulty | tasks | base | warm start | RL | calls a rollout (base / warm start / RL) |")
    assert table[at + 2 : at + 4] == ["| easy | 2 | 0.000 | 0.500 | 0.750 | 1.00 / 2.00 / 2.00 |",
                                      "| hard | 2 | 0.000 | 0.250 | 0.500 | 1.00 / 2.00 / 3.00 |"]
    del results["seeds"]["1"]["grpo"]  # a stage still running is left out of the breakdown
    assert "| difficulty | tasks | base | warm start | calls a rollout (base / warm start) |" in report(
        results).splitlines()
