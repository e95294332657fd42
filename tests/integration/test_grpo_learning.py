"""GRPO makes a rewarded response more likely: tiny-random model, memory store, real sampling and updates.

Each step enqueues a group of rollouts per prompt in a real store, samples responses with the model being
trained (recording token ids, log-probs and weights version as llm_call spans, as the gateway does),
finishes them with a reward, then runs credit assignment from the store and one GRPO update. Reward: the
share of sampled tokens with an even token id — about ½ for the random model, so groups have variance.
"""

from __future__ import annotations

import torch

from tracerl.algorithms.grpo import GRPO
from tracerl.engines.models import load_model
from tracerl.store.memory import MemoryStore
from tracerl.types import AttemptStatus, RolloutSpec, Span, SpanKind

PROMPTS = ["what is 2+3?", "name a colour"]
GROUP = 4
NEW_TOKENS = 4


def p_even_first_token(model: torch.nn.Module, prompts: list[list[int]], even: torch.Tensor) -> float:
    """Mean over prompts of P(first response token has an even id)."""
    with torch.no_grad():
        ps = [model(torch.tensor([p])).logits[0, -1].softmax(-1)[even].sum() for p in prompts]
    return float(torch.stack(ps).mean())


def test_probability_of_rewarded_response_rises_after_a_few_updates() -> None:
    model, tokenizer = load_model("tiny-random")
    algo = GRPO(model="tiny-random", group_size=GROUP, lr=5e-3, bf16=False, device="cpu", seed=0)
    learner = algo.setup(model, tokenizer)
    prompts: list[list[int]] = [
        list(tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"])
        for q in PROMPTS
    ]
    even = torch.arange(0, model.config.vocab_size, 2)
    before = p_even_first_token(model, prompts, even)

    store = MemoryStore()
    torch.manual_seed(0)
    zero_variance = skipped_steps = 0
    for step in range(15):
        ids = []
        for i, _ in enumerate(prompts):
            ids += [r.rollout_id for r in store.enqueue(
                [RolloutSpec(task={"prompt": i}, group_id=f"s{step}-p{i}") for _ in range(GROUP)]
            )]
        while (claim := store.claim("runner")) is not None:
            prompt = prompts[claim.rollout.task["prompt"]]
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([prompt]), do_sample=True, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                    output_logits=True, return_dict_in_generate=True, pad_token_id=0, top_k=0,
                )
            response = out.sequences[0, len(prompt):].tolist()
            logprobs = [float(lg[0].log_softmax(-1)[t]) for lg, t in zip(out.logits, response, strict=True)]
            a = claim.attempt.attempt_id
            store.add_spans([Span(a, 0, SpanKind.LLM_CALL, prompt_ids=prompt, response_ids=response, logprobs=logprobs,
                                  attributes={"weights_version": learner.weights_version})])
            store.finish(a, AttemptStatus.SUCCEEDED, reward=sum(t % 2 == 0 for t in response) / NEW_TOKENS)
        batch = algo.make_batch(store, [], ids)
        zero_variance += batch.zero_variance_groups
        result = algo.update(batch)
        if batch.transitions:
            assert result.metrics["ratio_mean"] == 1.0  # sampled by the weights being trained
            assert result.metrics["mismatch_max_abs"] < 1e-4  # the sampler is the learner's own fp32 forward
        else:
            assert result.weights is None  # every group converged: nothing to learn, no new weights
            skipped_steps += 1

    after = p_even_first_token(model, prompts, even)
    assert 0.3 < before < 0.7
    assert after > before + 0.2, (before, after)
    # groups whose samples all got the same reward carry no signal: skipped and counted, not trained on
    assert learner.step + skipped_steps == 15 and learner.step >= 5
    assert zero_variance >= 2 * skipped_steps
