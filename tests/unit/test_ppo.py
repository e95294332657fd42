"""PPO and REINFORCE++ learners on the tiny model with hand-built rollouts: the advantages they train on
(worked out by hand), critic warm-up, the separate critic model, exact resume, config errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import tracerl
from tracerl.algorithms.ppo import PPO, REINFORCEpp
from tracerl.algorithms.ppo_learner import PPOLearner
from tracerl.algorithms.rollout_batch import RolloutBatch, rollouts_batch
from tracerl.algorithms.transitions import LLMCallRecord, RolloutRecord
from tracerl.engines.models import load_model
from tracerl.errors import ConfigError


def _batch(version: int) -> RolloutBatch:
    """Rollout a: two calls, 0.1 emitted after the first, final 1.0; rollout b: one call, final 0."""

    def call(seq: int, prompt: list[int], response: list[int]) -> LLMCallRecord:
        return LLMCallRecord(seq=seq, prompt_ids=prompt, response_ids=response, logprobs=[-5.0] * len(response),
                             weights_version=version)  # fmt: skip

    return rollouts_batch([
        RolloutRecord("a", "g", 1.0, [call(1, [5, 6, 7], [8, 9]), call(3, [5, 6, 7, 8, 9, 10], [11, 12, 13])],
                      [(2, 0.1)]),
        RolloutRecord("b", "g", 0.0, [call(1, [5, 6, 7], [20, 21, 22])]),
    ])  # fmt: skip


def _params(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_ppo_advantages_from_an_untrained_critic_by_hand(tiny_model_dir: Path) -> None:
    model, tok = load_model(tiny_model_dir)
    algo = PPO(model=str(tiny_model_dir), lr=1e-3, critic_lr=1e-2, gamma=1.0, lam=0.5, bf16=False, device="cpu")
    learner = algo.setup(model, tok)
    batch = _batch(0)
    result = learner.update(batch)
    # V ≡ 0 (zero-initialised head): a: δ2 = 1.0, δ1 = 0.1 → A2 = 1.0, A1 = 0.1 + 0.5·1.0 = 0.6; b: A = 0
    assert [x.advantage for x in batch.transitions] == pytest.approx([0.6, 1.0, 0.0])
    assert [x.ret for x in batch.transitions] == pytest.approx([0.6, 1.0, 0.0])
    assert result.metrics["value_mean"] == 0.0
    assert result.metrics["advantage_mean"] == pytest.approx(1.6 / 3)
    first_epoch = result.epochs[0]
    assert first_epoch["ratio_sum"] == first_epoch["tokens"] == 8  # on-policy: ρ exactly 1 in the first epoch
    assert result.state_dict is not None and result.version == 1 == learner.weights_version
    # the critic learned toward the returns: values are no longer all 0
    after = algo.update(_batch(1))
    assert after.metrics["value_mean"] != 0.0 and after.metrics["value_loss"] > 0


def test_critic_warmup_trains_only_the_critic(tiny_model_dir: Path) -> None:
    model, tok = load_model(tiny_model_dir)
    algo = PPO(model=str(tiny_model_dir), lr=1e-3, critic_lr=1e-2, critic_warmup_steps=2, bf16=False, device="cpu")
    learner = algo.setup(model, tok)
    assert isinstance(learner, PPOLearner)
    before = _params(learner.model)
    for _ in range(2):
        result = algo.update(_batch(0))
        assert result.weights is None and result.weights_version == 0 and result.metrics["policy_updated"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in learner.model.state_dict().items())
    assert float(learner.critic.head.weight.detach().abs().sum()) > 0  # the head moved
    result = algo.update(_batch(0))
    assert result.weights is not None and result.weights_version == 1
    assert any(not torch.equal(before[k], v) for k, v in learner.model.state_dict().items())


def test_separate_critic_model_leaves_the_policy_body_to_the_policy_loss(tiny_model_dir: Path) -> None:
    model, tok = load_model(tiny_model_dir)
    algo = PPO(model=str(tiny_model_dir), critic="model", critic_model=str(tiny_model_dir), lr=1e-3,
               critic_warmup_steps=1, bf16=False, device="cpu")  # fmt: skip
    learner = algo.setup(model, tok)
    assert isinstance(learner, PPOLearner) and learner.critic.backbone is not None
    body_before = {k: v.clone() for k, v in learner.critic.backbone.state_dict().items()}
    policy_before = _params(learner.model)
    algo.update(_batch(0))  # warm-up: the critic's own body and head learn, the policy does not
    assert any(not torch.equal(body_before[k], v) for k, v in learner.critic.backbone.state_dict().items())
    assert all(torch.equal(policy_before[k], v) for k, v in learner.model.state_dict().items())


def test_ppo_resumes_exactly_from_a_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    def fresh() -> PPO:
        model, tok = load_model(tiny_model_dir)
        algo = PPO(model=str(tiny_model_dir), lr=1e-3, critic_lr=1e-2, bf16=False, device="cpu", seed=3)
        algo.setup(model, tok)
        return algo

    first = fresh()
    first.update(_batch(0))
    first.save(tmp_path / "ckpt")
    expected = first.update(_batch(1))
    second = fresh()
    second.load(tmp_path / "ckpt")
    assert second.weights_version == 1
    got = second.update(_batch(1))
    assert got.metrics["value_mean"] == expected.metrics["value_mean"]
    assert got.weights is not None and expected.weights is not None
    assert all(torch.equal(expected.weights[k], got.weights[k]) for k in expected.weights)
    assert isinstance(second.learner, PPOLearner) and isinstance(first.learner, PPOLearner)
    assert torch.equal(second.learner.critic.head.weight, first.learner.critic.head.weight)


def test_reinforce_pp_trains_on_normalised_token_returns(tiny_model_dir: Path) -> None:
    model, tok = load_model(tiny_model_dir)
    algo = REINFORCEpp(model=str(tiny_model_dir), lr=1e-3, kl_coef=0.1, bf16=False, device="cpu")
    algo.setup(model, tok)
    first = algo.update(_batch(0))
    # no KL yet (π_old = π_ref): token returns a: [1.1, 1.1, 1, 1, 1], b: [0, 0, 0] → mean 5.2/8
    assert first.metrics["kl_reward"] == pytest.approx(0.0, abs=1e-6)
    assert first.metrics["return_mean"] == pytest.approx(5.2 / 8)
    assert first.weights is not None
    second = algo.update(_batch(1))  # the policy moved: the KL now shapes the reward (k1 on these fixed,
    assert abs(second.metrics["kl_reward"]) > 1e-3  # not policy-sampled, tokens: either sign)
    assert second.metrics["return_mean"] != pytest.approx(5.2 / 8)


def test_configs_refuse_bad_values_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="only used with critic='model'"):
        PPO(model="tiny-random", critic_model="tiny-random")
    with pytest.raises(ConfigError, match="lam must be in"):
        PPO(model="tiny-random", lam=1.5)
    with pytest.raises(ConfigError, match="group_size must be ≥ 2"):
        REINFORCEpp(model="tiny-random", group_size=1, baseline="group")
    with pytest.raises(ConfigError, match="unknown PPO option"):
        PPO(model="tiny-random", advantage="grpo")
    assert (tracerl.PPO, tracerl.REINFORCEpp, tracerl.RLOO) == (PPO, REINFORCEpp, tracerl.algorithms.rloo.RLOO)


def test_a_run_config_names_ppo_and_its_options(tmp_path: Path) -> None:
    from tracerl.config import load_run_config
    from tracerl.train.cli import build_stages

    (tmp_path / "run.toml").write_text(
        """
