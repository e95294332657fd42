"""Learning-rate schedules: the rate of each update on hand-computed numbers, the learner really steps at it
(an update at rate 0 leaves the weights as they were), a resumed learner continues the schedule, and the
config refuses a decay it cannot place."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_sft import EXAMPLES, config, micro_llama

import tracerl
from tracerl.algorithms.config import scheduled_lr
from tracerl.algorithms.sft import SFTExample
from tracerl.algorithms.sft_learner import SFTLearner
from tracerl.errors import ConfigError


def test_schedules_on_hand_computed_numbers() -> None:
    # warmup 2, decay ends at update 6: the decay spans updates 2..6, p = (s - 2) / 4
    lr = 1e-4
    def at(s: int, schedule: str, r: float = 0.0) -> float:
        return scheduled_lr(lr, s, schedule, warmup_steps=2, decay_steps=6, min_ratio=r)

    assert [at(s, "constant") for s in range(8)] == pytest.approx([5e-5] + [1e-4] * 7)
    assert [at(s, "linear") for s in range(8)] == pytest.approx([5e-5, 1e-4, 1e-4, 7.5e-5, 5e-5, 2.5e-5, 0, 0])
    # cosine at p = 1/4: (1 + cos(π/4)) / 2 = 0.853553…
    assert at(3, "cosine") == pytest.approx(1e-4 * (1 + math.cos(math.pi / 4)) / 2)
    assert at(3, "cosine") == pytest.approx(8.53553e-5, rel=1e-5)
    assert [at(s, "cosine") for s in (2, 4, 6, 9)] == pytest.approx([1e-4, 5e-5, 0, 0], abs=1e-12)
    # a floor of 0.1: linear at p = 1/2 is 0.1 + 0.9 · 0.5 = 0.55 of lr, and 0.1 of lr from update 6 on
    assert [at(s, "linear", 0.1) for s in (4, 6, 20)] == pytest.approx([5.5e-5, 1e-5, 1e-5])
    assert scheduled_lr(lr, 0, "linear", decay_steps=4) == lr  # no warmup: the first update at the full rate


def test_the_learner_steps_at_the_scheduled_rate_and_a_resumed_one_continues(tmp_path: Path) -> None:
    sched = {"lr_schedule": "linear", "warmup_steps": 1, "lr_decay_steps": 3}
    learner = SFTLearner(micro_llama(), config(**sched))
    rates = [learner.update(EXAMPLES).metrics["lr"] for _ in range(3)]
    assert rates == pytest.approx([1e-2, 1e-2, 5e-3])
    learner.save_checkpoint(tmp_path)

    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    assert learner.update(EXAMPLES).metrics["lr"] == 0.0  # update 3: the decay has reached lr · 0
    after = learner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # rate 0: the weights did not move

    resumed = SFTLearner(micro_llama(), config(**sched))
    resumed.load_checkpoint(tmp_path)
    assert resumed.update(EXAMPLES).metrics["lr"] == 0.0  # continues at update 3, not from the warmup
    constant = SFTLearner(micro_llama(), config())
    assert [constant.update(EXAMPLES).metrics["lr"] for _ in range(2)] == [1e-2, 1e-2]


def test_a_warmup_moves_the_weights_less_at_first() -> None:
    step = [SFTExample([3, 4, 5], [6, 7, 2])]
    moved = []
    for warmup in (0, 10):
        learner = SFTLearner(micro_llama(), config(warmup_steps=warmup, lr=1e-3))
        start = torch.cat([p.detach().flatten().clone() for p in learner.params])
        learner.update(step)
        moved.append(float((torch.cat([p.detach().flatten() for p in learner.params]) - start).abs().max()))
    # Adam's first step moves each weight by about lr: 1e-3 without warmup, 1e-4 at 1/10 of the rate
    assert moved[0] == pytest.approx(1e-3, rel=0.05) and moved[1] == pytest.approx(1e-4, rel=0.05)


def test_the_config_refuses_a_decay_it_cannot_place() -> None:
    with pytest.raises(ConfigError, match=r"lr_schedule = 'linear' decays .* set lr_decay_steps"):
        tracerl.GRPO(model="tiny-random", lr_schedule="linear")
    with pytest.raises(ConfigError, match="lr_decay_steps = 5 must be larger than warmup_steps = 5"):
        tracerl.GRPO(model="tiny-random", lr_schedule="cosine", warmup_steps=5, lr_decay_steps=5)
    with pytest.raises(ConfigError, match="lr_schedule = 'step' is not one of"):
        tracerl.GRPO(model="tiny-random", lr_schedule="step")
    with pytest.raises(ConfigError, match="lr_min_ratio must be in"):
        config(lr_schedule="linear", lr_decay_steps=10, lr_min_ratio=1.5)
    assert tracerl.PPO(model="tiny-random", lr_schedule="cosine", lr_decay_steps=40).config.lr_decay_steps == 40
