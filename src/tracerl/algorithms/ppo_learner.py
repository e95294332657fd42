"""The learners of PPO (with its critic) and REINFORCE++: advantages estimated at update time, then
clipped-surrogate epochs on the policy (formulas: :mod:`tracerl.algorithms.ppo`).

One :meth:`ReturnsLearner.update` on a :class:`~tracerl.algorithms.rollout_batch.RolloutBatch`:

1. drop the rollouts with a call sampled more than ``max_staleness`` updates ago (at a scoring temperature
   ≠ 1: by other weights than the current ones; a rollout is kept or dropped whole: its calls' advantages
   depend on each other);
2. a no-grad pass over the micro-batches: π_old (the learner's own log-probs for calls of the current
   weights, ratio exactly 1 then; the recorded ones for older calls), the reference log-probs when
   ``kl_coef > 0``, truncated importance weights, the sampler/learner gap, and (PPO) the critic's values;
3. advantages: PPO's GAE over each rollout's calls with those values (whitened over the batch), or
   REINFORCE++'s KL-shaped token returns normalised over the batch's tokens;
4. ``epochs`` optimizer steps of the clipped surrogate (+ PPO's clipped value loss) summed with the
   per-rollout loss weights of :func:`tracerl.credit.token_weights` (micro-batching never changes it).

During PPO's critic warm-up only the critic steps: the result carries no new weights and the weights
version stays, so the engine keeps serving the policy that sampled the batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor, nn

from tracerl import credit
from tracerl.algorithms import estimators as est
from tracerl.algorithms.batch import MicroBatch, build_micro_batches
from tracerl.algorithms.config import ClipConfig
from tracerl.algorithms.critic import Critic
from tracerl.algorithms.learner import UpdateResult, mismatch_metrics, recent_enough
from tracerl.algorithms.policy import Policy
from tracerl.algorithms.ppo import PPOConfig, REINFORCEppConfig
from tracerl.algorithms.rollout_batch import RolloutBatch
from tracerl.algorithms.torch_types import floats, ints
from tracerl.algorithms.transitions import Transition
from tracerl.errors import ConfigError

logger = logging.getLogger(__name__)

CRITIC_FILE = "critic.pt"

C = TypeVar("C", bound=ClipConfig)


def build(model: nn.Module, config: ClipConfig, *, pad_id: int = 0) -> ReturnsLearner[Any]:
    """The learner for ``config`` (:class:`PPOLearner` or :class:`REINFORCEppLearner`)."""
    if isinstance(config, PPOConfig):
        return PPOLearner(model, config, pad_id=pad_id)
    if isinstance(config, REINFORCEppConfig):
        return REINFORCEppLearner(model, config, pad_id=pad_id)
    raise ConfigError(f"no learner for {type(config).__name__}; use PPOConfig or REINFORCEppConfig")


@dataclass
class _Pre:
    """What the no-grad pass computed, one entry per micro-batch."""

    old: list[Tensor] = field(default_factory=list[Tensor])  # (B, R) π_old log-probs
    ref: list[Tensor | None] = field(default_factory=list[Tensor | None])  # (B, R) reference log-probs
    is_w: list[Tensor | None] = field(default_factory=list[Tensor | None])  # (B, R) truncated IS weights
    gaps: list[tuple[Tensor, Tensor, Tensor]] = field(default_factory=list[tuple[Tensor, Tensor, Tensor]])
    values: list[Tensor] = field(default_factory=list[Tensor])  # (B,) critic values (PPO)


class ReturnsLearner(Policy, Generic[C]):
    """The shared update loop; subclasses say how advantages are made and what else the loss holds."""

    config: C

    def __init__(self, model: nn.Module, config: C, *, pad_id: int = 0, keep_reference: bool) -> None:
        super().__init__(model, config, pad_id=pad_id, keep_reference=keep_reference)
        self.updates = 0  # update() calls so far (policy steps are ``step_count``)

    # -- hooks ---------------------------------------------------------------------------------------
    def assign(self, ts: list[Transition], rewards: Tensor, mbs: list[MicroBatch], pre: _Pre,
               batch: RolloutBatch) -> dict[str, float]:  # fmt: skip
        """Put the advantages into ``mb.advantages`` ((B,) or (B, R)); return metrics."""
        raise NotImplementedError

    def trains_policy(self) -> bool:
        return True

    def extra_loss(self, k: int, mb: MicroBatch, state: Tensor, acc: dict[str, float]) -> Tensor | None:
        """A loss added to the policy loss of micro-batch ``k`` (PPO's value loss); None: nothing."""
        return None

    def extra_step(self, acc: dict[str, float]) -> None:
        """After each epoch's policy step (PPO: the critic's step)."""

    # -- the update ----------------------------------------------------------------------------------
    def update(self, batch: RolloutBatch) -> UpdateResult:
        c = self.config
        start = time.perf_counter()
        stale = {
            t.rollout_id for t in batch.transitions
            if not recent_enough(t, self.weights_version, c.max_staleness, self.temperature)
        }  # fmt: skip
        keep = [i for i, t in enumerate(batch.transitions) if t.rollout_id not in stale]
        ts = [batch.transitions[i] for i in keep]
        if not ts:
            logger.info("update skipped: no trainable transitions (%d given)", len(batch.transitions))
            self.updates += 1
            return UpdateResult({"transitions": 0.0, "dropped": float(len(batch.transitions))}, None,
                                self.weights_version)  # fmt: skip
        rewards = torch.tensor([batch.call_rewards[i] for i in keep], dtype=torch.float64)  # (M,)
        mbs = [self.to_device(mb) for mb in build_micro_batches(
            ts, micro_batch_size=c.micro_batch_size, micro_batch_tokens=c.micro_batch_tokens, norm=c.loss_norm,
            current_version=self.weights_version, pad_id=self.pad_id, share_prefix_tokens=c.share_prefix_tokens,
        )]  # fmt: skip
        self.model.train()
        pre = self.prepass(mbs)
        metrics = self.assign(ts, rewards, mbs, pre, batch)
        policy = self.trains_policy()
        epochs: list[dict[str, float]] = []
        for _ in range(c.epochs):
            acc: dict[str, float] = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "tokens": 0.0, "clipped": 0.0,
                                     "ratio_sum": 0.0}  # fmt: skip
            for k, mb in enumerate(mbs):
                loss = self.micro_loss(k, mb, pre, acc, policy)
                torch.autograd.backward(loss)
                acc["loss"] += float(loss.detach())
            acc["grad_norm"] = self.optimizer_step() if policy else 0.0
            self.extra_step(acc)
            epochs.append(acc)
        self.updates += 1
        if policy:
            self.step_count += 1
            self.weights_version += 1
        first, n_tok = epochs[0], max(epochs[0]["tokens"], 1.0)
        metrics.update({
            "loss": first["loss"], "pg_loss": first["pg_loss"], "kl": first["kl"],
            "clip_fraction": sum(e["clipped"] for e in epochs) / (n_tok * len(epochs)),
            "ratio_mean": sum(e["ratio_sum"] for e in epochs) / (n_tok * len(epochs)),
            "grad_norm": sum(e["grad_norm"] for e in epochs) / len(epochs), "tokens": first["tokens"],
            **{k: v for k, v in first.items() if k.startswith(("value_", "critic_"))},
            **mismatch_metrics(pre.gaps, pre.is_w),
            "transitions": float(len(ts)), "rollouts": float(len({t.rollout_id for t in ts})),
            "dropped": float(len(batch.transitions) - len(ts)), "micro_batches": float(len(mbs)),
            "policy_updated": float(policy), "lr": self.lr, "update_s": time.perf_counter() - start,
        })  # fmt: skip
        return UpdateResult(metrics, self.engine_state_dict() if policy else None, self.weights_version, epochs)

    @torch.no_grad()
    def prepass(self, mbs: list[MicroBatch]) -> _Pre:
        c, pre = self.config, _Pre()
        for mb in mbs:
            logp, state, raw = self.score(mb)  # (B, R), (B, H), (B, R) at temperature 1
            on = mb.on_policy[:, None]  # (B, 1)
            pre.old.append(torch.where(on, logp, mb.old_logprobs))
            pre.ref.append(self.ref_logprobs(mb) if c.kl_coef > 0 else None)
            pre.gaps.append((raw, mb.old_logprobs, mb.response_mask & on))
            pre.is_w.append(
                torch.where(on, credit.truncated_is_weights(raw, mb.old_logprobs, c.tis_cap), 1.0)
                if c.tis_cap is not None else None
            )  # fmt: skip
            pre.values.append(self.prepass_values(mb, state))
        return pre

    def prepass_values(self, mb: MicroBatch, state: Tensor) -> Tensor:
        return torch.zeros(mb.response_ids.shape[0], device=state.device)

    def micro_loss(self, k: int, mb: MicroBatch, pre: _Pre, acc: dict[str, float], policy: bool) -> Tensor:
        """The loss of micro-batch ``k`` (its share of the batch loss); accumulates statistics in ``acc``."""
        c = self.config
        if not policy:  # critic warm-up: only the critic learns (a value head reads the detached state)
            state = torch.zeros(0)
            if self.needs_policy_state():
                with torch.no_grad():
                    _, state = self.logprobs_and_state(mb)
            out = self.extra_loss(k, mb, state.detach(), acc)
            assert out is not None
            return out
        logp, state = self.logprobs_and_state(mb)
        pg, ratio, clipped = credit.ppo_clip_token_loss(
            logp, pre.old[k], mb.advantages, eps_low=c.clip_eps_low, eps_high=c.clip_eps_high
        )  # (B, R) each
        w_is = pre.is_w[k]
        if w_is is not None:
            pg = pg * w_is
        loss = (pg * mb.weights).sum()
        ref = pre.ref[k]
        if ref is not None and self.kl_in_loss():
            kl = (credit.k3_kl(logp, ref) * mb.weights).sum()
            loss = loss + c.kl_coef * kl
            acc["kl"] += float(kl)
        extra = self.extra_loss(k, mb, state, acc)
        mask = mb.response_mask
        acc["pg_loss"] += float((pg.detach() * mb.weights).sum())
        acc["tokens"] += float(mask.sum())
        acc["clipped"] += float((clipped & mask).sum())
        acc["ratio_sum"] += float((ratio.detach() * mask).sum())
        return loss if extra is None else loss + extra

    def kl_in_loss(self) -> bool:
        return True

    def needs_policy_state(self) -> bool:
        """Whether the extra loss reads the policy's hidden state (a value head on the policy)."""
        return True

    # -- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path) -> Path:
        target = super().save_checkpoint(path)
        torch.save({"updates": self.updates, **self.extra_state()}, Path(path) / CRITIC_FILE)
        return target

    def load_checkpoint(self, path: str | Path) -> None:
        super().load_checkpoint(path)
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        state = torch.load(folder / CRITIC_FILE, map_location="cpu", weights_only=False)
        self.updates = int(state["updates"])
        self.load_extra_state(state)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


