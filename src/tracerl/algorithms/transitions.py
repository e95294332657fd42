"""Finished rollouts → training transitions with advantages (credit assignment applied).

A :class:`Transition` is one recorded LLM call ready for the learner: the exact prompt and response token
ids, the log-probs recorded when it was sampled, the weights version that sampled it, and its advantage.
It does not know the store: :func:`assign_credit` works on plain :class:`RolloutRecord` values, and
:func:`transitions_from_store` is the thin reader that builds those records from any store backend::

    batch = transitions_from_store(store, rollout_ids, returns="uniform", advantage="grpo")
    learner.update(batch.transitions)

What is read from the store (one :meth:`~tracerl.store.base.Store.get_traces` call for a whole step), for
each rollout only its final attempt (the one that succeeded, else the last: spans of failed earlier attempts
are not part of the final result):

* ``llm_call`` spans in store order (``position``: assigned by the store as spans arrive, by no clock):
  ``prompt_ids``, ``response_ids``, ``logprobs`` and ``attributes["weights_version"]`` (and
  ``prefix_reused``: calls where it is false, the agent having changed a turn the model wrote, are counted
  as the ``rerendered_calls`` metric); calls without response ids are not trainable and are left out.
* ``reward`` spans: ``attributes["value"]`` at their ``position``. The one named ``final`` (the runner's record
  of the agent's return value) *is* the final reward, not an intermediate one.
* the final reward R: ``Rollout.reward``; if it is None, the last reward span's value (an agent that emits
  its reward instead of returning it). A rollout that ``failed`` (crash, timeout, out of attempts) counts as
  R = 0 — its calls produced a failure; a rollout that was cancelled, or has no reward at all, is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

import torch
from torch import Tensor

from tracerl import credit
from tracerl.algorithms.torch_types import floats
from tracerl.errors import ServerError
from tracerl.store.base import MAX_QUERY_LIMIT, Store
from tracerl.types import RolloutStatus, RolloutTrace, Span, SpanKind

logger = logging.getLogger(__name__)

FINAL_REWARD_NAME = "final"


@dataclass(slots=True)
class Transition:
    """One LLM call to train on. ``logprobs[i] = log π_old(response_ids[i] | prompt, response[:i])``."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    advantage: float
    rollout_id: str
    #: multiplies this call's token losses (0 keeps the call in the rollout's normalisation but untrained)
    weight: float = 1.0
    #: the weights version that sampled it (None: unknown, treated as stale: recorded log-probs are used)
    weights_version: int | None = None
    group_id: str = ""
    call_index: int = 0
    #: the per-call return G_t the advantage came from
    ret: float = 0.0
    #: the model name that answered the call (an agent with several roles names one per role)
    model: str | None = None


@dataclass(slots=True)
class LLMCallRecord:
    #: the call's place among its attempt's spans (the store's ``position``); rewards are placed against it
    seq: int
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    weights_version: int | None = None
    #: the gateway's ``prefix_reused`` (False: the agent changed a turn the model wrote, so this prompt
    #: re-renders it and does not extend the previous call; None: nothing to reuse)
    prefix_reused: bool | None = None
    #: the model that answered (the gateway's ``attributes["model"]``)
    model: str | None = None


@dataclass(slots=True)
class RolloutRecord:
    """What credit assignment needs of one finished rollout, independent of where it was stored."""

    rollout_id: str
    group_id: str
    final_reward: float
    calls: list[LLMCallRecord]
    #: intermediate rewards as (seq, value); the final reward is not among them
    rewards: list[tuple[int, float]] = field(default_factory=list[tuple[int, float]])


@dataclass(slots=True)
class StepBatch:
    """The trainable calls of a step's rollouts and what reading them found: what every RL batch reports."""

    transitions: list[Transition]
    rollouts: int  # rollouts considered
    groups: int
    zero_variance_groups: int
    skipped_rollouts: dict[str, int]  # reason -> count
    reward_mean: float
    reward_std: float
    #: response tokens of every llm call of the rollouts read (trainable or not: generation throughput)
    response_tokens: int = 0
    #: mean −log p of those tokens under the sampler: an entropy estimate, −(1/N) Σ log p(y_t). Near 0 the
    #: samples of a group come out the same, so their rewards too: no signal for group baselines
    sampled_nll: float = 0.0

    @property
    def informative_groups(self) -> int:
        """Groups whose rollouts carry signal (reward variance > 0)."""
        return self.groups - self.zero_variance_groups

    def metrics(self) -> dict[str, float]:
        return self._metrics({})

    def _metrics(self, extra: dict[str, float]) -> dict[str, float]:
        return {
            "reward_mean": self.reward_mean,
            "reward_std": self.reward_std,
            "rollouts": float(self.rollouts),
            "groups": float(self.groups),
            "zero_variance_groups": float(self.zero_variance_groups),
            "transitions": float(len(self.transitions)),
            "sampled_nll": self.sampled_nll,
            **extra,
            **{f"skipped_{k}": float(v) for k, v in self.skipped_rollouts.items()},
        }

    def add_read(self, records: Sequence[RolloutRecord], skipped: dict[str, int]) -> None:
        """Count what reading the store found besides the records: the response tokens of all their calls,
        and the rollouts left out before credit assignment (``skipped``: reason → count)."""
        tokens, scored, logp_sum = 0, 0, 0.0
        for c in (c for r in records for c in r.calls):  # one pass over the calls read
            tokens += len(c.response_ids)
            scored += len(c.logprobs)
            logp_sum += sum(c.logprobs)
        self.response_tokens = tokens
        self.sampled_nll = -logp_sum / scored if scored else 0.0
        for reason, n in skipped.items():
            self.skipped_rollouts[reason] = self.skipped_rollouts.get(reason, 0) + n


