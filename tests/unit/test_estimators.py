"""GAE, the clipped value loss, REINFORCE++ token returns and RLOO advantages against numbers worked out by
hand in each test."""

from __future__ import annotations

import pytest
import torch

from tracerl.algorithms import estimators as est
from tracerl.algorithms.rloo import RLOO
from tracerl.algorithms.rollout_batch import rollouts_batch
from tracerl.algorithms.transitions import LLMCallRecord, RolloutRecord, assign_credit
from tracerl.errors import ConfigError, InvalidInput


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def test_gae_by_hand() -> None:
    # r = [0.1, 0, 1.0] (0.1 emitted after call 1, final R = 1 on call 3), V = [0.5, 0.2, 0.4], γ 0.9, λ 0.5
    # δ3 = 1 + 0 − 0.4 = 0.6;  δ2 = 0 + 0.9·0.4 − 0.2 = 0.16;  δ1 = 0.1 + 0.9·0.2 − 0.5 = −0.22
    # A3 = 0.6;  A2 = 0.16 + 0.45·0.6 = 0.43;  A1 = −0.22 + 0.45·0.43 = −0.0265;  G = A + V
    adv, ret = est.gae(t(0.1, 0.0, 1.0), t(0.5, 0.2, 0.4), gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, t(-0.0265, 0.43, 0.6))
    torch.testing.assert_close(ret, t(0.4735, 0.63, 1.0))


def test_gae_lambda_one_is_return_to_go_minus_value_and_lambda_zero_is_td() -> None:
    adv, ret = est.gae(t(0.1, 0.0, 1.0), t(0.5, 0.2, 0.4), gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, t(1.1 - 0.5, 1.0 - 0.2, 1.0 - 0.4))
    torch.testing.assert_close(ret, t(1.1, 1.0, 1.0))
    adv0, _ = est.gae(t(0.1, 0.0, 1.0), t(0.5, 0.2, 0.4), gamma=1.0, lam=0.0)
    torch.testing.assert_close(adv0, t(0.1 + 0.2 - 0.5, 0.0 + 0.4 - 0.2, 1.0 - 0.4))


def test_batch_gae_keeps_rollouts_apart() -> None:
    # rollout 0: one call, r 1, V 0.25 → A 0.75; rollout 1: two calls r [0, 0], V [0.5, 0.5] (γ = λ = 1)
    adv, ret = est.batch_gae(t(1.0, 0.0, 0.0), t(0.25, 0.5, 0.5), torch.tensor([0, 1, 1]), gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, t(0.75, -0.5, -0.5))
    torch.testing.assert_close(ret, t(1.0, 0.0, 0.0))
    with pytest.raises(InvalidInput, match="not consecutive"):
        est.batch_gae(t(1, 0, 0), t(0, 0, 0), torch.tensor([0, 1, 0]))


def test_clipped_value_loss_by_hand() -> None:
    # call 1: V 1.0, V_old 0.5, G 0.9: (1−0.9)² = 0.01; V_clip = 0.5 + 0.2 = 0.7, (0.7−0.9)² = 0.04 → ½·0.04
    # call 2: V 0.0, V_old 0.3, G 0.5: (0−0.5)² = 0.25; V_clip = 0.3 − 0.2 = 0.1, (0.1−0.5)² = 0.16 → ½·0.25
    v, old, g = t(1.0, 0.0), t(0.5, 0.3), t(0.9, 0.5)
    torch.testing.assert_close(est.clipped_value_loss(v, old, g, 0.2), t(0.02, 0.125))
    torch.testing.assert_close(est.clipped_value_loss(v, old, g, None), t(0.005, 0.125))


def test_reinforce_pp_token_returns_and_global_normalisation_by_hand() -> None:
    # two calls of 2 and 3 tokens, call rewards [0.1, 1.0]; log π_old − log π_ref = [0.2, −0.1, 0, 0.3, 0.1], β 0.5
    kl = est.kl_token_rewards(t(0.2, -0.1, 0.0, 0.3, 0.1), t(0, 0, 0, 0, 0), 0.5)
    torch.testing.assert_close(kl, t(-0.1, 0.05, 0.0, -0.15, -0.05))
    r = est.reinforce_pp_rewards([2, 3], t(0.1, 1.0), kl)
    torch.testing.assert_close(r, t(-0.1, 0.15, 0.0, -0.15, 0.95))
    g = est.token_returns(r)  # reverse cumulative sums
    torch.testing.assert_close(g, t(0.85, 0.95, 0.8, 0.8, 0.95))
    torch.testing.assert_close(est.token_returns(t(0.0, 1.0), gamma=0.5), t(0.5, 1.0))
    # mean 0.87; deviations −0.02, 0.08, −0.07, −0.07, 0.08; variance 0.023 / 5 = 0.0046
    first, second = est.normalize_tokens([g[:2], g[2:]], eps=0.0)
    std = 0.0046**0.5
    torch.testing.assert_close(first, t(-0.02 / std, 0.08 / std))
    torch.testing.assert_close(second, t(-0.07 / std, -0.07 / std, 0.08 / std))


