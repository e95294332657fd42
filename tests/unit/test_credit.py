"""Credit assignment functions against numbers worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from tracerl.credit import (
    attach_rewards,
    call_advantages,
    call_returns,
    group_baselines,
    k3_kl,
    ppo_clip_token_loss,
    token_weights,
)
from tracerl.errors import InvalidInput


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def ids(*xs: int) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.int64)


def test_rewards_attach_to_the_latest_preceding_call_and_early_ones_to_the_first() -> None:
    # calls at seq 2, 5, 9; rewards: seq 0 (before any call) → call 1; seq 3 → call 1 (after seq 2);
    # seq 6 and seq 7 → call 2 (after seq 5); seq 12 → call 3.
    r = attach_rewards(ids(2, 5, 9), ids(0, 3, 6, 7, 12), t(0.5, 0.25, 1.0, -0.5, 2.0))
    # call 1: 0.5 + 0.25 = 0.75; call 2: 1.0 − 0.5 = 0.5; call 3: 2.0
    assert r.tolist() == [0.75, 0.5, 2.0]


def test_attach_rewards_without_rewards_is_zero() -> None:
    assert attach_rewards(ids(1, 2), ids(), t()).tolist() == [0.0, 0.0]


def test_uniform_discounted_and_step_returns() -> None:
    r = t(0.0, 0.5, 0.0)  # an intermediate reward of 0.5 on call 2 of T = 3
    R, g = 1.0, 0.5
    assert call_returns(r, R, mode="uniform").tolist() == [1.0, 1.0, 1.0]
    # γ^(T−t)·R: t=1 → 0.5² = 0.25, t=2 → 0.5, t=3 → 1
    assert call_returns(r, R, mode="discounted", gamma=g).tolist() == [0.25, 0.5, 1.0]
    # step: G_3 = r_3 + R = 1; G_2 = r_2 + γ·G_3 = 0.5 + 0.5 = 1.0; G_1 = r_1 + γ·G_2 = 0 + 0.5 = 0.5
    assert call_returns(r, R, mode="step", gamma=g).tolist() == [0.5, 1.0, 1.0]
    # step with γ = 1: G_t = Σ_{k≥t} r_k + R → [1.5, 1.5, 1.0]
    assert call_returns(r, R, mode="step").tolist() == [1.5, 1.5, 1.0]
    # total: every call Σ_k r_k + R = 0.5 + 1, whatever γ
    assert call_returns(r, R, mode="total", gamma=g).tolist() == [1.5, 1.5, 1.5]


def test_returns_refuse_bad_gamma_and_mode() -> None:
    with pytest.raises(InvalidInput, match="gamma"):
        call_returns(t(0.0), 1.0, mode="discounted", gamma=1.5)
    with pytest.raises(InvalidInput, match="returns mode"):
        call_returns(t(0.0), 1.0, mode="bogus")  # type: ignore[arg-type]


def test_grpo_mean_std_and_no_std() -> None:
    # one group of 4 with scores 1, 0, 0, 1: μ = 0.5, population σ = 0.5
    s, g = t(1, 0, 0, 1), ids(0, 0, 0, 0)
    st = group_baselines(s, g, method="grpo", eps=1e-4)
    adv = call_advantages(s, ids(0, 1, 2, 3), st)
    a = 0.5 / (0.5 + 1e-4)  # (1 − 0.5) / (σ + ε)
    assert adv.tolist() == pytest.approx([a, -a, -a, a], abs=1e-12)
    st = group_baselines(s, g, method="grpo", scale="none")
    assert call_advantages(s, ids(0, 1, 2, 3), st).tolist() == [0.5, -0.5, -0.5, 0.5]


def test_rloo_leave_one_out() -> None:
    # scores 3, 1, 2 in one group: b_1 = (1+2)/2 = 1.5, b_2 = (3+2)/2 = 2.5, b_3 = (3+1)/2 = 2
    s = t(3, 1, 2)
    st = group_baselines(s, ids(0, 0, 0), method="rloo", scale="none")
    assert st.baseline.tolist() == [1.5, 2.5, 2.0]
    assert call_advantages(s, ids(0, 1, 2), st).tolist() == [1.5, -1.5, 0.0]


def test_batch_baseline_uses_the_whole_batch() -> None:
    # two groups: (1, 1) and (0, 1): batch μ = 0.75, σ = sqrt((3·0.0625 + 0.5625)/4) = sqrt(0.1875)
    s = t(1, 1, 0, 1)
    st = group_baselines(s, ids(0, 0, 1, 1), method="batch", scale="none")
    assert call_advantages(s, ids(0, 1, 2, 3), st).tolist() == [0.25, 0.25, -0.75, 0.25]
    # group 0 has no variance inside, but the batch does: nothing is skipped with a batch baseline
    assert st.keep.tolist() == [True] * 4 and st.zero_variance_groups == 0
    st = group_baselines(s, ids(0, 0, 1, 1), method="batch", eps=0.0)
    assert st.divisor.tolist() == pytest.approx([math.sqrt(0.1875)] * 4)


def test_zero_variance_groups_are_masked_and_counted() -> None:
    # groups: A = (1, 1) flat, B = (0, 1), C = (0.3, 0.3, 0.3) flat, D = (5) single rollout (flat)
    s = t(1, 1, 0, 1, 0.3, 0.3, 0.3, 5)
    g = ids(0, 0, 1, 1, 2, 2, 2, 3)
    for method in ("grpo", "rloo"):
        st = group_baselines(s, g, method=method)  # type: ignore[arg-type]
        assert st.keep.tolist() == [False, False, True, True, False, False, False, False]
        assert st.zero_variance_groups == 3 and st.groups == 4
        adv = call_advantages(s, ids(0, 1, 2, 3, 4, 5, 6, 7), st)
        assert adv[[0, 1, 4, 5, 6, 7]].abs().max() == 0.0  # skipped rollouts get no advantage
    st = group_baselines(t(2, 2, 2), ids(0, 1, 1), method="batch")
    assert st.keep.tolist() == [False] * 3 and st.zero_variance_groups == 2


def test_step_and_uniform_give_different_advantages_with_intermediate_rewards() -> None:
    # a group of 2 rollouts of 2 calls each, γ = 1, no std (scale="none") to keep the numbers plain.
    # rollout 1: reward 0.5 after call 1, final R = 1;  rollout 2: no intermediate reward, R = 0.
    r1 = attach_rewards(ids(0, 2), ids(1), t(0.5))  # [0.5, 0]
    r2 = attach_rewards(ids(0, 1), ids(), t())  # [0, 0]
    returns = {
        mode: torch.cat([call_returns(r1, 1.0, mode=mode), call_returns(r2, 0.0, mode=mode)])
        for mode in ("uniform", "step", "total")
    }
    calls = ids(0, 0, 1, 1)
    adv = {}
    for mode, g in returns.items():
        scores = g[[0, 2]]  # s_i = G_{i,1}
        st = group_baselines(scores, ids(0, 0), scale="none")
        adv[mode] = call_advantages(g, calls, st).tolist()
    # uniform: G = [1, 1 | 0, 0]; μ = 0.5 → A = [0.5, 0.5 | −0.5, −0.5]
    assert adv["uniform"] == [0.5, 0.5, -0.5, -0.5]
    # step: rollout 1 G = [0.5 + 1, 1] = [1.5, 1]; rollout 2 G = [0, 0]; scores (1.5, 0) → b = 0.75
    # A = [1.5 − 0.75, 1 − 0.75 | −0.75, −0.75] = [0.75, 0.25, −0.75, −0.75]
    assert adv["step"] == [0.75, 0.25, -0.75, -0.75]
    # total: G = [1.5, 1.5 | 0, 0], b = 0.75 → the rewarded rollout's later call is not ranked below its first
    assert adv["total"] == [0.75, 0.75, -0.75, -0.75]


def test_step_returns_push_every_late_call_below_the_baseline_and_total_does_not() -> None:
    """A group of 4 rollouts of 3 calls (search, search, answer), all answering wrongly (R = 0); the searches
    earn 0.2, 0.2 / 0.2, 0 / 0, 0 / 0.2, 0.2 (γ = 1, scale="none"). Scores 0.4, 0.2, 0, 0.4 → b = 0.25.
    step: the answer calls' return is 0 in every rollout → A = −0.25 on all four, whatever its rollout did;
    total: the answer call shares its rollout's score → A = 0.15, −0.05, −0.25, 0.15 (sum 0)."""
    earned = [(0.2, 0.2), (0.2, 0.0), (0.0, 0.0), (0.2, 0.2)]
    adv = {}
    for mode in ("step", "total"):
        g = [call_returns(t(a, b, 0.0), 0.0, mode=mode) for a, b in earned]  # type: ignore[arg-type]
        st = group_baselines(torch.stack([x[0] for x in g]), ids(0, 0, 0, 0), scale="none")
        adv[mode] = call_advantages(torch.cat(g), ids(*[i for i in range(4) for _ in range(3)]), st)
    answers = [2, 5, 8, 11]
    assert adv["step"][answers].tolist() == pytest.approx([-0.25] * 4)
    assert adv["total"][answers].tolist() == pytest.approx([0.15, -0.05, -0.25, 0.15])
    assert float(adv["total"][answers].sum()) == pytest.approx(0.0)


