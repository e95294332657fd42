"""Run configuration: invalid values are refused with a message naming the value and the fix; TOML loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracerl.config import (
    EngineConfig,
    RunConfig,
    RunnerConfig,
    StageSpec,
    StoreConfig,
    TrainerConfig,
    load_run_config,
)
from tracerl.errors import ConfigError


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: TrainerConfig(batch_size=0), ["trainer.batch_size", "0"]),
        (lambda: TrainerConfig(epochs=-1), ["trainer.epochs", "-1"]),
        (lambda: TrainerConfig(temperature=0.0), ["trainer.temperature", "temperature > 0"]),
        (lambda: TrainerConfig(val_every=-2), ["trainer.val_every"]),
        (lambda: TrainerConfig(time_budget_s=0), ["trainer.time_budget_s"]),
        (lambda: RunnerConfig(n=-1), ["runners.n", "-1"]),  # n = 0: runners elsewhere
        (lambda: RunnerConfig(timeout_s=-5), ["runners.timeout_s"]),
        (lambda: EngineConfig(port=70000), ["engine.port", "70000"]),
        (lambda: StoreConfig(url="runs/x.db"), ["runs/x.db", "sqlite:///"]),
        (lambda: RunConfig(agent="my_agent", train_tasks="t.jsonl", stages=[StageSpec("grpo", {"model": "m"})]),
         ["module:function"]),
        (lambda: RunConfig(agent="m:f", train_tasks="t.jsonl"), ["[algorithm]", "[[stages]]"]),
        (lambda: RunConfig(agent="m:f", train_tasks="t.jsonl", stages=[StageSpec("grpo", {})]), ["model"]),
        (lambda: StageSpec("ppo2"), ["'ppo2'", "grpo", "sft"]),
        (lambda: StageSpec("sft", trainer={"run_dir": "x"}), ["run_dir", "time_budget_s"]),
        (lambda: TrainerConfig(max_sampled_groups=0.5), ["max_sampled_groups", "≥ 1"]),
        (lambda: TrainerConfig(balance_by=""), ["balance_by", "task field"]),
        (lambda: TrainerConfig(balance_trim=True), ["balance_trim", "balance_by is unset"]),
        (lambda: EngineConfig(dtype="int8"), ["engine.dtype", "bfloat16"]),
    ],
)
def test_invalid_values_are_refused_with_the_value_and_the_fix(build, words) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    for word in words:
        assert word in str(info.value)


def test_a_whole_run_loads_from_toml(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(
        """
agent = "tracerl.tasks.toy:digits_agent"
train_tasks = "data/train.jsonl"
val_tasks = "demo-toy:val"

[store]
url = "sqlite:///runs/x/store.db"

[runners]
n = 2

[algorithm]
model = "tiny-random"
group_size = 8
lr = 1e-3

[trainer]
batch_size = 4
val_every = 3
run_dir = "runs/x"
"""
    )
    run = load_run_config(tmp_path / "run.toml")
    assert run.agent == "tracerl.tasks.toy:digits_agent"
    assert run.train_tasks == str(tmp_path / "data" / "train.jsonl")  # relative to the config file
    assert run.val_tasks == "demo-toy:val"  # a built-in dataset name stays a name
    assert run.store.url == "sqlite:///runs/x/store.db"
    assert run.runners.n == 2
    assert [(st.algorithm, st.options) for st in run.stages] == [
        ("grpo", {"model": "tiny-random", "group_size": 8, "lr": 1e-3})
    ]
    assert (run.trainer.batch_size, run.trainer.val_every, run.trainer.epochs) == (4, 3, 1)


def test_unknown_keys_in_toml_list_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('agent = "a:b"\ntrain_tasks = "x.jsonl"\n[algorithm]\nmodel = "m"\n[trainer]\nbatch = 4\n')
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    assert "'batch'" in str(info.value) and "batch_size" in str(info.value)


def test_missing_or_broken_files_are_reported_by_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("agent = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_run_config(tmp_path / "bad.toml")
    (tmp_path / "short.toml").write_text('agent = "a:b"\n')
    with pytest.raises(ConfigError, match="train_tasks"):
        load_run_config(tmp_path / "short.toml")



def test_stages_load_from_toml_and_later_stages_inherit_the_model(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        """
agent = "tracerl.tasks.toy:digits_agent"
train_tasks = "demo-toy:train"

[[stages]]
algorithm = "sft"
[stages.options]
model = "tiny-random"
demonstrations = "demos.jsonl"
[stages.trainer]
epochs = 2

[[stages]]
algorithm = "grpo"
[stages.options]
group_size = 4
[stages.trainer]
time_budget_s = 60
"""
    )
    run = load_run_config(path)
    assert [s.algorithm for s in run.stages] == ["sft", "grpo"]
    assert run.stages[1].options == {"group_size": 4, "model": "tiny-random"}
    assert run.stages[0].trainer == {"epochs": 2} and run.stages[1].trainer == {"time_budget_s": 60}
    path.write_text(path.read_text() + '\n[algorithm]\nmodel = "x"\n')
    with pytest.raises(ConfigError, match="both"):
        load_run_config(path)