agent = "tracerl.tasks.toy:digits_agent"
train_tasks = "demo-toy:train"

[[stages]]
algorithm = "ppo"
[stages.options]
model = "tiny-random"
critic = "model"
lam = 0.9
critic_warmup_steps = 3

[[stages]]
algorithm = "reinforce++"
[stages.options]
kl_coef = 0.01
"""
    )
    ppo, rpp = (s.algorithm for s in build_stages(load_run_config(tmp_path / "run.toml")))
    assert isinstance(ppo, PPO) and isinstance(rpp, REINFORCEpp)
    assert (ppo.config.critic, ppo.config.lam, ppo.config.critic_warmup_steps) == ("model", 0.9, 3)
    assert (rpp.model, rpp.config.kl_coef) == ("tiny-random", 0.01)


def test_a_run_config_serves_roles(tmp_path: Path) -> None:
    from tracerl.config import load_run_config

    head = 'agent = "tracerl.tasks.toy:digits_agent"\ntrain_tasks = "demo-toy:train"\n'
    algorithm = '[algorithm]\nmodel = "tiny-random"\ntrain_models = ["solver"]\n'
    (tmp_path / "run.toml").write_text(
        head + '[roles]\ntrained = ["solver"]\nfrozen = { planner = "smollm2-135m" }\n' + algorithm
    )
    run = load_run_config(tmp_path / "run.toml")
    assert run.roles == {"solver": None, "planner": "smollm2-135m"}
    assert run.stages[0].options["train_models"] == ["solver"]
    (tmp_path / "bad.toml").write_text(head + '[roles]\ntrained = ["solver"]\nfrozen = { solver = "x" }\n' + algorithm)
    with pytest.raises(ConfigError, match=r"role\(s\) \['solver'\] are both trained and frozen"):
        load_run_config(tmp_path / "bad.toml")
    (tmp_path / "empty.toml").write_text(head + "[roles]\ntrained = []\n" + algorithm)
    with pytest.raises(ConfigError, match="must list the role names to train"):
        load_run_config(tmp_path / "empty.toml")
