"""The Trainer drives PPO, REINFORCE++ and RLOO like GRPO: real runners, gateway and sqlite store with the
tiny model; a PPO run stops, checkpoints (critic included) and resumes; ``tracerl train`` names them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import tracerl
from tracerl.algorithms.ppo_learner import CRITIC_FILE
from tracerl.config import StageSpec
from tracerl.tasks import toy
from tracerl.train.cli import build_algorithm

AGENTS = """
from openai import OpenAI

import tracerl


@tracerl.agent
def letters(task, llm):
    client = OpenAI(base_url=llm.base_url, api_key=llm.api_key)
    reply = client.chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": task["question"]}], **llm.sampling
    )
    text = (reply.choices[0].message.content or "").replace(" ", "")
    return sum(c.isalpha() for c in text) / max(1, len(text))
"""


@pytest.fixture
def letters_agent(agent_module: Callable[[str, str], Path]) -> str:
    """An agent rewarded by the share of letters in its reply: graded (about half) for the tiny model."""
    agent_module("ppo_test_agents", AGENTS)
    return "ppo_test_agents:letters"


def _fit(
    model_dir: Path, run_dir: Path, algorithm: object, max_steps: int, agent: object = toy.digits_agent
) -> tracerl.train.trainer.FitResult:
    trainer = tracerl.Trainer(
        agent=agent, algorithm=algorithm, runners=2, run_dir=str(run_dir), batch_size=1, max_tokens=8,
        val_every=0, seed=0, progress=False, max_steps=max_steps,
    )  # fmt: skip
    return trainer.fit(toy.make_tasks("train", 4), val_tasks=toy.make_tasks("val", 2))


def test_ppo_run_checkpoints_its_critic_and_resumes(tiny_model_dir: Path, tmp_path: Path, letters_agent: str) -> None:
    run_dir = tmp_path / "run"

    def ppo() -> tracerl.PPO:
        return tracerl.PPO(model=str(tiny_model_dir), group_size=2, lr=1e-3, critic_warmup_steps=1, bf16=False)

    first = _fit(tiny_model_dir, run_dir, ppo(), max_steps=2, agent=letters_agent)
    assert first.steps == 2 and first.checkpoint is not None
    # step 1 warmed the critic only (weights version stays 0), step 2 updated the policy
    assert [h["weights_version"] for h in first.history] == [0, 1]
    assert [h["policy_updated"] for h in first.history] == [0.0, 1.0]
    assert all("value_loss" in h and "explained_variance" in h for h in first.history)
    critic = torch.load(first.checkpoint / CRITIC_FILE, weights_only=False)
    assert critic["updates"] == 2 and float(critic["critic"]["head"]["weight"].abs().sum()) > 0

    second = _fit(tiny_model_dir, run_dir, ppo(), max_steps=3, agent=letters_agent)
    assert [h["step"] for h in second.history] == [3]  # continued, not restarted
    assert second.history[0]["weights_version"] == 2  # warm-up not repeated: the policy trained again
    assert second.history[0]["value_mean"] != 0.0  # the restored critic, not a fresh zero head
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert second.final_model is not None and (second.final_model / "config.json").is_file()


@pytest.mark.parametrize("name", ["reinforce++", "rloo"])
def test_trainer_runs_reinforce_pp_and_rloo_from_a_run_config(name: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    algorithm = build_algorithm(StageSpec(name, {"model": str(tiny_model_dir), "group_size": 2, "lr": 1e-3}))
    assert algorithm.name == name
    result = _fit(tiny_model_dir, tmp_path / "run", algorithm, max_steps=2)
    assert result.steps == 2 and result.val_after is not None
    assert all(h["stage_name"] == name for h in result.history)


def test_run_config_names_every_algorithm() -> None:
    built = {n: build_algorithm(StageSpec(n, {"model": "tiny-random"})) for n in ("grpo", "ppo", "reinforce++", "rloo")}
    assert {n: type(a).__name__ for n, a in built.items()} == {
        "grpo": "GRPO", "ppo": "PPO", "reinforce++": "REINFORCEpp", "rloo": "RLOO",
    }  # fmt: skip
    with pytest.raises(tracerl.errors.ConfigError, match="not one of"):
        StageSpec("dpo", {"model": "tiny-random"})
