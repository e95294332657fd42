"""Advantage estimators beyond group baselines: GAE with a learned value (PPO), REINFORCE++ token returns
with the KL in the reward and global normalisation, and PPO's clipped value loss.

Pure tensor → tensor functions (no model, no store), each with its formula, like :mod:`tracerl.credit`
(which keeps the group baselines of GRPO/RLOO and the per-token policy loss these estimators feed).

Rewards of one rollout are placed as credit assignment places them (:func:`tracerl.credit.attach_rewards`):
``r_t`` for call t = the intermediate rewards emitted after call t and before call t+1, and the final reward
R counts as arriving with the last call: ``r_T += R`` (:func:`step_rewards`).

Shapes: T calls of one rollout, M calls of the batch (rollouts one after the other), n tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tracerl import credit
from tracerl.algorithms.torch_types import ints, unique_consecutive
from tracerl.errors import InvalidInput


def step_rewards(call_positions: Tensor, reward_positions: Tensor, reward_values: Tensor, final: float) -> Tensor:
    """Per-call rewards ``r_t`` (T,) float64 of one rollout: intermediate rewards on the call they follow
    (:func:`tracerl.credit.attach_rewards`), plus the final reward R on the last call."""
    r = credit.attach_rewards(call_positions, reward_positions, reward_values)  # (T,)
    r[-1] += float(final)
    return r


def gae(rewards: Tensor, values: Tensor, *, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over the T calls of one rollout (Schulman et al., 2016).

    With ``V_t`` the critic's value of call t's prompt (its last prompt token) and ``V_{T+1} = 0`` (the
    rollout ends after its last call)::

        δ_t = r_t + γ·V_{t+1} − V_t
        A_t = Σ_{k=t}^{T} (γλ)^(k−t) · δ_k         (computed backwards: A_t = δ_t + γλ·A_{t+1})
        G_t = A_t + V_t                             (the λ-return, the critic's regression target)

    λ = 1 gives the Monte-Carlo advantage ``Σ_k γ^(k−t) r_k − V_t``; λ = 0 the one-step TD error.
    ``rewards``/``values``: (T,). Returns ``(A, G)``, both (T,) float64.
    """
    if rewards.shape != values.shape or rewards.ndim != 1:
        raise InvalidInput(
            f"rewards and values must both be (T,), got {tuple(rewards.shape)} and {tuple(values.shape)}"
        )
    if not 0.0 < gamma <= 1.0 or not 0.0 <= lam <= 1.0:
        raise InvalidInput(f"gamma must be in (0, 1] and lam in [0, 1], got gamma={gamma!r}, lam={lam!r}")
    r, v = rewards.to(torch.float64), values.to(torch.float64)
    T = r.shape[0]
    adv = torch.zeros(T, dtype=torch.float64)
    running = 0.0
    for t in range(T - 1, -1, -1):
        next_value = float(v[t + 1]) if t + 1 < T else 0.0
        delta = float(r[t]) + gamma * next_value - float(v[t])
        running = delta + gamma * lam * running
        adv[t] = running
    return adv, adv + v


