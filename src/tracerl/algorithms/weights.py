"""What every algorithm that trains a model's weights (GRPO, RLOO, PPO, REINFORCE++, SFT) shares: its
validated config, the learner it builds on the Trainer's model, and the
:class:`~tracerl.algorithms.base.Algorithm` plumbing around that learner (properties, engine weights,
checkpoints).

    class GRPO(WeightsAlgorithm[GRPOConfig, GRPOLearner]):
        config_class = GRPOConfig
        def build_learner(self, model, pad_id): return GRPOLearner(model, self.config, pad_id=pad_id)
        def make_batch(self, store, items, rollout_ids): ...       # credit assignment
        def update(self, batch): return self.learn(batch.transitions)

Building one is cheap and imports no torch: the learner (and torch) load in :meth:`WeightsAlgorithm.setup`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from tracerl.algorithms.base import JSON, StepResult
from tracerl.algorithms.config import PolicyConfig, build_config
from tracerl.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from tracerl.algorithms.learner import UpdateResult
    from tracerl.algorithms.policy import Policy

__all__ = ["WeightsAlgorithm"]

ConfigT = TypeVar("ConfigT", bound=PolicyConfig)
LearnerT = TypeVar("LearnerT", bound="Policy")


class WeightsAlgorithm(Generic[ConfigT, LearnerT]):
    """``Algorithm(model, **options)``: ``options`` are the fields of :attr:`config_class` (unknown names are
    refused with the known ones). A subclass says which config, how to build its learner, how to make a
    batch and what of it the learner trains on."""

    name = ""
    #: the config this algorithm validates its options with
    config_class: type[ConfigT]

    def __init__(self, model: str = "smollm2-135m", **options: Any) -> None:
        self.config: ConfigT = build_config(self.config_class, type(self).__name__, model=model, **options)
        self.learner: LearnerT | None = None
        #: the tokenizer of the model the learner trains (set by :meth:`setup`)
        self.tokenizer: Any = None
        #: the temperature the rollouts are sampled at (the Trainer sets it): the learner scores the policy at
        #: it unless the config names its own ``temperature``
        self.sampling_temperature = 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    # -- what a subclass provides ----------------------------------------------------------------
    def build_learner(self, model: nn.Module, pad_id: int) -> LearnerT:
        """The learner for :attr:`config` on ``model`` (torch is imported here, not at module import)."""
        raise NotImplementedError

    # -- the Algorithm protocol ------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.config.model

    @property
    def group_size(self) -> int:
        return int(getattr(self.config, "group_size", 0))

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def device(self) -> str:
        return str(self._learner().device)

    @property
    def weights_version(self) -> int:
        return self.learner.weights_version if self.learner is not None else 0

    def to_json(self) -> JSON:
        return {"name": self.name, **self.config.to_json()}

    def setup(self, model: Any = None, tokenizer: Any = None) -> LearnerT:
        """Build the learner on ``model`` (a transformers causal LM), or load ``config.model`` if None."""
        if model is None:
            from tracerl.engines.models import load_model

            model, tokenizer = load_model(self.config.model)
        self.tokenizer = tokenizer
        pad_id = getattr(tokenizer, "pad_token_id", None)
        self.learner = self.build_learner(model, int(pad_id) if pad_id is not None else 0)
        self.learner.sampling_temperature = self.sampling_temperature
        return self.learner

    def items(self, train_tasks: Sequence[JSON]) -> list[JSON]:
        return list(train_tasks)

    def engine_weights(self) -> dict[str, Tensor] | None:
        return self._learner().engine_state_dict()

    def save(self, folder: str | Path) -> None:
        if self.learner is None:
            raise ConfigError("nothing to save yet: call setup() before save()")
        self.learner.save_checkpoint(folder)

    def load(self, folder: str | Path) -> None:
        self._learner().load_checkpoint(folder)

    # -- helpers ---------------------------------------------------------------------------------
    def _learner(self) -> LearnerT:
        return self.learner if self.learner is not None else self.setup()

    @staticmethod
    def step_result(result: UpdateResult) -> StepResult:
        """The learner's :class:`~tracerl.algorithms.learner.UpdateResult` as the Trainer's :class:`StepResult`."""
        return StepResult(result.metrics, result.version, result.state_dict)