def _rollout_spans(ts: list[Transition]) -> tuple[Tensor, list[int]]:
    """(M,) rollout index of each transition (rollouts consecutive) and the calls per rollout."""
    names = {r: i for i, r in enumerate(dict.fromkeys(t.rollout_id for t in ts))}
    index = torch.tensor([names[t.rollout_id] for t in ts], dtype=torch.int64)
    counts = ints(torch.bincount(index, minlength=len(names)))
    return index, counts


class PPOLearner(ReturnsLearner[PPOConfig]):
    """PPO: the policy, its critic (:class:`~tracerl.algorithms.critic.Critic`) and GAE advantages."""

    def __init__(self, model: nn.Module, config: PPOConfig, *, pad_id: int = 0) -> None:
        import copy

        separate = copy.deepcopy(model) if config.critic == "model" and config.critic_model is None else None
        super().__init__(model, config, pad_id=pad_id, keep_reference=config.kl_coef > 0)
        if config.critic == "model" and separate is None:
            from tracerl.engines.models import load_model

            separate, _ = load_model(str(config.critic_model))
            policy_vocab = int(getattr(model.config, "vocab_size", 0))
            critic_vocab = int(getattr(separate.config, "vocab_size", 0))
            if critic_vocab < policy_vocab:
                raise ConfigError(
                    f"critic_model={config.critic_model!r} has a vocabulary of {critic_vocab} tokens, the policy "
                    f"{policy_vocab}: the critic reads the policy's token ids, so use a model with the same "
                    "tokenizer (or critic_model=None for a copy of the policy)"
                )
        self.critic = Critic(
            int(model.config.hidden_size), lr=config.critic_lr, betas=config.betas,  # type: ignore[union-attr]
            weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm, device=self.device,
            model=separate,
        )  # fmt: skip
        self.returns: list[Tensor] = []  # (B,) per micro-batch: the critic's targets G
        self.call_weights: list[Tensor] = []  # (B,) per micro-batch: 1 / (T_i · N)

    def trains_policy(self) -> bool:
        return self.updates >= self.config.critic_warmup_steps

    def needs_policy_state(self) -> bool:
        return self.critic.backbone is None

    def prepass_values(self, mb: MicroBatch, state: Tensor) -> Tensor:
        return self.critic.values(mb, state, self.autocast()).detach()

    def assign(self, ts: list[Transition], rewards: Tensor, mbs: list[MicroBatch], pre: _Pre,
               batch: RolloutBatch) -> dict[str, float]:  # fmt: skip
        c = self.config
        values = torch.zeros(len(ts), dtype=torch.float64)  # (M,) in transition order
        for mb, v in zip(mbs, pre.values, strict=True):
            values[mb.rows] = v.double().cpu()
        index, counts = _rollout_spans(ts)
        adv, ret = est.batch_gae(rewards, values, index, gamma=c.gamma, lam=c.lam)  # (M,), (M,)
        norm = est.whiten(adv) if c.whiten_advantages else adv
        call_w = 1.0 / (torch.tensor(counts, dtype=torch.float64)[index] * len(counts))  # (M,)
        self.returns, self.call_weights = [], []
        for mb in mbs:
            mb.advantages = norm[mb.rows].to(torch.float32).to(self.device)
            self.returns.append(ret[mb.rows].to(torch.float32).to(self.device))
            self.call_weights.append(call_w[mb.rows].to(torch.float32).to(self.device))
        for t, a, g in zip(ts, floats(adv), floats(ret), strict=True):
            t.advantage, t.ret = a, g
        resid = ret - values
        var = float(ret.var(correction=0))
        return {
            "value_mean": float(values.mean()), "return_mean": float(ret.mean()), "advantage_mean": float(adv.mean()),
            "advantage_std": float(adv.std(correction=0)),
            "explained_variance": 1.0 - float(resid.var(correction=0)) / var if var > 0 else 0.0,
        }  # fmt: skip

    def extra_loss(self, k: int, mb: MicroBatch, state: Tensor, acc: dict[str, float]) -> Tensor:
        c = self.config
        v = self.critic.values(mb, state if self.critic.backbone is None else None, self.autocast())  # (B,)
        old = self.critic_old(k)
        per_call = est.clipped_value_loss(v, old, self.returns[k], c.value_clip)  # (B,)
        vloss = (per_call * self.call_weights[k]).sum()
        acc["value_loss"] = acc.get("value_loss", 0.0) + float(vloss.detach())
        if c.value_clip is not None:
            hit = ((v - old).abs() > c.value_clip).float().sum()
            acc["value_clip_fraction"] = acc.get("value_clip_fraction", 0.0) + float(hit) / len(self._all_rows)
        return c.vf_coef * vloss

    def critic_old(self, k: int) -> Tensor:
        return self._pre_values[k]

    def prepass(self, mbs: list[MicroBatch]) -> _Pre:
        pre = super().prepass(mbs)
        self._pre_values = pre.values
        self._all_rows = [r for mb in mbs for r in mb.rows]
        return pre

    def extra_step(self, acc: dict[str, float]) -> None:
        acc["critic_grad_norm"] = self.critic.optimizer_step()

    def extra_state(self) -> dict[str, Any]:
        return {"critic": self.critic.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])


