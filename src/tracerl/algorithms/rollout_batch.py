"""Finished rollouts → whole rollouts for the algorithms that estimate advantages in the learner (PPO's
critic, REINFORCE++'s KL-shaped token returns), not by group baselines at batch time.

    batch = rollouts_from_store(store, rollout_ids)     # pure function of the store's content
    batch.transitions        # every trainable call, the calls of a rollout consecutive and in call order
    batch.call_rewards       # (M,) r_t: intermediate rewards placed as credit assignment places them,
                             #      the final reward R added on each rollout's last call

The rollouts are read by :func:`tracerl.algorithms.transitions.read_trainable` (same rules: last attempt,
failed = R 0, cancelled or rewardless skipped; a constant number of store calls per step). Nothing is
skipped for zero group variance: a learned value (or the global normalisation of REINFORCE++) gives signal
without a group. ``informative_groups`` still
counts groups with reward variance, so dynamic sampling means the same thing for every algorithm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tracerl import credit
from tracerl.algorithms.estimators import step_rewards
from tracerl.algorithms.torch_types import floats
from tracerl.algorithms.transitions import (
    RolloutRecord,
    StepBatch,
    Transition,
    final_reward_stats,
    read_trainable,
    reward_placement,
)
from tracerl.store.base import Store


@dataclass(slots=True)
class RolloutBatch(StepBatch):
    """The trainable calls of a step's rollouts, in rollout then call order, with their per-call rewards."""

    call_rewards: list[float] = field(default_factory=list[float])  # (M,) r_t per transition
    #: the final reward R of each rollout with calls, and its group id (REINFORCE++'s group baseline)
    finals: dict[str, float] = field(default_factory=dict[str, float])


def rollouts_batch(records: Sequence[RolloutRecord], models: Sequence[str] | None = None) -> RolloutBatch:
    """:class:`RolloutBatch` of ``records`` (rollouts without trainable calls are counted as skipped).

    ``models``: keep only the calls answered by these model names (an agent with several roles, one trained).
    The rewards are placed over all calls first; a left-out call's ``r_t`` then moves to the latest kept
    call before it (the first kept call if none precedes it) — the rule of
    :func:`tracerl.credit.attach_rewards`, applied as if the other models' calls were part of the
    environment. A rollout with no kept call is skipped (``no_calls``).
    """
    skipped: dict[str, int] = {}
    reward_mean, reward_std = final_reward_stats(records)
    transitions: list[Transition] = []
    rewards: list[float] = []
    if models is not None:
        records = [_keep_models(r, models) for r in records]
    usable = [r for r in records if r.calls]
    if len(usable) < len(records):
        skipped["no_calls"] = len(records) - len(usable)
    for r in usable:
        calls = sorted(r.calls, key=lambda c: c.seq)
        r_t = step_rewards(*reward_placement(calls, r.rewards), r.final_reward)  # (T,)
        rewards += floats(r_t)
        transitions += [
            Transition(prompt_ids=c.prompt_ids, response_ids=c.response_ids, logprobs=c.logprobs, advantage=0.0,
                       rollout_id=r.rollout_id, weights_version=c.weights_version, group_id=r.group_id,
                       call_index=t, ret=float(r_t[t]), model=c.model)
            for t, c in enumerate(calls)
        ]  # fmt: skip
    groups: dict[str, list[float]] = {}
    for r in usable:
        groups.setdefault(r.group_id, []).append(r.final_reward)
    flat = sum(
        1 for v in groups.values() if float(torch.tensor(v).std(correction=0)) <= credit.ZERO_VARIANCE_TOL
    )
    return RolloutBatch(
        transitions=transitions, call_rewards=rewards, rollouts=len(records), groups=len(groups),
        zero_variance_groups=flat, reward_mean=reward_mean, reward_std=reward_std,
        finals={r.rollout_id: r.final_reward for r in usable}, skipped_rollouts=skipped,
    )  # fmt: skip


def _keep_models(record: RolloutRecord, models: Sequence[str]) -> RolloutRecord:
    """``record`` with only the calls of ``models``; the others' rewards re-placed (see :func:`rollouts_batch`)."""
    calls = sorted(record.calls, key=lambda c: c.seq)
    kept = [c for c in calls if c.model in models]
    if not kept:
        return RolloutRecord(record.rollout_id, record.group_id, record.final_reward, [], [])
    # (T,) the intermediate rewards per call, over all calls
    r_t = floats(credit.attach_rewards(*reward_placement(calls, record.rewards)))
    rewards: list[tuple[int, float]] = []
    for c, r in zip(calls, r_t, strict=True):
        if r:
            target = max((k.seq for k in kept if k.seq <= c.seq), default=kept[0].seq)
            rewards.append((target + 1, r))  # just after the kept call: attach_rewards puts it there
    return RolloutRecord(record.rollout_id, record.group_id, record.final_reward, kept, rewards)


def rollouts_from_store(store: Store, rollout_ids: Sequence[str], models: Sequence[str] | None = None) -> RolloutBatch:
    """Read the rollouts from ``store`` (any backend) and build their :class:`RolloutBatch`."""
    records, skipped = read_trainable(store, rollout_ids)
    batch = rollouts_batch(records, models)
    batch.add_read(records, skipped)
    return batch
