"""Credit assignment ("LightningRL"): whole-task rewards → per-call returns → advantages → loss weights.

Pure tensor → tensor functions (torch, no model, no store), each with its formula. The pipeline, for a
batch of finished rollouts of several tasks, each task sampled ``group_size`` times:

1. :func:`attach_rewards` places a rollout's intermediate rewards on its T llm calls.
2. :func:`call_returns` turns them and the final reward R into one return ``G_t`` per call
   (``uniform``, ``discounted``, ``step`` or ``total``). With ``step`` and γ = 1, a call's return is everything
   earned after it. So an agent that retries credits a failed attempt with all its corrected retry earned, as
   much as a first attempt that was right. γ < 1 gives the failed attempt only γ^k of it, k calls later (the
   SQL example uses γ = 0.5). ``total`` gives every call the rollout's whole return, intermediate rewards
   included: they rank the group's rollouts without crediting one call above another (see 4 for why).
3. :func:`group_baselines` computes, per rollout i, a baseline ``b_i`` and a divisor ``d_i`` from the
   rollout scores ``s_j = G_{j,1}`` (the return of each rollout's first call: the whole rollout's return)
   of its group (``grpo``, ``rloo``) or of the batch (``batch``), and marks rollouts of zero-variance
   groups to be skipped.
4. :func:`call_advantages` gives every call ``A_{i,t} = (G_{i,t} − b_i) / d_i``. The baseline is the
   rollout-level one, not a per-call-index one: rollouts of one task can make different numbers of calls,
   so "call t" of two rollouts need not be comparable, while the rollout return always is. With
   ``uniform`` returns ``G_{i,t} = R_i`` and this is exactly GRPO's ``(R_i − mean_g R) / (std_g R + ε)``
   broadcast to the rollout's calls; with ``step`` returns a call followed by a rewarded step gets more
   credit than the calls after it. The price: a call made after rewarded steps is compared with a baseline
   that holds those rewards, so with ``step`` it sits below the baseline by about what was earned before it,
   in every rollout (an agent's last call, its answer, is pushed down whenever its searches were rewarded).
   That term does not depend on the call's own tokens, so the gradient stays unbiased, but it is noise of
   one sign on every late call; ``total`` has none of it (for γ = 1 it is ``step`` with the baseline lowered
   by what the rollout had earned before the call).
5. :func:`token_weights` normalises the loss per rollout (or per token, DAPO-style), and
   :func:`ppo_clip_token_loss` / :func:`k3_kl` give the per-token terms the learner sums with those weights.

Shapes: T calls of one rollout, N rollouts, M calls of the batch, B rows (one row = one call) by L
response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from tracerl.errors import InvalidInput

ReturnsMode = Literal["uniform", "discounted", "step", "total"]
RETURNS_MODES: tuple[ReturnsMode, ...] = get_args(ReturnsMode)
AdvantageMode = Literal["grpo", "rloo", "batch"]
ScaleMode = Literal["std", "none"]
LossNorm = Literal["rollout", "token"]

#: a group whose score standard deviation is at most this is "zero-variance": it carries no signal
ZERO_VARIANCE_TOL = 1e-6


def attach_rewards(call_positions: Tensor, reward_positions: Tensor, reward_values: Tensor) -> Tensor:
    """Sum each intermediate reward onto the latest llm call that precedes it.

    Positions are the spans' places within the attempt, assigned by the store as they were written
    (``Span.position``, :mod:`tracerl.store.order`; calls sorted ascending). A reward at
    position p goes to call ``t(p) = max{t : call_positions[t] < p}``. A reward recorded *before the
    first call* has no preceding call; it goes to the first call (t = 1) rather than being dropped, so
    every reward the agent emitted counts somewhere.

    ``call_positions``: (T,) int, sorted; ``reward_positions``: (K,) int; ``reward_values``: (K,) float.
    Returns ``r``: (T,) float, ``r_t = Σ_{k : t(p_k) = t} v_k``.
    """
    if call_positions.numel() == 0:
        raise InvalidInput("attach_rewards needs at least one llm call (a rollout without calls has nothing to train)")
    r = torch.zeros(call_positions.shape[0], dtype=torch.float64)  # (T,)
    if reward_positions.numel() == 0:
        return r
    # index of the last call with position < p; -1 (before the first call) is clamped to 0
    idx = torch.searchsorted(call_positions, reward_positions, right=False) - 1  # (K,)
    idx = idx.clamp(min=0)
    return r.index_add_(0, idx, reward_values.to(torch.float64))


def call_returns(rewards: Tensor, final_reward: float, *, mode: ReturnsMode = "uniform", gamma: float = 1.0) -> Tensor:
    """Per-call returns ``G_t`` (t = 1..T) of one rollout with final reward R.

    * ``uniform``:    ``G_t = R`` (every call shares the task's outcome; intermediate rewards ignored).
    * ``discounted``: ``G_t = γ^(T−t) · R`` (calls far from the end get less of the final reward).
    * ``step``:       ``G_t = Σ_{k=t}^{T} γ^(k−t) · r_k + γ^(T−t) · R`` (the call's own reward plus the
      discounted return-to-go, the final reward counting as arriving with the last call).
    * ``total``:      ``G_t = Σ_{k=1}^{T} r_k + R`` (the rollout's whole return, for every call; γ unused).

    ``rewards``: (T,) intermediate rewards from :func:`attach_rewards`. Returns (T,) float64.
    """
    if not 0.0 < gamma <= 1.0:
        raise InvalidInput(f"gamma must be in (0, 1], got {gamma!r}")
    T = rewards.shape[0]
    t = torch.arange(T, dtype=torch.float64)  # (T,) zero-based, so T−t above is (T−1)−t here
    to_end = gamma ** ((T - 1) - t)  # (T,) γ^(T−t) in one-based terms
    if mode == "uniform":
        return torch.full((T,), float(final_reward), dtype=torch.float64)
    if mode == "discounted":
        return to_end * float(final_reward)
    if mode == "step":
        # M[t, k] = γ^(k−t) for k ≥ t, else 0  → G = M @ r + γ^(T−t) R
        diff = t[None, :] - t[:, None]  # (T, T) k − t
        m = torch.where(diff >= 0, gamma ** diff.clamp(min=0), torch.zeros_like(diff))
        return m @ rewards.to(torch.float64) + to_end * float(final_reward)
    if mode == "total":
        return torch.full((T,), float(rewards.to(torch.float64).sum()) + float(final_reward), dtype=torch.float64)
    raise InvalidInput(f"returns mode {mode!r} is not one of {', '.join(map(repr, RETURNS_MODES))}")


@dataclass(frozen=True)
class GroupStats:
    """Baselines of N rollouts: ``A = (G − baseline) / divisor``; ``keep`` is False for skipped rollouts."""

    baseline: Tensor  # (N,)
    divisor: Tensor  # (N,)
    keep: Tensor  # (N,) bool
    zero_variance_groups: int  # groups (for "batch": the batch) skipped for having no score variance
    groups: int


def group_baselines(
    scores: Tensor,
    group_index: Tensor,
    *,
    method: AdvantageMode = "grpo",
    scale: ScaleMode = "std",
    eps: float = 1e-4,
) -> GroupStats:
    """Baseline ``b_i`` and divisor ``d_i`` per rollout from the scores ``s`` of its peers.

    With ``g(i)`` the group of rollout i, ``n_g`` its size, ``μ_g`` its mean score and ``σ_g`` its
    population standard deviation ``sqrt(mean_g (s − μ_g)²)``:

    * ``grpo``:  ``b_i = μ_g(i)``.
    * ``rloo``:  ``b_i = (Σ_{j∈g(i)} s_j − s_i) / (n_g − 1)`` (leave-one-out mean; for uniform returns
      ``s_i − b_i = n_g/(n_g−1) · (s_i − μ_g)``).
    * ``batch``: ``b_i = μ`` over the whole batch (groups only count for the skip statistics).

    ``scale="std"``: ``d_i = σ + eps`` with σ the standard deviation of the same population the baseline
    uses (group, or batch for ``batch``); ``eps`` (default 1e-4) keeps nearly-constant groups finite.
    ``scale="none"``: ``d_i = 1`` (Dr. GRPO: no per-group rescaling, so easy tasks are not amplified).

    Zero variance: when that population's σ ≤ 1e-6 every advantage in it is 0 (or pure noise from
    ``eps``), so its rollouts get ``keep = False`` and the count goes to ``zero_variance_groups``. A group
    of one rollout always has zero variance.

    ``scores``: (N,) float; ``group_index``: (N,) int64 in [0, G). Returns :class:`GroupStats`.
    """
    if scores.ndim != 1 or group_index.shape != scores.shape:
        raise InvalidInput(
            f"scores and group_index must both be (N,), got {tuple(scores.shape)} and {tuple(group_index.shape)}"
        )
    if scale not in ("std", "none"):
        raise InvalidInput(f"scale {scale!r} is not one of 'std', 'none'")
    s = scores.to(torch.float64)
    n_groups = int(group_index.max().item()) + 1 if s.numel() else 0
    count = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group_index, torch.ones_like(s))  # (G,)
    total = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group_index, s)  # (G,)
    mean_g = total / count.clamp(min=1)  # (G,)
    var_g = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group_index, (s - mean_g[group_index]) ** 2)
    std_g = (var_g / count.clamp(min=1)).sqrt()  # (G,) population std
    present = count > 0
    if method == "grpo":
        baseline = mean_g[group_index]
        spread = std_g[group_index]
        zero_g = present & (std_g <= ZERO_VARIANCE_TOL)
        keep = ~zero_g[group_index]
    elif method == "rloo":
        n = count[group_index]
        baseline = torch.where(n > 1, (total[group_index] - s) / (n - 1).clamp(min=1), s)
        spread = std_g[group_index]
        zero_g = present & (std_g <= ZERO_VARIANCE_TOL)
        keep = ~zero_g[group_index]
    elif method == "batch":
        mu = s.mean() if s.numel() else s.new_zeros(())
        sigma = (s - mu).pow(2).mean().sqrt() if s.numel() else s.new_zeros(())
        baseline = mu.expand_as(s)
        spread = sigma.expand_as(s)
        flat = bool(sigma <= ZERO_VARIANCE_TOL)
        zero_g = present & flat
        keep = torch.full_like(s, not flat, dtype=torch.bool)
    else:
        raise InvalidInput(f"advantage method {method!r} is not one of 'grpo', 'rloo', 'batch'")
    divisor = spread + eps if scale == "std" else torch.ones_like(s)
    return GroupStats(
        baseline=baseline,
        divisor=divisor,
        keep=keep,
        zero_variance_groups=int(zero_g.sum().item()),
        groups=int(present.sum().item()),
    )


def call_advantages(returns: Tensor, rollout_index: Tensor, stats: GroupStats) -> Tensor:
    """``A_{i,t} = (G_{i,t} − b_i) / d_i`` for every call of the batch, broadcasting rollout baselines.

    ``returns``: (M,) per-call returns; ``rollout_index``: (M,) int64 rollout of each call.
    Calls of skipped rollouts (``keep`` False) get advantage 0; drop them with ``stats.keep``.
    Returns (M,) float64.
    """
    b = stats.baseline[rollout_index]  # (M,)
    d = stats.divisor[rollout_index]  # (M,)
    adv = (returns.to(torch.float64) - b) / d
    return torch.where(stats.keep[rollout_index], adv, torch.zeros_like(adv))


def token_weights(
    response_mask: Tensor, rollout_index: Tensor, *, norm: LossNorm = "rollout", row_weight: Tensor | None = None
) -> Tensor:
    """Weights ``w`` with which per-token losses ``ℓ`` are summed into the batch loss ``L = Σ w·ℓ``.

    * ``rollout`` (default): each rollout's tokens, over all its calls, are averaged, then rollouts are
      averaged: ``w = 1 / (n_i · N)`` with ``n_i`` the response tokens of rollout i and N the rollouts
      in the batch. A rollout with 12 calls weighs the same as one with 2.
    * ``token`` (DAPO): every token of the batch counts the same: ``w = 1 / Σ_i n_i``; long rollouts
      weigh more.

    ``row_weight`` (B,) multiplies a row's weights afterwards (1 by default; 0 leaves a call untrained).
    Computing ``w`` on the whole batch first makes micro-batching exact: the sum over micro-batches of
    ``Σ w·ℓ`` equals the full-batch loss.

    ``response_mask``: (B, L) bool; ``rollout_index``: (B,) int64. Returns (B, L) float32.
    """
    mask = response_mask.to(torch.float64)  # (B, L)
    tokens_per_row = mask.sum(dim=1)  # (B,)
    if norm == "rollout":
        n_rollouts = int(rollout_index.max().item()) + 1 if rollout_index.numel() else 0
        per_rollout = torch.zeros(n_rollouts, dtype=torch.float64).index_add_(0, rollout_index, tokens_per_row)
        present = int((per_rollout > 0).sum().item())
        denom = per_rollout[rollout_index] * max(present, 1)  # (B,)
    elif norm == "token":
        denom = tokens_per_row.sum().expand_as(tokens_per_row)
    else:
        raise InvalidInput(f"loss normalisation {norm!r} is not one of 'rollout', 'token'")
    w = mask / denom.clamp(min=1.0)[:, None]  # (B, L)
    if row_weight is not None:
        w = w * row_weight.to(torch.float64)[:, None]
    return w.to(torch.float32)


def ppo_clip_token_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, *, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token clipped surrogate loss ``ℓ = −min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A)``.

    ``ρ = exp(logπθ − logπ_old)``. ``logp``/``old_logp``: (B, L); ``advantages``: (B,) (one per call,
    broadcast over its tokens) or (B, L). Returns ``(loss (B, L), ratio (B, L), clipped (B, L) bool)``,
    where ``clipped`` marks tokens whose gradient the clip removed (ρ above 1+ε_high with A > 0, or below
    1−ε_low with A < 0).
    """
    adv = advantages[:, None] if advantages.ndim == 1 else advantages  # (B, 1) or (B, L)
    ratio = torch.exp(logp - old_logp)  # (B, L)
    unclipped = ratio * adv
    clipped_ratio = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = -torch.minimum(unclipped, clipped_ratio * adv)
    clipped = ((ratio > 1.0 + eps_high) & (adv > 0)) | ((ratio < 1.0 - eps_low) & (adv < 0))
    return loss, ratio, clipped


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(πθ ‖ π_ref) on tokens sampled from πθ (Schulman, 2020).

    ``KL ≈ exp(logπ_ref − logπθ) − (logπ_ref − logπθ) − 1`` — non-negative, unbiased, low variance.
    ``logp``/``ref_logp``: (B, L). Returns (B, L).
    """
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


def truncated_is_weights(learner_logp: Tensor, sampler_logp: Tensor, cap: float) -> Tensor:
    """Truncated importance weights for tokens drawn by a sampler that is not exactly the learner.

    The engine that sampled a response (another precision, other kernels) gives token x probability
    ``π_s(x)``, the learner's forward ``π_l(x)``. The policy gradient assumes samples from ``π_l``; the
    weight ``w = min(π_l(x) / π_s(x), C) = min(exp(logπ_l − logπ_s), C)`` corrects for the gap, truncated at
    ``C`` so one token the sampler found unlikely cannot dominate the update (Ionides, 2008; as TRL applies
    it to vLLM samples). ``learner_logp``/``sampler_logp``: (B, L). Returns (B, L), detached.
    """
    return torch.exp(learner_logp.detach() - sampler_logp).clamp(max=cap)


@dataclass(frozen=True)
class Mismatch:
    """How far the sampler's log-probs are from the learner's on the same tokens (``Δ = logπ_l − logπ_s``)."""

    mean_abs: float  # mean |Δ| over the tokens
    max_abs: float  # max |Δ|
    kl: float  # k3 estimate of KL(π_s ‖ π_l) on the sampled tokens: mean(exp(Δ) − Δ − 1)
    tokens: int


def sampler_mismatch(learner_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> Mismatch:
    """:class:`Mismatch` over the tokens where ``mask`` (B, L) is True (all zeros when there are none).

    The tokens were drawn from the sampler π_s, so ``E_s[exp(Δ) − Δ − 1]`` with ``Δ = logπ_l − logπ_s`` is
    the k3 estimator of ``KL(π_s ‖ π_l)`` (see :func:`k3_kl`, with the roles of the two policies set so).
    """
    delta = (learner_logp.detach() - sampler_logp)[mask].to(torch.float64)  # (n,)
    if delta.numel() == 0:
        return Mismatch(0.0, 0.0, 0.0, 0)
    k3 = torch.exp(delta) - delta - 1.0
    return Mismatch(float(delta.abs().mean()), float(delta.abs().max()), float(k3.mean()), int(delta.numel()))
