"""The learner reports how old the weights that sampled the trained calls were (in updates)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tracerl.algorithms.grpo import GRPOConfig
from tracerl.algorithms.learner import GRPOLearner
from tracerl.algorithms.transitions import Transition


def test_staleness_of_the_trained_calls_is_reported_and_too_old_ones_dropped() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0,
    ))  # fmt: skip
    learner = GRPOLearner(model, GRPOConfig(model="micro", lr=1e-2, bf16=False, device="cpu", max_staleness=2),
                          weights_version=5)  # fmt: skip
    versions = [5, 4, 3, 2, None]  # lags 0, 1, 2 (kept), 3 (> max_staleness 2: dropped), unknown (kept)
    ts = [Transition([3, 4], [5, 6], [-3.0, -3.0], 1.0 if i % 2 else -1.0, f"r{i}", weights_version=v)
          for i, v in enumerate(versions)]  # fmt: skip
    m = learner.update(ts).metrics
    assert m["dropped"] == 1 and m["transitions"] == 4
    assert m["staleness_mean"] == (0 + 1 + 2) / 3
    assert m["staleness_max"] == 2 and m["unknown_version"] == 1