@dataclass(slots=True)
class CreditBatch(StepBatch):
    """Transitions (with advantages) of the rollouts that carry signal, plus what was left out and why."""

    #: llm calls of the rollouts read whose agent changed a turn the model wrote (``prefix_reused`` false)
    rerendered_calls: int = 0

    def metrics(self) -> dict[str, float]:
        return self._metrics({"rerendered_calls": float(self.rerendered_calls)})


def reward_placement(
    calls: Sequence[LLMCallRecord], rewards: Sequence[tuple[int, float]]
) -> tuple[Tensor, Tensor, Tensor]:
    """``(call positions (T,), reward positions (K,), reward values (K,))`` of one rollout's calls (in call
    order) and intermediate rewards: the arguments :func:`tracerl.credit.attach_rewards` places rewards with."""
    return (
        torch.tensor([c.seq for c in calls], dtype=torch.int64),
        torch.tensor([p for p, _ in rewards], dtype=torch.int64),
        torch.tensor([v for _, v in rewards], dtype=torch.float64),
    )


def final_reward_stats(records: Sequence[RolloutRecord]) -> tuple[float, float]:
    """Mean and (population) standard deviation of the records' final rewards; 0 and 0 for none."""
    finals = torch.tensor([r.final_reward for r in records], dtype=torch.float64)
    if not finals.numel():
        return 0.0, 0.0
    return float(finals.mean()), float(finals.std(correction=0))


def assign_credit(
    records: Sequence[RolloutRecord],
    *,
    returns: credit.ReturnsMode = "uniform",
    advantage: credit.AdvantageMode = "grpo",
    scale: credit.ScaleMode = "std",
    gamma: float = 1.0,
    eps: float = 1e-4,
    models: Sequence[str] | None = None,
) -> CreditBatch:
    """Per-call returns, group advantages and the zero-variance skip (see :mod:`tracerl.credit`).

    Each rollout's score is its first call's return ``s_i = G_{i,1}``; groups are the rollouts sharing a
    ``group_id``. Rollouts of skipped groups produce no transitions. ``models``: only calls answered by
    these model names become transitions (an agent with several roles, one model trained); credit is
    still assigned over all of a rollout's calls, so a call's return is the same whichever model is trained.
    """
    skipped: dict[str, int] = {}
    usable = [r for r in records if r.calls]
    if len(usable) < len(records):
        skipped["no_calls"] = len(records) - len(usable)
    reward_mean, reward_std = final_reward_stats(records)
    if not usable:
        return CreditBatch([], len(records), 0, 0, skipped, reward_mean, reward_std)

    per_rollout_returns: list[torch.Tensor] = []
    sorted_calls: list[list[LLMCallRecord]] = []
    for r in usable:
        calls = sorted(r.calls, key=lambda c: c.seq)
        sorted_calls.append(calls)
        step_rewards = credit.attach_rewards(*reward_placement(calls, r.rewards))  # (T,)
        per_rollout_returns.append(credit.call_returns(step_rewards, r.final_reward, mode=returns, gamma=gamma))

    group_names = {g: i for i, g in enumerate(dict.fromkeys(r.group_id for r in usable))}
    group_index = torch.tensor([group_names[r.group_id] for r in usable], dtype=torch.int64)  # (N,)
    scores = torch.stack([g[0] for g in per_rollout_returns])  # (N,)
    stats = credit.group_baselines(scores, group_index, method=advantage, scale=scale, eps=eps)
    all_returns = torch.cat(per_rollout_returns)  # (M,)
    rollout_of_call = torch.cat(
        [torch.full((len(g),), i, dtype=torch.int64) for i, g in enumerate(per_rollout_returns)]
    )  # (M,)
    advantages = floats(credit.call_advantages(all_returns, rollout_of_call, stats))  # (M,)

    out: list[Transition] = []
    m = 0
    for i, r in enumerate(usable):
        keep = bool(stats.keep[i])
        for t, c in enumerate(sorted_calls[i]):
            if keep and (models is None or c.model in models):
                out.append(
                    Transition(
                        prompt_ids=c.prompt_ids,
                        response_ids=c.response_ids,
                        logprobs=c.logprobs,
                        advantage=advantages[m],
                        rollout_id=r.rollout_id,
                        weights_version=c.weights_version,
                        group_id=r.group_id,
                        call_index=t,
                        ret=float(all_returns[m]),
                        model=c.model,
                    )
                )
            m += 1
    dropped = int((~stats.keep).sum())
    if dropped:
        skipped["zero_variance"] = dropped
    logger.debug("credit: %d rollouts → %d transitions, %d zero-variance groups", len(records), len(out),
                 stats.zero_variance_groups)
    return CreditBatch(out, len(records), stats.groups, stats.zero_variance_groups, skipped, reward_mean, reward_std)


