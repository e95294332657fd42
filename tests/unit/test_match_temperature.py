"""The Trainer lets an RL algorithm score its policy at the temperature the rollouts are sampled at."""

from __future__ import annotations

import pytest

from tracerl import GRPO, SFT
from tracerl.config import TrainerConfig
from tracerl.errors import ConfigError
from tracerl.train.roles import RoleModels
from tracerl.train.trainer import match_temperature


def test_an_unset_temperature_takes_the_sampling_one() -> None:
    algo = GRPO("tiny-random", lr=1e-5)
    match_temperature(algo, TrainerConfig(temperature=1.5), 0)
    assert algo.sampling_temperature == 1.5 and algo.config.temperature is None  # the user's config unchanged
    assert algo.setup().temperature == 1.5  # the learner scores at it
    match_temperature(algo, TrainerConfig(), 0)  # a later run at temperature 1 sets the learner up again
    assert algo.setup().temperature == 1.0


def test_every_role_of_several_trained_models_takes_it() -> None:
    roles = RoleModels({"solver": GRPO("tiny-random"), "critic": GRPO("tiny-random", temperature=0.7)})
    with pytest.raises(ConfigError, match=r"stage 2: GRPO\(temperature=0.7\).*samples at 1.5"):
        match_temperature(roles, TrainerConfig(temperature=1.5), 1)
    match_temperature(roles, TrainerConfig(temperature=0.7), 0)
    assert [a.sampling_temperature for a in roles.algorithms.values()] == [0.7, 0.7]  # type: ignore[attr-defined]


def test_an_explicit_other_temperature_and_async_updates_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"GRPO\(temperature=2.0\).*samples at 1.0.*leave the algorithm"):
        match_temperature(GRPO("tiny-random", temperature=2.0), TrainerConfig(), 0)
    with pytest.raises(ConfigError, match=r"async_updates.*temperature 1.*async_updates=False"):
        match_temperature(GRPO("tiny-random"), TrainerConfig(temperature=1.3, async_updates=True), 0)
    match_temperature(SFT("tiny-random", demonstrations=[]), TrainerConfig(temperature=1.3), 0)  # not an RL stage