def test_rollout_normalisation_weighs_rollouts_equally_and_token_mode_weighs_tokens() -> None:
    # rollout 0: one call of 2 tokens; rollout 1: two calls of 3 and 1 tokens (4 tokens in all)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    rollout = ids(0, 1, 1)
    w = token_weights(mask, rollout, norm="rollout")
    # rollout 0: 1/(2·2) = 0.25 per token; rollout 1: 1/(4·2) = 0.125 per token; each rollout sums to 0.5
    assert w.tolist() == [[0.25, 0.25, 0.0], [0.125, 0.125, 0.125], [0.125, 0.0, 0.0]]
    w = token_weights(mask, rollout, norm="token")
    # 6 tokens: 1/6 each, so rollout 1 (4 tokens) weighs twice rollout 0
    torch.testing.assert_close(w, torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]]) / 6.0)
    w = token_weights(mask, rollout, norm="rollout", row_weight=torch.tensor([1.0, 0.0, 1.0]))
    assert w.tolist() == [[0.25, 0.25, 0.0], [0.0, 0.0, 0.0], [0.125, 0.0, 0.0]]


def test_ppo_clip_loss_and_clip_marks() -> None:
    eps_lo, eps_hi = 0.2, 0.3
    # tokens with log-ratio ln 1.5 (ρ = 1.5), 0 (ρ = 1), ln 0.5 (ρ = 0.5)
    old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5], [1.5, 1.0, 0.5]]))
    adv = torch.tensor([2.0, -1.0])
    loss, ratio, clipped = ppo_clip_token_loss(logp, old, adv, eps_low=eps_lo, eps_high=eps_hi)
    # A = 2:  ρ=1.5 → min(3, 1.3·2 = 2.6) = 2.6 (clipped); ρ=1 → 2; ρ=0.5 → min(1, 0.8·2 = 1.6) = 1
    # A = −1: ρ=1.5 → min(−1.5, −1.3) = −1.5; ρ=1 → −1; ρ=0.5 → min(−0.5, −0.8) = −0.8 (clipped)
    torch.testing.assert_close(loss, torch.tensor([[-2.6, -2.0, -1.0], [1.5, 1.0, 0.8]]))
    torch.testing.assert_close(ratio, torch.tensor([[1.5, 1.0, 0.5]] * 2))
    assert clipped.tolist() == [[True, False, False], [False, False, True]]