def read_rollout(store: Store, rollout_id: str) -> RolloutRecord | str:
    """One rollout's record from the store, or the reason it cannot be trained on."""
    [trace] = store.get_traces([rollout_id])
    return record_from_trace(trace)


def record_from_trace(trace: RolloutTrace) -> RolloutRecord | str:
    """A rollout's record from what :meth:`Store.get_traces` read (the spans of its final attempt), or the
    reason it cannot be trained on."""
    rollout = trace.rollout
    if rollout.status is RolloutStatus.CANCELLED:
        return "cancelled"
    if not rollout.status.is_final:
        return "not_finished"
    if not trace.attempts:
        return "no_calls"
    spans = trace.spans
    calls: list[LLMCallRecord] = []
    rewards: list[tuple[int, float]] = []
    emitted_final: float | None = None
    for s in spans:
        if s.kind is SpanKind.LLM_CALL and s.response_ids:
            version = s.attributes.get("weights_version")
            calls.append(
                LLMCallRecord(
                    seq=_position(s),
                    prompt_ids=list(s.prompt_ids or []),
                    response_ids=list(s.response_ids),
                    logprobs=list(s.logprobs or []),
                    weights_version=int(version) if version is not None else None,
                    prefix_reused=s.attributes.get("prefix_reused"),
                    model=s.attributes.get("model"),
                )
            )
        elif s.kind is SpanKind.REWARD and isinstance(s.attributes.get("value"), (int, float)):
            value = float(s.attributes["value"])
            if s.name == FINAL_REWARD_NAME:
                emitted_final = value
            else:
                rewards.append((_position(s), value))
    if rollout.status is RolloutStatus.FAILED:
        final = 0.0
    elif rollout.reward is not None:
        final = rollout.reward
    elif emitted_final is not None:
        final = emitted_final
    elif rewards:
        final = rewards.pop()[1]  # the last emitted reward is the task's outcome
    else:
        return "no_reward"
    return RolloutRecord(rollout.rollout_id, rollout.group_id, final, calls, rewards)


def read_records(store: Store, rollout_ids: Sequence[str]) -> list[RolloutRecord | str]:
    """:func:`record_from_trace` of each rollout, read with one :meth:`Store.get_traces` call per
    :data:`MAX_QUERY_LIMIT` rollouts (a step costs a constant number of store calls)."""
    ids = list(rollout_ids)
    chunks = [ids[i : i + MAX_QUERY_LIMIT] for i in range(0, len(ids), MAX_QUERY_LIMIT)]
    return [record_from_trace(t) for chunk in chunks for t in store.get_traces(chunk)]


def read_trainable(store: Store, rollout_ids: Sequence[str]) -> tuple[list[RolloutRecord], dict[str, int]]:
    """The records of the rollouts that can be trained on (:func:`read_records`), and how many of the others
    were left out for each reason (``cancelled``, ``not_finished``, ``no_calls``, ``no_reward``)."""
    records: list[RolloutRecord] = []
    skipped: dict[str, int] = {}
    for rec in read_records(store, rollout_ids):
        if isinstance(rec, str):
            skipped[rec] = skipped.get(rec, 0) + 1
        else:
            records.append(rec)
    return records, skipped


def _position(span: Span) -> int:
    if span.position is None:
        raise ServerError(f"span {span.seq} of attempt {span.attempt_id!r} came from the store without a position")
    return span.position


class CreditOptions(TypedDict, total=False):
    """The keyword options of :func:`assign_credit` (defaults there)."""

    returns: credit.ReturnsMode
    advantage: credit.AdvantageMode
    scale: credit.ScaleMode
    gamma: float
    eps: float
    models: Sequence[str] | None


def transitions_from_store(
    store: Store, rollout_ids: Sequence[str], **options: Unpack[CreditOptions]
) -> CreditBatch:
    """Read the rollouts' llm calls and rewards from ``store`` and :func:`assign_credit` with ``options``
    (module docstring).

    The reads are :meth:`Store.get_traces` calls, one per :data:`MAX_QUERY_LIMIT` rollouts: a step costs a
    constant number of store calls, however many rollouts it holds."""
    records, skipped = read_trainable(store, rollout_ids)
    batch = assign_credit(records, **options)
    batch.add_read(records, skipped)
    batch.rerendered_calls = sum(c.prefix_reused is False for r in records for c in r.calls)
    return batch
