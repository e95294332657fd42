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
from tracerl.algorithms.config import (
    LoRAConfig,
    PolicyConfig,
    choice,
    int_at_least,
    model_names,
    number,
)
from tracerl.algorithms.weights import WeightsAlgorithm
from tracerl.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from tracerl.algorithms.learner import GRPOLearner
    from tracerl.algorithms.transitions import CreditBatch
    from tracerl.store.base import Store

__all__ = ["GRPO", "GRPOConfig", "LoRAConfig"]

_RETURNS = ("uniform", "discounted", "step")
_ADVANTAGES = ("grpo", "rloo", "batch")
_SCALES = ("std", "none")
_NORMS = ("rollout", "token")


@dataclass
class GRPOConfig(PolicyConfig):
    """Everything the GRPO algorithm needs (the model and optimizer fields are :class:`PolicyConfig`'s).

    * ``group_size``: rollouts per task; advantages compare rollouts of the same task.
    * ``epochs``: optimisation passes (one optimizer step each) over each batch of transitions.
    * ``clip_eps_low`` / ``clip_eps_high``: the PPO ratio is clipped to ``[1−low, 1+high]`` (DAPO raises
      ``high`` to 0.28 to let rare good tokens grow).
    * ``kl_coef``: β of the k3 KL penalty to the frozen initial policy (0: no reference model is kept).
    * ``returns`` (``uniform``/``discounted``/``step``), ``gamma``, ``advantage`` (``grpo``/``rloo``/
      ``batch``), ``scale`` (``std``/``none``), ``adv_eps``, ``loss_norm`` (``rollout``/``token``): credit
      assignment, see :mod:`tracerl.credit`.
    * ``max_staleness``: transitions sampled by weights more than this many updates old are dropped.
    * ``tis_cap``: truncated importance sampling. The engine that sampled a call (maybe in bf16, with other
      kernels) is not exactly the learner; each on-policy token's loss is weighted by
      ``min(π_learner(x) / π_sampler(x), tis_cap)`` so that gap cannot bias the update unseen. None: off
      (the gap is measured and logged either way: ``mismatch_*`` metrics).
    * ``train_models``: an agent with several roles names a model per role (:mod:`tracerl.gateway.routing`);
      only the calls answered by these model names are trained (None: every call). Credit is assigned over
      all of a rollout's calls first.
    """

    group_size: int = 4
    epochs: int = 1
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    kl_coef: float = 0.0
    returns: str = "uniform"
    gamma: float = 1.0
    advantage: str = "grpo"
    scale: str = "std"
    adv_eps: float = 1e-4
    loss_norm: str = "rollout"
    max_staleness: int = 1
    tis_cap: float | None = 2.0
    train_models: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        model_names("train_models", self.train_models)
        int_at_least("group_size", self.group_size, 1)
        int_at_least("epochs", self.epochs, 1)
        int_at_least("max_staleness", self.max_staleness, 0)
        if self.advantage in ("grpo", "rloo") and self.group_size < 2:
            raise ConfigError(
                f"advantage={self.advantage!r} compares rollouts of the same task, so group_size must be ≥ 2 "
                f"(got {self.group_size}); raise group_size to 4-8, or use advantage='batch'"
            )
        number("clip_eps_low", self.clip_eps_low, low=0.0, high=1.0, low_open=True, high_open=True)
        number("clip_eps_high", self.clip_eps_high, low=0.0, low_open=True)
        number("kl_coef", self.kl_coef, low=0.0)
        number("adv_eps", self.adv_eps, low=0.0)
        if self.tis_cap is not None:
            number("tis_cap", self.tis_cap, low=1.0)
        choice("returns", self.returns, _RETURNS)
        choice("advantage", self.advantage, _ADVANTAGES)
        choice("scale", self.scale, _SCALES)
        choice("loss_norm", self.loss_norm, _NORMS)
        number("gamma", self.gamma, low=0.0, high=1.0, low_open=True)
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
            store, rollout_ids, returns=c.returns, advantage=c.advantage, scale=c.scale,  # type: ignore[arg-type]
            gamma=c.gamma, eps=c.adv_eps, models=c.train_models,
        )

    def update(self, batch: CreditBatch) -> StepResult:
        """One PPO-clip update on the batch's transitions (see :class:`~tracerl.algorithms.learner.GRPOLearner`)."""
        return self.step_result(self._learner().update(batch.transitions))
