"""GRPO: the configuration users write (``tracerl.GRPO(...)``) and the :class:`Algorithm` the Trainer drives.

    algorithm = tracerl.GRPO(model="smollm2-135m", group_size=4, lr=1e-5, lora=None)
    algorithm.setup(model, tokenizer)
    batch = algorithm.make_batch(store, tasks, finished_rollout_ids)   # credit assignment
    result = algorithm.update(batch)                                    # one PPO-clip update
    engine.load_weights(result.weights, result.weights_version)        # serve the new weights

The per-token objective, averaged per rollout then over rollouts (see :mod:`tracerl.credit`)::

    L = − mean_rollouts( mean_tokens( w_IS · min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A) ) ) + β · KL_k3(πθ ‖ π_ref)
    ρ = exp(log πθ − log π_old),   w_IS = min(π_old / π_sampler, C)   (truncated importance sampling)

The learning itself lives in :mod:`tracerl.algorithms.learner`; this module holds the validated config and
stays light to import (torch loads in :meth:`GRPO.setup`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tracerl.algorithms.base import JSON, StepResult
from tracerl.algorithms.config import ClipConfig, LoRAConfig, choice, number
from tracerl.algorithms.weights import WeightsAlgorithm
from tracerl.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from tracerl.algorithms.learner import GRPOLearner
    from tracerl.algorithms.transitions import CreditBatch
    from tracerl.credit import AdvantageMode, ReturnsMode, ScaleMode
    from tracerl.store.base import Store

__all__ = ["GRPO", "GRPOConfig", "LoRAConfig"]

_RETURNS = ("uniform", "discounted", "step", "total")  # credit.RETURNS_MODES, without importing torch
_ADVANTAGES = ("grpo", "rloo", "batch")
_SCALES = ("std", "none")


@dataclass
class GRPOConfig(ClipConfig):
    """Everything the GRPO algorithm needs: model and optimizer fields are
    :class:`~tracerl.algorithms.config.PolicyConfig`'s; group size, epochs, clipping, KL, staleness, truncated
    importance sampling and ``train_models`` are :class:`~tracerl.algorithms.config.ClipConfig`'s.

    * ``returns`` (``uniform``/``discounted``/``step``/``total``), ``gamma``, ``advantage`` (``grpo``/``rloo``/
      ``batch``), ``scale`` (``std``/``none``), ``adv_eps``, ``loss_norm`` (``rollout``/``token``): credit
      assignment, see :mod:`tracerl.credit`.
    * ``kl_coef``: β of the k3 KL penalty to the frozen initial policy (0: no reference model is kept).
    """

    returns: ReturnsMode = "uniform"
    advantage: AdvantageMode = "grpo"
    scale: ScaleMode = "std"
    adv_eps: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.advantage in ("grpo", "rloo") and self.group_size < 2:
            raise ConfigError(
                f"advantage={self.advantage!r} compares rollouts of the same task, so group_size must be ≥ 2 "
                f"(got {self.group_size}); raise group_size to 4-8, or use advantage='batch'"
            )
        number("adv_eps", self.adv_eps, low=0.0)
        choice("returns", self.returns, _RETURNS)
        choice("advantage", self.advantage, _ADVANTAGES)
        choice("scale", self.scale, _SCALES)
        if self.returns == "uniform" and self.gamma != 1.0:
            raise ConfigError(
                f"gamma = {self.gamma} has no effect with returns='uniform' (every call gets the final reward); "
                "use returns='discounted' or 'step', or leave gamma at 1.0"
            )


class GRPO(WeightsAlgorithm[GRPOConfig, "GRPOLearner"]):
    """The GRPO algorithm: ``tracerl.GRPO(model=..., group_size=..., lr=..., lora=None, **options)``.

    ``options`` are the other fields of :class:`GRPOConfig`. Building a GRPO object is cheap and never
    imports torch; :meth:`setup` builds the learner on the model the Trainer loaded.
    """

    name = "grpo"
    #: the config this algorithm validates its options with (RLOO narrows it)
    config_class: type[GRPOConfig] = GRPOConfig

    def build_learner(self, model: nn.Module, pad_id: int) -> GRPOLearner:
        from tracerl.algorithms.learner import GRPOLearner

        return GRPOLearner(model, self.config, pad_id=pad_id)

    def make_batch(self, store: Store, items: Sequence[JSON], rollout_ids: Sequence[str]) -> CreditBatch:
        """Credit assignment on finished rollouts with this config's returns/advantage settings."""
        from tracerl.algorithms.transitions import transitions_from_store

        c = self.config
        return transitions_from_store(
            store, rollout_ids, returns=c.returns, advantage=c.advantage, scale=c.scale,
            gamma=c.gamma, eps=c.adv_eps, models=c.train_models,
        )

    def update(self, batch: CreditBatch) -> StepResult:
        """One PPO-clip update on the batch's transitions (see :class:`~tracerl.algorithms.learner.GRPOLearner`)."""
        return self.step_result(self._learner().update(batch.transitions))