def test_k3_kl() -> None:
    # δ = ln π_ref − ln πθ = ln 2 → e^δ − δ − 1 = 2 − ln 2 − 1 = 1 − ln 2; δ = 0 → 0
    kl = k3_kl(torch.tensor([0.0, -1.0]), torch.tensor([math.log(2.0), -1.0]))
    assert kl.tolist() == pytest.approx([1 - math.log(2.0), 0.0], abs=1e-6)


def test_truncated_is_weights_are_the_probability_ratio_capped() -> None:
    from tracerl.credit import truncated_is_weights

    # ln π_l − ln π_s = 0 → 1; ln 1.5 → 1.5; ln 3 → capped at 2; ln 0.25 → 0.25 (never raised)
    learner = torch.tensor([[0.0, math.log(1.5), math.log(3.0), math.log(0.25)]])
    sampler = torch.zeros(1, 4)
    w = truncated_is_weights(learner, sampler, cap=2.0)
    assert w.tolist()[0] == pytest.approx([1.0, 1.5, 2.0, 0.25])
    assert not w.requires_grad


def test_sampler_mismatch_is_zero_when_they_agree_and_the_hand_numbers_when_not() -> None:
    from tracerl.credit import sampler_mismatch

    mask = torch.tensor([[True, True, False]])
    same = torch.tensor([[-1.0, -2.0, -3.0]])
    m = sampler_mismatch(same, same.clone(), mask)
    assert (m.mean_abs, m.max_abs, m.kl, m.tokens) == (0.0, 0.0, 0.0, 2)
    # Δ = learner − sampler = (0.5, −0.1) on the two masked tokens (the third, Δ = 9, is masked out)
    learner = torch.tensor([[-0.5, -2.1, 6.0]])
    m = sampler_mismatch(learner, same, mask)
    assert m.mean_abs == pytest.approx(0.3) and m.max_abs == pytest.approx(0.5)
    # k3 = mean(e^Δ − Δ − 1) = ((e^0.5 − 1.5) + (e^−0.1 − 0.9)) / 2
    assert m.kl == pytest.approx(((math.exp(0.5) - 1.5) + (math.exp(-0.1) - 0.9)) / 2)
    assert sampler_mismatch(learner, same, torch.zeros(1, 3, dtype=torch.bool)).tokens == 0