def batch_gae(
    rewards: Tensor, values: Tensor, rollout_index: Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """:func:`gae` for each rollout of a batch: ``rewards``/``values`` (M,) with the calls of each rollout
    consecutive and in call order, ``rollout_index`` (M,) the rollout of each call. Returns (A, G), (M,)."""
    adv = torch.zeros(rewards.shape[0], dtype=torch.float64)
    ret = torch.zeros_like(adv)
    for i in ints(unique_consecutive(rollout_index)):
        sel = (rollout_index == i).nonzero().flatten()
        if sel.numel() and int(sel[-1] - sel[0]) + 1 != sel.numel():
            raise InvalidInput(f"the calls of rollout {i} are not consecutive in the batch; sort them by rollout")
        a, g = gae(rewards[sel], values[sel], gamma=gamma, lam=lam)
        adv[sel], ret[sel] = a, g
    return adv, ret


def whiten(x: Tensor, *, eps: float = 1e-8) -> Tensor:
    """``(x − mean x) / (std x + eps)`` over all elements (population std); a single element maps to 0."""
    x = x.to(torch.float64)
    if x.numel() <= 1:
        return torch.zeros_like(x)
    return (x - x.mean()) / (x.std(correction=0) + eps)


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float | None) -> Tensor:
    """Per-call PPO value loss with value clipping (as in OpenAI's baselines PPO2)::

        V_clip = V_old + clip(V − V_old, −c, c)
        ℓ_V    = ½ · max((V − G)², (V_clip − G)²)

    so one update cannot move a value prediction more than ``c`` away from the one the advantages were
    computed with (and gains nothing by trying). ``clip=None``: ``ℓ_V = ½ (V − G)²``.
    ``values``/``old_values``/``returns``: (B,). Returns (B,).
    """
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * unclipped
    v_clip = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum(unclipped, (v_clip - returns) ** 2)


def kl_token_rewards(old_logp: Tensor, ref_logp: Tensor, kl_coef: float) -> Tensor:
    """The KL part of REINFORCE++'s per-token reward: ``−β · (log π_old(x_j) − log π_ref(x_j))`` (the k1
    estimator on the sampled tokens). (n,) → (n,)."""
    return -kl_coef * (old_logp - ref_logp)


def token_returns(token_rewards: Tensor, *, gamma: float = 1.0) -> Tensor:
    """Return-to-go over the n response tokens of one rollout (its calls' tokens one after the other)::

        G_j = Σ_{k=j}^{n} γ^(k−j) · r_k

    computed backwards (``G_j = r_j + γ·G_{j+1}``). (n,) → (n,) float64.
    """
    r = token_rewards.to(torch.float64)
    out = torch.zeros_like(r)
    running = 0.0
    for j in range(r.shape[0] - 1, -1, -1):
        running = float(r[j]) + gamma * running
        out[j] = running
    return out


def reinforce_pp_rewards(
    call_lengths: list[int], call_rewards: Tensor, kl_rewards: Tensor | None = None
) -> Tensor:
    """REINFORCE++'s per-token rewards of one rollout (Hu, 2025): each call's reward ``r_t`` on the call's
    last response token, plus the KL reward (:func:`kl_token_rewards`) on every token::

        r_j = Σ_t 1[j = last token of call t] · r_t  −  β·KL_j

    ``call_lengths``: response tokens of each call (T), ``call_rewards``: (T,) from :func:`step_rewards`,
    ``kl_rewards``: (n,) with n = Σ lengths, or None. Returns (n,) float64.
    """
    n = sum(call_lengths)
    if any(length < 1 for length in call_lengths):
        raise InvalidInput(f"every call needs at least one response token, got lengths {call_lengths}")
    out = torch.zeros(n, dtype=torch.float64) if kl_rewards is None else kl_rewards.to(torch.float64).clone()
    if out.shape[0] != n:
        raise InvalidInput(f"kl_rewards has {out.shape[0]} entries for {n} response tokens")
    ends = torch.cumsum(torch.tensor(call_lengths), 0) - 1  # (T,) index of each call's last token
    out[ends] += call_rewards.to(torch.float64)
    return out


def normalize_tokens(returns: list[Tensor], *, eps: float = 1e-6) -> list[Tensor]:
    """REINFORCE++'s global batch normalisation: every token return of the batch (the rows of ``returns``,
    one per call, of any lengths) mapped to ``(G − μ) / (σ + eps)``, with μ and σ (population) over all
    tokens of the batch together — not per prompt group. Returns the rows in the same shapes."""
    if not returns:
        return []
    flat = torch.cat([r.to(torch.float64) for r in returns])  # (n,)
    mean, std = flat.mean(), flat.std(correction=0)
    return [(r.to(torch.float64) - mean) / (std + eps) for r in returns]
