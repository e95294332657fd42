"""The GRPO learner on a micro Llama: exact loss, ratios, staleness, micro-batching, LoRA, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tracerl.algorithms.grpo import GRPO, GRPOConfig
from tracerl.algorithms.learner import GRPOLearner
from tracerl.algorithms.transitions import Transition
from tracerl.errors import ConfigError


def micro_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0,
    )
    return LlamaForCausalLM(cfg)


def token_logprobs(model: torch.nn.Module, prompt: list[int], response: list[int]) -> list[float]:
    """log π(response_j | prompt, response_<j) from one unpadded forward of this sequence alone."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0]  # (P+R, V)
    lp = logits.log_softmax(-1)
    return [float(lp[len(prompt) - 1 + j, tok]) for j, tok in enumerate(response)]


def config(**kw: object) -> GRPOConfig:
    base: dict[str, object] = {"model": "micro", "lr": 1e-2, "bf16": False, "device": "cpu", "max_grad_norm": None}
    base.update(kw)
    return GRPOConfig(**base)  # type: ignore[arg-type]


# rollout "a": one call; rollout "b": two calls (the second extends the first)
CALLS = [
    ("a", [3, 4, 5], [6, 7], 1.0),
    ("b", [3, 4], [8, 9, 10], -0.5),
    ("b", [3, 4, 8, 9, 10, 11], [12], -0.5),
]


def batch(model: torch.nn.Module, offsets: list[list[float]], version: int | None = None) -> list[Transition]:
    """Transitions whose recorded log-probs are the model's own plus ``offsets`` (old = true − offset)."""
    out = []
    for (rid, p, r, adv), off in zip(CALLS, offsets, strict=True):
        lp = token_logprobs(model, p, r)
        out.append(Transition(p, r, [x - o for x, o in zip(lp, off, strict=True)], adv, rid, weights_version=version))
    return out


def test_loss_equals_hand_computation_with_recorded_logprobs() -> None:
    model = micro_llama()
    # log-ratios ln ρ = offsets: ρ = e^0.3 ≈ 1.35 (> 1 + 0.25), e^-0.3 ≈ 0.74 (< 1 − 0.2), e^0.1, e^0 …
    offsets = [[0.3, -0.3], [0.1, -0.3, 0.0], [0.3]]
    ts = batch(model, offsets)  # weights_version None: π_old = the recorded log-probs
    learner = GRPOLearner(model, config(clip_eps_low=0.2, clip_eps_high=0.25))
    result = learner.update(ts)

    def term(log_ratio: float, a: float) -> float:
        rho = math.exp(log_ratio)
        return min(rho * a, min(max(rho, 0.8), 1.25) * a)

    # rollout a (A = 1):  ρ = 1.35 → clipped to 1.25 → 1.25;  ρ = 0.74 → 0.74 (min takes the unclipped)
    rollout_a = (term(0.3, 1.0) + term(-0.3, 1.0)) / 2
    assert term(0.3, 1.0) == 1.25 and term(-0.3, 1.0) == pytest.approx(math.exp(-0.3))
    # rollout b (A = −0.5), 4 tokens over its two calls:
    #   ρ = e^0.1 → −0.5·1.105; ρ = 0.74 → clipped: −0.5·0.8 = −0.4; ρ = 1 → −0.5; ρ = 1.35 → −0.5·1.35
    rollout_b = (term(0.1, -0.5) + term(-0.3, -0.5) + term(0.0, -0.5) + term(0.3, -0.5)) / 4
    assert term(-0.3, -0.5) == pytest.approx(-0.4)
    hand = -(rollout_a + rollout_b) / 2  # each rollout weighs ½ whatever its number of calls/tokens
    assert result.metrics["loss"] == pytest.approx(hand, abs=1e-5)
    # clipped tokens: a's first (ρ > 1.25, A > 0) and b's second (ρ < 0.8, A < 0): 2 of 6
    assert result.metrics["clip_fraction"] == pytest.approx(2 / 6)
    assert result.metrics["tokens"] == 6 and result.metrics["rollouts"] == 2


