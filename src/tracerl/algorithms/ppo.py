"""PPO with a learned critic (``tracerl.PPO(...)``) and REINFORCE++ (``tracerl.REINFORCEpp(...)``): the
validated configs and the :class:`~tracerl.algorithms.base.Algorithm` objects the Trainer drives.

    algorithm = tracerl.PPO(model="smollm2-135m", group_size=4, lr=1e-5, gamma=1.0, lam=0.95)
    algorithm = tracerl.PPO(model="smollm2-135m", critic="model", critic_model="tiny-random")
    algorithm = tracerl.REINFORCEpp(model="smollm2-135m", group_size=4, kl_coef=0.01)

PPO, per call t of a rollout (values at each call's last prompt token, rewards placed as credit assignment
places them, final reward on the last call; :mod:`tracerl.algorithms.estimators`)::

    δ_t = r_t + γ·V_{t+1} − V_t,   A_t = Σ_k (γλ)^k δ_{t+k},   G_t = A_t + V_t      (GAE; V_{T+1} = 0)
    L   = mean_rollouts mean_tokens( −min(ρ·Â, clip(ρ, 1−ε_low, 1+ε_high)·Â) )
          + vf_coef · mean_rollouts mean_calls( ½·max((V − G)², (V_old + clip(V − V_old, ±c) − G)²) )

with ``Â`` the advantages whitened over the batch. For the first ``critic_warmup_steps`` updates only the
critic learns (the policy and the served weights stay as they are), so the policy is never pushed by the
advantages of an untrained critic.

REINFORCE++ (Hu, 2025): no critic; per token ``r_j = R·1[j last] − β·(log π_old − log π_ref)`` (each
call's reward on its last token), ``G_j = Σ_{k≥j} γ^(k−j) r_k`` over the rollout's tokens, then
``Â = (G − mean_batch G) / std_batch G`` over every response token of the batch, and the clipped surrogate
above. ``baseline="group"`` (REINFORCE++-baseline) first subtracts the group's mean final reward from R.

Both train with :mod:`tracerl.algorithms.ppo_learner`; this module stays light to import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from tracerl.algorithms.base import JSON, StepResult
from tracerl.algorithms.config import ClipConfig, choice, int_at_least, number
from tracerl.algorithms.weights import WeightsAlgorithm
from tracerl.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from tracerl.algorithms.ppo_learner import ReturnsLearner
    from tracerl.algorithms.rollout_batch import RolloutBatch
    from tracerl.store.base import Store

__all__ = ["PPO", "PPOConfig", "REINFORCEpp", "REINFORCEppConfig"]


ConfigT = TypeVar("ConfigT", bound=ClipConfig)


@dataclass
class PPOConfig(ClipConfig):
    """PPO with a learned critic (model/optimizer fields: :class:`~tracerl.algorithms.config.PolicyConfig`;
    clip/KL/staleness fields: :class:`~tracerl.algorithms.config.ClipConfig`).

    * ``group_size``: rollouts per task (1 is fine: the critic is the baseline).
    * ``epochs``: optimisation passes over each batch (one optimizer step each).
    * ``gamma``, ``lam``: GAE's discount and λ across the calls of a rollout.
    * ``critic``: ``"head"`` (a value head on the policy) or ``"model"`` (a separate critic model);
      ``critic_model``: its name or folder (same tokenizer as the policy; None: a copy of the policy).
    * ``critic_lr``: the critic's AdamW learning rate; ``vf_coef``: weight of the value loss.
    * ``value_clip``: c of the clipped value loss (None: unclipped).
    * ``critic_warmup_steps``: first updates that train only the critic.
    * ``whiten_advantages``: normalise the batch's advantages to mean 0, std 1.
    * ``train_models``: train only the calls answered by these model names (an agent with several roles;
      the other calls' rewards move to the kept call before them, see
      :func:`~tracerl.algorithms.rollout_batch.rollouts_batch`). None: every call.
    """

    epochs: int = 2
    lam: float = 0.95
    critic: str = "head"
    critic_model: str | None = None
    critic_lr: float = 1e-4
    vf_coef: float = 0.5
    value_clip: float | None = 0.2
    critic_warmup_steps: int = 0
    whiten_advantages: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        number("lam", self.lam, low=0.0, high=1.0)
        choice("critic", self.critic, ("head", "model"))
        if self.critic == "head" and self.critic_model is not None:
            raise ConfigError(
                f"critic_model={self.critic_model!r} is only used with critic='model' (a separate critic); "
                "set critic='model' or drop critic_model"
            )
        number("critic_lr", self.critic_lr, low=0.0, high=1.0, low_open=True)
        number("vf_coef", self.vf_coef, low=0.0, low_open=True)
        if self.value_clip is not None:
            number("value_clip", self.value_clip, low=0.0, low_open=True)
        int_at_least("critic_warmup_steps", self.critic_warmup_steps, 0)


@dataclass
class REINFORCEppConfig(ClipConfig):
    """REINFORCE++ (fields as :class:`PPOConfig`'s, without a critic).

    * ``kl_coef``: β of the KL penalty *in the reward* (token level, k1), not in the loss.
    * ``baseline``: ``"none"`` (REINFORCE++) or ``"group"`` (REINFORCE++-baseline: R minus its group's mean).
    * ``adv_eps``: added to the batch standard deviation of the returns.
    """

    baseline: str = "none"
    adv_eps: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        choice("baseline", self.baseline, ("none", "group"))
        number("adv_eps", self.adv_eps, low=0.0)
        if self.baseline == "group" and self.group_size < 2:
            raise ConfigError(
                f"baseline='group' subtracts the mean reward of the task's group, so group_size must be ≥ 2 "
                f"(got {self.group_size}); raise group_size or use baseline='none'"
            )


class _ReturnsAlgorithm(WeightsAlgorithm[ConfigT, "ReturnsLearner[Any]"]):
    """The Algorithm protocol for PPO and REINFORCE++ (they differ in config and learner only)."""

    def build_learner(self, model: nn.Module, pad_id: int) -> ReturnsLearner[Any]:
        from tracerl.algorithms import ppo_learner

        return ppo_learner.build(model, self.config, pad_id=pad_id)

    def make_batch(self, store: Store, items: Sequence[JSON], rollout_ids: Sequence[str]) -> RolloutBatch:
        """Whole rollouts with per-call rewards; advantages come in :meth:`update` (they need the model)."""
        from tracerl.algorithms.rollout_batch import rollouts_from_store

        return rollouts_from_store(store, rollout_ids, self.config.train_models)

    def update(self, batch: RolloutBatch) -> StepResult:
        return self.step_result(self._learner().update(batch))


class PPO(_ReturnsAlgorithm[PPOConfig]):
    """PPO with a learned critic: ``tracerl.PPO(model=..., group_size=..., lr=..., **options)``; the options
    are the fields of :class:`PPOConfig`."""

    name = "ppo"
    config_class = PPOConfig


class REINFORCEpp(_ReturnsAlgorithm[REINFORCEppConfig]):
    """REINFORCE++: ``tracerl.REINFORCEpp(model=..., group_size=..., lr=..., kl_coef=..., **options)``; the
    options are the fields of :class:`REINFORCEppConfig`."""

    name = "reinforce++"
    config_class = REINFORCEppConfig
