"""The GRPO learner: PPO-clip updates of a transformers causal LM on recorded transitions.

One :meth:`GRPOLearner.update` = ``config.epochs`` optimizer steps over one batch of transitions, each step
accumulating gradients over micro-batches::

    ℓ_tok = −w_IS · min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A) + β·(exp(logπ_ref − logπθ) − (logπ_ref − logπθ) − 1)
    L     = Σ_tokens w · ℓ_tok        (w: per-rollout normalisation, see tracerl.credit.token_weights)

Which ``π_old``: a transition sampled by the weights being trained (its ``weights_version`` equals the
learner's) uses the learner's own log-probs computed in the first epoch, before any step (detached); so
``ρ`` is exactly 1 there and numerical differences between the sampling engine and the training forward
(batching, kernels, bf16) never show up as spurious ratios or clipping. Those differences are measured
instead, every update (``mismatch_mean_abs``, ``mismatch_max_abs``, ``mismatch_kl``), and with
``tis_cap`` set each such token is weighted by ``w_IS = min(π_learner / π_sampler, tis_cap)``
(:func:`tracerl.credit.truncated_is_weights`); both compare log-probs at temperature 1, what the engine
records. A transition sampled by older weights (allowed up to
``max_staleness`` updates, or of unknown version) uses the log-probs recorded at sampling time, the only
record of the policy that produced it, so ``ρ`` corrects for the staleness (and ``w_IS = 1``).

With a scoring temperature ``T ≠ 1`` (``config.temperature``; the Trainer sets it to the temperature it
samples at) the trained policy is ``π_T = softmax(z/T)``, the distribution the engine samples from (top-p
aside): ``log π`` above is ``log π_T``, and only transitions sampled by the current weights are trained.

After an update the learner's weights version goes up by one and :attr:`UpdateResult.state_dict` holds
the full weights for the engine (LoRA adapters merged in).

Under ``torchrun`` (torch.distributed initialised, world size W > 1) the update is data-parallel: rank 0's
:meth:`GRPOLearner.update` broadcasts the batch, every rank runs :meth:`GRPOLearner.apply_update` on its
share of the micro-batches, and the gradients are summed across ranks before the optimizer step, which
gives the single-process update (see :mod:`tracerl.algorithms.distributed`; metrics are reduced too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tracerl import credit
from tracerl.algorithms import distributed as dp
from tracerl.algorithms import fsdp
from tracerl.algorithms.batch import MicroBatch, build_micro_batches
from tracerl.algorithms.grpo import GRPOConfig
from tracerl.algorithms.policy import Policy, bf16_supported
from tracerl.algorithms.transitions import Transition
from tracerl.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["GRPOLearner", "UpdateResult", "bf16_supported", "recent_enough"]


@dataclass
class UpdateResult:
    """What one update produced: metrics, the weights for the engine (None if nothing was trained)."""

    metrics: dict[str, float]
    state_dict: dict[str, Tensor] | None
    version: int
    epochs: list[dict[str, float]] = field(default_factory=list[dict[str, float]])


class GRPOLearner(Policy):
    """The policy plus the GRPO update (and, when ``kl_coef > 0``, the frozen reference)."""

    config: GRPOConfig

    def __init__(self, model: nn.Module, config: GRPOConfig, *, pad_id: int = 0, weights_version: int = 0) -> None:
        super().__init__(model, config, pad_id=pad_id, weights_version=weights_version,
                         keep_reference=config.kl_coef > 0)  # fmt: skip
        self._replicas_synced = False

    @property
    def step(self) -> int:
        return self.step_count

    def update(self, transitions: Sequence[Transition]) -> UpdateResult:
        """``config.epochs`` PPO-clip optimizer steps on ``transitions``; returns metrics and new weights.

        Transitions older than ``max_staleness`` versions are dropped (``dropped`` in the metrics); the age of
        the others shows as ``staleness_mean``/``staleness_max`` (in updates) and ``unknown_version``. Under
        torch.distributed this runs on rank 0 and the other ranks take part through
        :func:`tracerl.algorithms.distributed.follow`.
        """
        if dp.world_size() > 1:
            if dp.rank() != 0:
                raise ConfigError(
                    f"update() is called on rank 0 only (this is rank {dp.rank()}); the other ranks run "
                    "tracerl.algorithms.distributed.follow(learner)"
                )
            dp.broadcast_object(list(transitions))
        return self.apply_update(transitions)

    def apply_update(self, transitions: Sequence[Transition]) -> UpdateResult:
        """The update itself, run by every rank on the same ``transitions`` (each on its micro-batches)."""
        if dp.world_size() > 1 and not self._replicas_synced:
            self._sync_replicas()
        c = self.config
        start = time.perf_counter()
        fresh = [t for t in transitions if recent_enough(t, self.weights_version, c.max_staleness, self.temperature)]
        fresh = [t for t in fresh if t.response_ids and t.weight != 0.0]
        dropped = len(transitions) - len(fresh)
        lags = [self.weights_version - t.weights_version for t in fresh if t.weights_version is not None]
        if not fresh:
            logger.info("update skipped: no trainable transitions (%d given, %d dropped)", len(transitions), dropped)
            return UpdateResult({"transitions": 0.0, "dropped": float(dropped)}, None, self.weights_version)
        mbs = build_micro_batches(
            fresh, micro_batch_size=c.micro_batch_size, micro_batch_tokens=c.micro_batch_tokens, norm=c.loss_norm,
            current_version=self.weights_version, pad_id=self.pad_id, share_prefix_tokens=c.share_prefix_tokens,
        )
        n_mbs = len(mbs)
        mine, real = dp.shard(mbs), None  # this rank's micro-batches (all in one process)
        if self.sharded is not None:  # FSDP: the same number of forward/backward passes on every rank
            mine, real = fsdp.pad_shard(mine, mbs)
        mbs = [self.to_device(mb) for mb in mine]
        old: list[Tensor] = []
        ref: list[Tensor | None] = []
        is_w: list[Tensor | None] = []
        gaps: list[tuple[Tensor, Tensor, Tensor]] = []
        epochs: list[dict[str, float]] = []
        self.model.train()
        for epoch in range(c.epochs):
            acc = _Accumulator()
            for k, mb in enumerate(mbs):
                logp, _, raw = self.score(mb)  # (B, R) at the scoring temperature, (B, R) at temperature 1
                if epoch == 0:
                    on = mb.on_policy[:, None]  # (B, 1)
                    old.append(torch.where(on, logp.detach(), mb.old_logprobs))
                    ref.append(self.ref_logprobs(mb) if c.kl_coef > 0 else None)
                    gaps.append((raw, mb.old_logprobs, mb.response_mask & on & (real is None or k < real)))
                    is_w.append(
                        torch.where(on, credit.truncated_is_weights(raw, mb.old_logprobs, c.tis_cap), 1.0)
                        if c.tis_cap is not None else None
                    )  # fmt: skip
                pg, ratio, clipped = credit.ppo_clip_token_loss(
                    logp, old[k], mb.advantages, eps_low=c.clip_eps_low, eps_high=c.clip_eps_high
                )
                w_k = is_w[k]
                if w_k is not None:
                    pg = pg * w_k
                loss = (pg * mb.weights).sum()
                ref_k = ref[k]
                kl = credit.k3_kl(logp, ref_k) if ref_k is not None else None
                if kl is not None:
                    loss = loss + c.kl_coef * (kl * mb.weights).sum()
                torch.autograd.backward(loss)
                if real is None or k < real:  # a zero-weight FSDP filler adds nothing to the metrics
                    acc.add(mb, loss, pg, kl, ratio, clipped)
            if self.sharded is None:  # FSDP sums the gradients in its backward (reduce-scatter)
                dp.sum_gradients(self.params)
            grad_norm = self.optimizer_step()
            acc.reduce()
            epochs.append({**acc.metrics(), "grad_norm": grad_norm})
        self.step_count += 1
        self.weights_version += 1
        metrics = {
            **_summary(epochs),
            **mismatch_metrics(gaps, is_w),
            "transitions": float(len(fresh)),
            "rollouts": float(len({t.rollout_id for t in fresh})),
            "dropped": float(dropped),
            # how many updates old the weights that sampled the trained calls were (0: these weights)
            "staleness_mean": float(np.mean(lags)) if lags else 0.0,
            "staleness_max": float(max(lags, default=0)),
            "unknown_version": float(len(fresh) - len(lags)),
            "micro_batches": float(n_mbs),
            "lr": self.lr,
            "update_s": time.perf_counter() - start,
        }
        return UpdateResult(metrics, self.engine_state_dict(), self.weights_version, epochs)

    def _sync_replicas(self) -> None:
        """Every rank takes rank 0's weights, optimizer state, step and version (a resumed run included)."""
        dp.broadcast_parameters(self.params)
        mine = None
        if dp.rank() == 0:  # the AdamW moments travel through the CPU (load_state_dict moves them to the device)
            optim = self.optimizer.state_dict()
            optim["state"] = {k: {n: v.cpu() if isinstance(v, Tensor) else v for n, v in per.items()}
                              for k, per in optim["state"].items()}  # fmt: skip
            mine = (optim, self.step_count, self.weights_version)
        state = dp.broadcast_object(mine)
        if dp.rank() != 0:
            self.optimizer.load_state_dict(state[0])
            self.step_count, self.weights_version = state[1], state[2]
        if self.config.fsdp:
            self._shard(state[0])
        self._replicas_synced = True

    def _shard(self, optim_state: dict[str, Any]) -> None:
        """FSDP: shard the model (now equal on every rank) and rebuild AdamW over the shards, moments cut alike."""
        c = self.config
        self.sharded = fsdp.shard_model(self.model, self.forward_logprobs, self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
        fsdp.shard_optimizer_state(self.optimizer, optim_state)
        self.engine_state_dict()  # the full weights a checkpoint saves, even if this update trains nothing
        logger.info("rank %d: model and optimizer sharded over %d processes (FSDP2)", dp.rank(), dp.world_size())


def recent_enough(t: Transition, version: int, max_staleness: int, temperature: float) -> bool:
    """Whether ``t`` may be trained by a learner at weights ``version``: sampled at most ``max_staleness``
    updates ago (or by unknown weights). At a scoring ``temperature`` ≠ 1 only the learner's own samples
    may: older ones carry the engine's log-probs at temperature 1, which are not ``π_old`` at ``temperature``."""
    if temperature != 1.0:
        return t.weights_version == version
    return t.weights_version is None or version - t.weights_version <= max_staleness


def _summary(epochs: list[dict[str, float]]) -> dict[str, float]:
    first = epochs[0]
    return {
        "loss": first["loss"],
        "pg_loss": first["pg_loss"],
        "kl": first["kl"],
        "clip_fraction": float(np.mean([e["clip_fraction"] for e in epochs])),
        "ratio_mean": float(np.mean([e["ratio_mean"] for e in epochs])),
        "grad_norm": float(np.mean([e["grad_norm"] for e in epochs])),
        "tokens": first["tokens"],
    }


def mismatch_metrics(gaps: list[tuple[Tensor, Tensor, Tensor]], is_w: list[Tensor | None]) -> dict[str, float]:
    """Sampler/learner gap over the on-policy tokens of the batch (first epoch, before any step)."""
    if dp.world_size() == 1 and not gaps:
        return {}
    learner = dp.gather_cat(_cat([g[0] for g in gaps], torch.float32))
    sampler = dp.gather_cat(_cat([g[1] for g in gaps], torch.float32))
    mask = dp.gather_cat(_cat([g[2] for g in gaps], torch.bool))
    m = credit.sampler_mismatch(learner, sampler, mask)
    out = {"mismatch_mean_abs": m.mean_abs, "mismatch_max_abs": m.max_abs, "mismatch_kl": m.kl,
           "mismatch_tokens": float(m.tokens)}  # fmt: skip
    on = [w[g[2]].detach() for w, g in zip(is_w, gaps, strict=True) if w is not None]
    w = dp.gather_cat(_cat(on, torch.float32))
    if w.numel():
        out["is_weight_mean"] = float(w.mean())
        out["is_weight_min"] = float(w.min())
    return out


def _cat(parts: list[Tensor], dtype: torch.dtype) -> Tensor:
    """The tensors flattened and joined (an empty 1-D tensor when there are none)."""
    if not parts:
        return torch.zeros(0, dtype=dtype)
    return torch.cat([p.flatten() for p in parts])


class _Accumulator:
    """Sums one epoch's statistics over micro-batches."""

    def __init__(self) -> None:
        self.loss: float = 0.0
        self.pg: float = 0.0
        self.kl: float = 0.0
        self.ratio_sum: float = 0.0
        self.tokens: int = 0
        self.clipped: int = 0

    @torch.no_grad()
    def add(self, mb: MicroBatch, loss: Tensor, pg: Tensor, kl: Tensor | None, ratio: Tensor, clipped: Tensor) -> None:
        mask = mb.response_mask
        self.loss += float(loss)
        self.pg += float((pg * mb.weights).sum())
        if kl is not None:
            self.kl += float((kl * mb.weights).sum())
        self.tokens += int(mask.sum())
        self.clipped += int((clipped & mask).sum())
        self.ratio_sum += float((ratio * mask).sum())

    def reduce(self) -> None:
        """Sum the statistics over all ranks (no-op in one process)."""
        vals = dp.sum_floats([self.loss, self.pg, self.kl, float(self.tokens), float(self.clipped), self.ratio_sum])
        self.loss, self.pg, self.kl, self.ratio_sum = vals[0], vals[1], vals[2], vals[5]
        self.tokens, self.clipped = round(vals[3]), round(vals[4])

    def metrics(self) -> dict[str, float]:
        n = max(self.tokens, 1)
        return {
            "loss": self.loss,
            "pg_loss": self.pg,
            "kl": self.kl,
            "tokens": float(self.tokens),
            "clip_fraction": self.clipped / n,
            "ratio_mean": self.ratio_sum / n,
        }
