"""PPO (value head) and REINFORCE++ make a rewarded response more likely: the
tiny random model, a memory store, real sampling and updates — the loop of ``test_grpo_learning`` with the
algorithms that estimate advantages in the learner. Reward: the share of sampled tokens with an even id
(about ½ for the random model)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tracerl.algorithms.ppo import PPO, REINFORCEpp
from tracerl.engines.models import load_model
from tracerl.store.memory import MemoryStore
from tracerl.types import AttemptStatus, RolloutSpec, Span, SpanKind

PROMPTS = ["what is 2+3?", "name a colour"]
GROUP = 4
NEW_TOKENS = 4
STEPS = 10


def p_even_first_token(model: torch.nn.Module, prompts: list[list[int]], even: torch.Tensor) -> float:
    with torch.no_grad():
        ps = [model(torch.tensor([p])).logits[0, -1].softmax(-1)[even].sum() for p in prompts]
    return float(torch.stack(ps).mean())


@pytest.mark.parametrize(
    "algo",
    [
        PPO(model="tiny-random", group_size=GROUP, lr=5e-3, critic_lr=1e-2, bf16=False, device="cpu"),
        REINFORCEpp(model="tiny-random", group_size=GROUP, lr=5e-3, kl_coef=0.01, bf16=False, device="cpu"),
    ],
    ids=["ppo", "reinforce++"],
)
def test_reward_rises(algo: Any) -> None:
    model, tokenizer = load_model("tiny-random")
    learner = algo.setup(model, tokenizer)
    prompts: list[list[int]] = [
        list(tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"])
        for q in PROMPTS
    ]  # fmt: skip
    even = torch.arange(0, model.config.vocab_size, 2)
    before = p_even_first_token(model, prompts, even)
    store = MemoryStore()
    torch.manual_seed(0)
    for step in range(STEPS):
        ids = []
        for i, _ in enumerate(prompts):
            specs = [RolloutSpec(task={"prompt": i}, group_id=f"s{step}-p{i}") for _ in range(GROUP)]
            ids += [r.rollout_id for r in store.enqueue(specs)]
        while (claim := store.claim("runner")) is not None:
            prompt = prompts[claim.rollout.task["prompt"]]
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([prompt]), do_sample=True, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                    output_logits=True, return_dict_in_generate=True, pad_token_id=0, top_k=0,
                )  # fmt: skip
            response = out.sequences[0, len(prompt) :].tolist()
            logprobs = [float(lg[0].log_softmax(-1)[t]) for lg, t in zip(out.logits, response, strict=True)]
            a = claim.attempt.attempt_id
            store.add_spans([Span(a, 0, SpanKind.LLM_CALL, prompt_ids=prompt, response_ids=response, logprobs=logprobs,
                                  attributes={"weights_version": learner.weights_version})])  # fmt: skip
            store.finish(a, AttemptStatus.SUCCEEDED, reward=sum(t % 2 == 0 for t in response) / NEW_TOKENS)
        result = algo.update(algo.make_batch(store, [], ids))
        assert result.metrics["mismatch_max_abs"] < 1e-4  # the sampler is the learner's own fp32 forward
    after = p_even_first_token(model, prompts, even)
    assert 0.3 < before < 0.7
    assert after > before + 0.2, (before, after)
    assert learner.weights_version == STEPS