def test_token_normalisation_weighs_every_token_equally() -> None:
    model = micro_llama()
    ts = batch(model, [[0.0, 0.0], [0.0, 0.0, 0.0], [0.0]])
    result = GRPOLearner(model, config(loss_norm="token")).update(ts)
    # ρ = 1 everywhere: loss = −(2·1 + 4·(−0.5)) / 6 = 0
    assert result.metrics["loss"] == pytest.approx(0.0, abs=1e-6)
    model = micro_llama()
    result = GRPOLearner(model, config()).update(batch(model, [[0.0, 0.0], [0.0, 0.0, 0.0], [0.0]]))
    # per rollout: −(1 + (−0.5)) / 2 = −0.25
    assert result.metrics["loss"] == pytest.approx(-0.25, abs=1e-6)


def test_ratio_is_exactly_one_on_the_first_epoch_of_a_batch_sampled_by_the_same_weights() -> None:
    model = micro_llama()
    torch.manual_seed(1)
    ts = []
    for i, prompt in enumerate([[3, 4, 5], [3], [7, 8, 9, 10, 11]]):
        # sample with the model itself and record log-probs of the sampled tokens, as the engine does
        out = model.generate(
            torch.tensor([prompt]), do_sample=True, max_new_tokens=5, min_new_tokens=5, output_logits=True,
            return_dict_in_generate=True, pad_token_id=0,
        )
        response = out.sequences[0, len(prompt):].tolist()
        logprobs = [float(lg[0].log_softmax(-1)[tok]) for lg, tok in zip(out.logits, response, strict=True)]
        ts.append(Transition(prompt, response, logprobs, advantage=1.0 if i else -1.0, rollout_id=f"r{i}",
                             weights_version=0))
    learner = GRPOLearner(model, config(epochs=2, micro_batch_size=2))
    # the learner's padded, batched forward agrees with what the sampler recorded
    from tracerl.algorithms.batch import build_micro_batches

    for mb in build_micro_batches(ts, micro_batch_size=2):
        got = learner.logprobs(mb)
        torch.testing.assert_close(got[mb.response_mask], mb.old_logprobs[mb.response_mask], atol=1e-5, rtol=0)
    result = learner.update(ts)
    first, second = result.epochs
    assert first["ratio_mean"] == 1.0 and first["clip_fraction"] == 0.0
    assert second["ratio_mean"] != 1.0  # the first step moved the policy; the ratio now measures it
    assert result.version == 1 and learner.weights_version == 1


def test_stale_transitions_use_recorded_logprobs_and_too_stale_ones_are_dropped() -> None:
    model = micro_llama()
    learner = GRPOLearner(model, config(max_staleness=1))
    learner.weights_version = 5
    one_behind = batch(model, [[0.2, 0.2], [0.2, 0.2, 0.2], [0.2]], version=4)  # ρ = e^0.2 everywhere
    two_behind = batch(model, [[0.0, 0.0], [0.0, 0.0, 0.0], [0.0]], version=3)
    result = learner.update(one_behind + two_behind)
    assert result.metrics["dropped"] == 3 and result.metrics["transitions"] == 3
    assert result.metrics["ratio_mean"] == pytest.approx(math.exp(0.2), abs=1e-5)


def test_micro_batching_does_not_change_the_loss_or_the_update() -> None:
    results = []
    for mbs in (1, 2, 8):
        model = micro_llama()
        ts = batch(model, [[0.3, -0.3], [0.1, -0.3, 0.0], [0.3]])
        result = GRPOLearner(model, config(micro_batch_size=mbs)).update(ts)
        results.append((result.metrics["loss"], result.state_dict))
    for loss, state in results[1:]:
        assert loss == pytest.approx(results[0][0], abs=1e-6)
        assert state is not None and results[0][1] is not None
        for k, v in state.items():
            torch.testing.assert_close(v, results[0][1][k], atol=1e-6, rtol=1e-5)


def test_kl_to_reference_is_zero_first_then_grows() -> None:
    model = micro_llama()
    learner = GRPOLearner(model, config(kl_coef=0.1))
    ts = batch(model, [[0.0, 0.0], [0.0, 0.0, 0.0], [0.0]], version=None)
    first = learner.update(ts)
    assert first.metrics["kl"] == pytest.approx(0.0, abs=1e-7)
    second = learner.update(ts)
    assert second.metrics["kl"] > 1e-6


