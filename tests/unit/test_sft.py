"""SFT: the loss on hand-built examples equals the hand computation, it trains only response tokens, the
update lowers it, and the config refuses what cannot work."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tracerl.algorithms.sft import SFT, SFTConfig, SFTExample
from tracerl.algorithms.sft_learner import SFTLearner
from tracerl.errors import ConfigError


def micro_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0,
    )
    return LlamaForCausalLM(cfg)


def nll(model: torch.nn.Module, prompt: list[int], response: list[int]) -> list[float]:
    """−log p(response_j | prompt, response_<j) from one plain forward of the sequence alone."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0]
    lp = logits.log_softmax(-1)
    return [-float(lp[len(prompt) - 1 + j, tok]) for j, tok in enumerate(response)]


EXAMPLES = [SFTExample([3, 4, 5], [6, 7, 2]), SFTExample([3, 4, 5], [8, 2]), SFTExample([9, 10], [11, 12, 13, 2])]


def config(**kw: object) -> SFTConfig:
    base: dict[str, object] = {"model": "micro", "lr": 1e-2, "bf16": False, "device": "cpu", "max_grad_norm": None,
                               "demonstrations": []}
    base.update(kw)
    return SFTConfig(**base)  # type: ignore[arg-type]


def test_token_loss_is_the_mean_nll_of_every_response_token() -> None:
    model = micro_llama()
    per_token = [x for e in EXAMPLES for x in nll(model, e.prompt_ids, e.response_ids)]  # 3 + 2 + 4 = 9 tokens
    result = SFTLearner(model, config(micro_batch_size=2)).update(EXAMPLES)
    assert result.metrics["tokens"] == 9
    assert result.metrics["loss"] == pytest.approx(sum(per_token) / 9, rel=1e-5)
    assert result.metrics["nll_per_token"] == pytest.approx(sum(per_token) / 9, rel=1e-5)


def test_rollout_norm_averages_each_example_then_the_examples() -> None:
    model = micro_llama()
    means = [sum(v) / len(v) for v in (nll(model, e.prompt_ids, e.response_ids) for e in EXAMPLES)]
    result = SFTLearner(model, config(loss_norm="rollout")).update(EXAMPLES)
    assert result.metrics["loss"] == pytest.approx(sum(means) / 3, rel=1e-5)


def test_updates_lower_the_loss_and_leave_prompt_tokens_untrained() -> None:
    model = micro_llama()
    learner = SFTLearner(model, config())
    first = learner.update(EXAMPLES).metrics["loss"]
    for _ in range(20):
        last = learner.update(EXAMPLES).metrics["loss"]
    assert last < 0.5 * first
    # the prompt is context, not a target: the model was never pushed to predict prompt token 4 after 3
    fresh = micro_llama()
    assert nll(learner.model, [3], [4])[0] > nll(fresh, [3], [4])[0] - 1.0


def test_micro_batch_size_and_token_budget_do_not_change_the_update() -> None:
    results = []
    for size, tokens in ((1, None), (3, None), (3, 6)):  # 6 tokens: a row each ([3, 4, 5] + two replies: 8)
        learner = SFTLearner(micro_llama(), config(micro_batch_size=size, micro_batch_tokens=tokens))
        result = learner.update(EXAMPLES)
        assert result.metrics["micro_batches"] == (3 if size == 1 or tokens else 1)
        results.append(learner.engine_state_dict())
    for other in results[1:]:
        for key, value in results[0].items():
            torch.testing.assert_close(value, other[key], rtol=1e-5, atol=1e-6)


def test_sft_config_wants_exactly_one_source_of_examples(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="exactly one source"):
        SFT("tiny-random")
    with pytest.raises(ConfigError, match="exactly one source"):
        SFT("tiny-random", demonstrations=[], group_size=4)
    with pytest.raises(ConfigError, match="does not exist"):
        SFT("tiny-random", demonstrations="no/such/file.jsonl")
    with pytest.raises(ConfigError, match="unknown SFT option"):
        SFT("tiny-random", demonstrations=[], epochs=3)
    assert SFT("tiny-random", group_size=4, min_reward=0.5).group_size == 4
