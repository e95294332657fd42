"""RLOO (REINFORCE leave-one-out, Ahmadian et al., 2024) as a named algorithm: ``tracerl.RLOO(...)``.

Each rollout's baseline is the mean final reward of the *other* rollouts of its task's group, with no
division by the group's standard deviation::

    A_i = R_i − (Σ_{j∈g(i)} R_j − R_i) / (n_g − 1)        (= n_g/(n_g−1) · (R_i − mean_g R))

broadcast to every token of the rollout's calls (with ``returns='discounted'``/``'step'`` each call's own
return replaces ``R_i`` while the baseline stays the rollout-level one; see :mod:`tracerl.credit`), and the
same clipped-surrogate learner as GRPO. It is GRPO with ``advantage='rloo'`` and ``scale='none'`` fixed:
the baseline is unbiased (a rollout never baselines against itself) and the update is not rescaled per
group, so a nearly-solved task is not amplified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tracerl.algorithms.grpo import GRPO, GRPOConfig
from tracerl.errors import ConfigError

if TYPE_CHECKING:
    from tracerl.credit import AdvantageMode, ScaleMode

__all__ = ["RLOO", "RLOOConfig"]


@dataclass
class RLOOConfig(GRPOConfig):
    """:class:`~tracerl.algorithms.grpo.GRPOConfig` with the leave-one-out baseline and no std scaling."""

    advantage: AdvantageMode = "rloo"
    scale: ScaleMode = "none"

    def __post_init__(self) -> None:
        if self.advantage != "rloo":
            raise ConfigError(
                f"RLOO uses the leave-one-out baseline (advantage='rloo'), got advantage={self.advantage!r}; "
                "use tracerl.GRPO(advantage=...) for another baseline"
            )
        super().__post_init__()


class RLOO(GRPO):
    """``tracerl.RLOO(model=..., group_size=..., lr=..., **options)``; the options are :class:`RLOOConfig`'s."""

    name = "rloo"
    config_class = RLOOConfig