def test_lora_engine_weights_reproduce_the_adapted_model(tmp_path: Path) -> None:
    model = micro_llama()
    learner = GRPOLearner(model, config(lora={"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}, lr=5e-2))
    trainable = sum(p.numel() for p in learner.params)
    assert 0 < trainable < sum(p.numel() for p in learner.model.parameters()) // 4
    ts = batch(micro_llama(), [[0.0, 0.0], [0.0, 0.0, 0.0], [0.0]], version=None)
    result = learner.update(ts)
    assert result.state_dict is not None
    plain = micro_llama(seed=123)  # different weights, overwritten by the engine state dict
    plain.load_state_dict(result.state_dict)  # strict: exactly the plain model's names
    x = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(plain(x).logits, learner.model(input_ids=x).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(plain(x).logits, micro_llama()(x).logits)  # and training changed them


def test_checkpoint_resume_gives_identical_next_step_losses(tmp_path: Path) -> None:
    def fresh() -> GRPOLearner:
        return GRPOLearner(micro_llama(), config(lr=3e-2, kl_coef=0.05, epochs=2))

    data = batch(micro_llama(), [[0.3, -0.3], [0.1, -0.3, 0.0], [0.3]])
    a = fresh()
    a.update(data)
    a.save_checkpoint(tmp_path / "ckpt")
    expected = [a.update(data).metrics["loss"] for _ in range(2)]  # steps 2 and 3 (AdamW moments matter)

    b = fresh()
    b.load_checkpoint(tmp_path / "ckpt")
    assert b.step == 1 and b.weights_version == 1
    got = [b.update(data).metrics["loss"] for _ in range(2)]
    assert got == expected  # bit-identical

    c = fresh()  # without the checkpoint the losses differ: the test can fail
    assert c.update(data).metrics["loss"] != expected[0]


def test_config_refuses_bad_values_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"group_size must be ≥ 2.*advantage='batch'"):
        GRPOConfig(group_size=1)
    GRPOConfig(group_size=1, advantage="batch")
    with pytest.raises(ConfigError, match=r"gamma.*no effect.*returns='discounted'"):
        GRPOConfig(gamma=0.9)
    with pytest.raises(ConfigError, match="clip_eps_low must be in"):
        GRPOConfig(clip_eps_low=1.5)
    with pytest.raises(ConfigError, match=r"lora\.r"):
        GRPOConfig(lora={"r": 0})
    with pytest.raises(ConfigError, match="unknown keys"):
        GRPOConfig(lora={"rank": 8})
    with pytest.raises(ConfigError, match="returns = 'sparse' is not one of"):
        GRPOConfig(returns="sparse")
    with pytest.raises(ConfigError, match=r"unknown GRPO option\(s\) \['learning_rate'\]"):
        GRPO(model="tiny-random", learning_rate=1e-5)
    algo = GRPO(model="tiny-random", group_size=8, lr=2e-5, lora={"r": 8}, returns="step", gamma=0.9)
    assert algo.config.group_size == 8 and algo.config.lora is not None and algo.config.lora.alpha == 32


def test_empty_or_fully_stale_batch_trains_nothing() -> None:
    model = micro_llama()
    learner = GRPOLearner(model, config(max_staleness=0))
    learner.weights_version = 2
    result = learner.update(batch(model, [[0.0, 0.0], [0.0, 0.0, 0.0], [0.0]], version=1))
    assert result.state_dict is None and result.version == 2 and result.metrics["dropped"] == 3


def test_responses_sharing_a_prompt_are_packed_and_scored_as_if_alone() -> None:
    from tracerl.algorithms.batch import build_micro_batches

    model = micro_llama()
    prompt, other = [3, 4, 5, 6], [9, 8]
    responses = [[10, 11], [12, 13, 14], [15], [16, 17]]
    ts = [Transition(prompt, r, [0.0] * len(r), 1.0, f"r{i}") for i, r in enumerate(responses[:3])]
    ts.append(Transition(other, responses[3], [0.0, 0.0], 1.0, "r3"))
    [mb] = build_micro_batches(ts, micro_batch_size=8)
    # two rows: the shared prompt once with its three responses (4 + 2 + 3 + 1 tokens), the other call alone
    assert mb.input_ids.shape == (2, 10)
    got = GRPOLearner(model, config()).logprobs(mb)
    for b, row in enumerate(mb.rows):
        t = ts[row]
        expected = torch.tensor(token_logprobs(model, t.prompt_ids, t.response_ids))
        torch.testing.assert_close(got[b, : len(t.response_ids)], expected, atol=1e-5, rtol=0)


def test_a_learner_at_temperature_t_trains_the_distribution_sampled_at_t() -> None:
    """log π_T(x) = z_x/T − log Σ_v e^{z_v/T}: scored with its graph; the temperature-1 log-probs beside it."""
    model = micro_llama()
    ts = batch(model, [[0.0, 0.0], [0.0, 0.0, 0.0], [0.0]], version=0)  # recorded: the engine's (temperature 1)
    learner = GRPOLearner(model, config(temperature=2.0))
    from tracerl.algorithms.batch import build_micro_batches

    for t in ts:
        (mb,) = build_micro_batches([t], micro_batch_size=8, current_version=0)
        scored = learner.score(mb)
        assert scored.logp.requires_grad and not scored.raw.requires_grad
        with torch.no_grad():
            logits = model(torch.tensor([t.prompt_ids + t.response_ids])).logits[0]
        # hand: the tokens under softmax(z / 2); the temperature-1 ones are what the engine recorded
        at_two = [float((logits[len(t.prompt_ids) - 1 + j] / 2).log_softmax(-1)[tok])
                  for j, tok in enumerate(t.response_ids)]  # fmt: skip
        n = len(t.response_ids)
        torch.testing.assert_close(scored.logp[0, :n].detach(), torch.tensor(at_two), atol=1e-5, rtol=0)
        torch.testing.assert_close(scored.raw[0, :n], torch.tensor(t.logprobs), atol=1e-5, rtol=0)
        assert at_two != pytest.approx(t.logprobs, abs=1e-3)  # the two temperatures do differ here
    result = learner.update(ts)
    # the sampler/learner gap compares temperature-1 log-probs, so agreeing engines show none
    assert result.metrics["mismatch_mean_abs"] == pytest.approx(0.0, abs=1e-5)
    assert result.metrics["ratio_mean"] == 1.0 and result.metrics["transitions"] == 3


def test_at_temperature_not_1_only_the_current_weights_samples_are_trained() -> None:
    model = micro_llama()
    learner = GRPOLearner(model, config(max_staleness=1, temperature=1.5))
    learner.weights_version = 5
    offsets = [[0.0, 0.0], [0.0, 0.0, 0.0], [0.0]]
    one_old, unknown, current = (batch(model, offsets, version=v) for v in (4, None, 5))
    mixed = one_old[:1] + unknown[1:2] + current[2:]
    result = learner.update(mixed)
    # one update old and unknown weights: their recorded log-probs are not π_old at 1.5
    assert result.metrics["dropped"] == 2 and result.metrics["transitions"] == 1
    learner = GRPOLearner(micro_llama(), config(max_staleness=1))
    learner.weights_version = 5
    assert learner.update(mixed).metrics["transitions"] == 3  # at temperature 1 all three are trained


def test_temperature_must_be_positive() -> None:
    for bad in (0.0, -1.0, 11.0, "hot"):
        with pytest.raises(ConfigError, match=r"temperature must be"):
            GRPOConfig(temperature=bad)  # type: ignore[arg-type]


# an agent's calls: one system head (20 tokens), two questions, and the second turn of the first question
HEAD = [3 + (i * 7) % 28 for i in range(20)]
TREE_CALLS = [
    ([*HEAD, 5, 6], [10, 11]),  # question 1, two sampled replies
    ([*HEAD, 5, 6], [12]),
    ([*HEAD, 7], [13, 14, 15]),  # question 2
    ([*HEAD, 5, 6, 10, 11, 9], [16, 17]),  # question 1's second call: its history, then a tool result
    (HEAD, [18]),  # the head alone
]


def tree_batch() -> list[Transition]:
    return [Transition(p, r, [0.0] * len(r), 1.0, f"r{i}") for i, (p, r) in enumerate(TREE_CALLS)]


def test_prompts_with_a_common_head_share_one_row_and_each_call_is_scored_as_if_alone() -> None:
    from tracerl.algorithms.batch import build_micro_batches

    model = micro_llama()
    ts = tree_batch()
    [mb] = build_micro_batches(ts, micro_batch_size=8)
    # one row, a prefix tree: the 20-token head once, then each call's tokens that no earlier call laid out
    # (head alone: [18]; +[5,6]: [5,6,10,11] and [12]; question 1's second call reuses its first call's prompt
    # and reply [10,11]: only [9,16,17]; +[7]: [7,13,14,15])
    assert mb.input_ids.shape == (1, 20 + 1 + 5 + 3 + 4)
    got = GRPOLearner(model, config()).logprobs(mb)
    for b, row in enumerate(mb.rows):
        t = ts[row]
        expected = torch.tensor(token_logprobs(model, t.prompt_ids, t.response_ids))
        torch.testing.assert_close(got[b, : len(t.response_ids)], expected, atol=1e-5, rtol=0)
    # packing identical prompts only: a row per distinct prompt, the longest 25 + 2 tokens (97 real in all)
    [alone] = build_micro_batches(ts, micro_batch_size=8, share_prefix_tokens=None)
    assert alone.input_ids.shape == (4, 27)
    # a sample that drew the same reply as another adds no tokens; both read the same positions
    twin = Transition(ts[0].prompt_ids, ts[0].response_ids, [0.0, 0.0], 1.0, "twin")
    [mb] = build_micro_batches([*ts, twin], micro_batch_size=8)
    assert mb.input_ids.shape == (1, 33)
    first, second = (mb.rows.index(i) for i in (0, len(ts)))
    assert torch.equal(mb.gather_index[first], mb.gather_index[second])


def test_sharing_a_head_gives_the_same_gradient_as_packing_each_prompt_apart() -> None:
    from tracerl.algorithms.batch import build_micro_batches

    model = micro_llama()
    learner = GRPOLearner(model, config())
    ts = tree_batch()

    def grads(share: int | None) -> list[torch.Tensor]:
        model.zero_grad()
        for mb in build_micro_batches(ts, micro_batch_size=3, share_prefix_tokens=share):
            (learner.logprobs(mb) * mb.weights).sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for shared, apart in zip(grads(16), grads(None), strict=True):
        torch.testing.assert_close(shared, apart, atol=1e-5, rtol=1e-4)


def test_a_token_budget_bounds_every_micro_batch_and_leaves_the_update_unchanged() -> None:
    from tracerl.algorithms.batch import build_micro_batches, padded_tokens

    ts = tree_batch()  # packed together: one 33-token row
    long = Transition(list(range(1, 31)), [5] * 10, [0.0] * 10, 1.0, "long")  # 40 tokens: over the budget alone
    ts.append(long)
    assert padded_tokens(ts[:5]) == 33 and padded_tokens([long]) == 40
    mbs = build_micro_batches(ts, micro_batch_size=8, micro_batch_tokens=30)
    assert sorted(r for mb in mbs for r in mb.rows) == list(range(len(ts)))  # every call, once
    assert [mb.rows for mb in mbs if 5 in mb.rows] == [[5]]  # the long call alone: a call is never split
    for mb in mbs:
        assert len(mb.rows) == 1 or mb.input_ids.numel() <= 30, (mb.rows, mb.input_ids.shape)
    assert len(mbs) >= 3  # the tree itself was cut
    assert len(build_micro_batches(ts, micro_batch_size=8, micro_batch_tokens=None)) == 1
    # the loss weights come from the whole batch, so the update is the same however it is cut
    states = []
    for budget in (None, 30, 1):
        model = micro_llama()
        result = GRPOLearner(model, config(micro_batch_tokens=budget)).update(ts)
        assert result.metrics["micro_batches"] == {None: 1, 30: len(mbs), 1: len(ts)}[budget]
        states.append(result.state_dict)
    for state in states[1:]:
        assert state is not None and states[0] is not None
        for k, v in state.items():  # float rounding only (Adam normalizes tiny gradients, hence 1e-5)
            torch.testing.assert_close(v, states[0][k], atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="micro_batch_tokens"):
        config(micro_batch_tokens=0)


def test_a_short_or_small_common_head_is_not_shared() -> None:
    from tracerl.algorithms.batch import build_micro_batches

    short = [Transition([3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, i], [20], [0.0], 1.0, f"r{i}") for i in (16, 17)]
    # 14 common tokens: under the 16-token minimum
    [mb] = build_micro_batches(short, micro_batch_size=8)
    assert mb.input_ids.shape[0] == 2
    # 16 common tokens, but not a quarter of the second prompt (16 + 60 tokens): not worth a longer row
    head = list(range(3, 19))
    small = [Transition([*head, 20], [21], [0.0], 1.0, "a"), Transition(head + [22] * 60, [21], [0.0], 1.0, "b")]
    [mb] = build_micro_batches(small, micro_batch_size=8)
    assert mb.input_ids.shape[0] == 2
    # the same 16 tokens before short tails: shared
    fair = [Transition([*head, 20], [21], [0.0], 1.0, "a"), Transition([*head, 22, 23], [21], [0.0], 1.0, "b")]
    [mb] = build_micro_batches(fair, micro_batch_size=8)
    assert mb.input_ids.shape == (1, 16 + 2 + 3)