class REINFORCEppLearner(ReturnsLearner[REINFORCEppConfig]):
    """REINFORCE++: token returns with the KL in the reward, normalised over the batch; no critic."""

    def __init__(self, model: nn.Module, config: REINFORCEppConfig, *, pad_id: int = 0) -> None:
        super().__init__(model, config, pad_id=pad_id, keep_reference=config.kl_coef > 0)

    def kl_in_loss(self) -> bool:
        return False  # the KL is in the reward

    def assign(self, ts: list[Transition], rewards: Tensor, mbs: list[MicroBatch], pre: _Pre,
               batch: RolloutBatch) -> dict[str, float]:  # fmt: skip
        c = self.config
        n = len(ts)
        kl: list[Tensor | None] = [None] * n  # per transition: (len,) −β·KL token rewards
        for k, mb in enumerate(mbs):
            ref = pre.ref[k]
            if ref is None:
                continue
            for b, i in enumerate(mb.rows):
                length = len(ts[i].response_ids)
                kl[i] = est.kl_token_rewards(pre.old[k][b, :length].double().cpu(),
                                             ref[b, :length].double().cpu(), c.kl_coef)  # fmt: skip
        if c.baseline == "group":
            rewards = rewards.clone()
            means = _group_means(batch)
            for i, t in enumerate(ts):  # the final reward sits on each rollout's last call
                if i + 1 == n or ts[i + 1].rollout_id != t.rollout_id:
                    rewards[i] -= means[t.group_id]
        _, counts = _rollout_spans(ts)
        returns: list[Tensor] = []  # per transition, (len,)
        start = 0
        for count in counts:
            calls = list(range(start, start + count))
            lengths = [len(ts[i].response_ids) for i in calls]
            kls = [kl[i] for i in calls]
            kl_all = torch.cat([x for x in kls if x is not None]) if all(x is not None for x in kls) else None
            g = est.token_returns(est.reinforce_pp_rewards(lengths, rewards[calls], kl_all), gamma=c.gamma)
            returns += list(torch.split(g, lengths))
            start += count
        flat = torch.cat(returns)  # (n_tokens,)
        normed = est.normalize_tokens(returns, eps=c.adv_eps)
        for mb in mbs:
            adv = torch.zeros(mb.response_ids.shape, dtype=torch.float32)  # (B, R)
            for b, i in enumerate(mb.rows):
                adv[b, : len(normed[i])] = normed[i].float()
            mb.advantages = adv.to(self.device)
        return {"return_mean": float(flat.mean()), "return_std": float(flat.std(correction=0)),
                "kl_reward": float(sum(float(x.sum()) for x in kl if x is not None))}  # fmt: skip


def _group_means(batch: RolloutBatch) -> dict[str, float]:
    by_group: dict[str, list[float]] = {}
    groups = {t.rollout_id: t.group_id for t in batch.transitions}
    for rid, final in batch.finals.items():
        by_group.setdefault(groups.get(rid, ""), []).append(final)
    return {g: sum(v) / len(v) for g, v in by_group.items()}