def test_step_rewards_place_intermediate_rewards_and_the_final_on_the_last_call() -> None:
    # calls at seq 1, 3, 5; rewards 0.1 at seq 2 (after call 1) and 0.2 at seq 6 (after call 3); R = 1
    r = est.step_rewards(torch.tensor([1, 3, 5]), torch.tensor([2, 6]), t(0.1, 0.2), 1.0)
    torch.testing.assert_close(r, t(0.1, 0.0, 1.2))


def _record(rid: str, group: str, final: float, seqs: list[int], rewards: list[tuple[int, float]]) -> RolloutRecord:
    calls = [LLMCallRecord(seq=s, prompt_ids=[1, 2], response_ids=[3, 4], logprobs=[-1.0, -1.0]) for s in seqs]
    return RolloutRecord(rid, group, final, calls, rewards)


def test_rollouts_batch_keeps_calls_in_order_with_their_rewards() -> None:
    batch = rollouts_batch([
        _record("a", "g", 1.0, [5, 1, 3], [(2, 0.1), (6, 0.2)]),  # calls listed out of order
        _record("b", "g", 1.0, [1], []),
        _record("c", "h", 0.0, [], []),
    ])  # fmt: skip
    assert [(x.rollout_id, x.call_index) for x in batch.transitions] == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    assert batch.call_rewards == pytest.approx([0.1, 0.0, 1.2, 1.0])
    # group g has equal rewards: counted as zero-variance (for dynamic sampling), yet its calls are kept
    assert (batch.groups, batch.zero_variance_groups, batch.skipped_rollouts) == (1, 1, {"no_calls": 1})


def test_rloo_advantages_by_hand() -> None:
    # group of 3 with R = [1, 0, 0.5]: leave-one-out means [0.25, 0.75, 0.5] → A = [0.75, −0.75, 0], no std
    algo = RLOO(model="tiny-random", group_size=3)
    assert (algo.name, algo.config.advantage, algo.config.scale) == ("rloo", "rloo", "none")
    records = [_record(r, "g", f, [1], []) for r, f in (("a", 1.0), ("b", 0.0), ("c", 0.5))]
    c = algo.config
    batch = assign_credit(records, advantage=c.advantage, scale=c.scale, eps=c.adv_eps)  # type: ignore[arg-type]
    assert [x.advantage for x in batch.transitions] == pytest.approx([0.75, -0.75, 0.0])
    with pytest.raises(ConfigError, match="leave-one-out"):
        RLOO(model="tiny-random", advantage="grpo")


def test_rollouts_batch_keeps_one_models_calls_and_moves_the_others_rewards() -> None:
    # calls: planner@1, solver@3, planner@5, solver@7; rewards 0.1@2 (planner 1), 0.2@4 (solver 3),
    # 0.3@6 (planner 5); final 1.0. Kept: the solver's calls. 0.1 precedes every solver call → first kept
    # (seq 3); 0.3 follows planner 5 → the kept call before it (seq 3); final on the last kept call (seq 7).
    def call(seq: int, model: str) -> LLMCallRecord:
        return LLMCallRecord(seq=seq, prompt_ids=[1], response_ids=[2], logprobs=[-1.0], model=model)

    record = RolloutRecord("a", "g", 1.0, [call(1, "planner"), call(3, "solver"), call(5, "planner"),
                                           call(7, "solver")], [(2, 0.1), (4, 0.2), (6, 0.3)])  # fmt: skip
    batch = rollouts_batch([record, RolloutRecord("b", "g", 0.0, [call(1, "planner")])], models=["solver"])
    assert [(x.model, x.call_index) for x in batch.transitions] == [("solver", 0), ("solver", 1)]
    assert batch.call_rewards == pytest.approx([0.1 + 0.2 + 0.3, 1.0])
    assert batch.skipped_rollouts == {"no_calls": 1}  # rollout b has no solver call


def test_grpo_credit_with_train_models_keeps_only_that_models_calls() -> None:
    # two rollouts of one group, R = [1, 0]: mean 0.5, std 0.5 → A = ±0.5/(0.5 + 1e-4) on every call; only the
    # solver's calls become transitions, the planner's are credit context only
    def rec(rid: str, final: float) -> RolloutRecord:
        calls = [LLMCallRecord(seq=s, prompt_ids=[1], response_ids=[2], logprobs=[-1.0], model=m)
                 for s, m in ((1, "planner"), (2, "solver"))]  # fmt: skip
        return RolloutRecord(rid, "g", final, calls)

    batch = assign_credit([rec("a", 1.0), rec("b", 0.0)], models=["solver"])
    assert [(x.rollout_id, x.model) for x in batch.transitions] == [("a", "solver"), ("b", "solver")]
    assert [x.advantage for x in batch.transitions] == pytest.approx([0.5 / 0.5001, -0.5 / 0.5001])
