"""The hf engine's prefix cache on the tiny random model: an agent's shared head (system prompt, tool schemas,
earlier turns) is prefilled once, and every completion stays what a full forward pass gives."""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from test_engine_hf import assert_logprobs_exact

from tracerl.engines.base import Completion, SamplingParams
from tracerl.engines.hf import MIN_PREFIX, HFEngine, PrefixCache, _common_prefix_len
from tracerl.engines.models import load_model

SYSTEM = ("You are a careful assistant with a calculator tool. Call the tool with an arithmetic expression, "
          "read its result, then answer with one line 'Answer: <number>'. Never guess a number yourself.")  # fmt: skip
QUESTIONS = ["What is 12 + 7?", "Compute 3 * (4 - 9).", "Evaluate 81 / 9 + 2.", "What is 5 - 17?"]


def chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])  # fmt: skip


def generate_all(engine: HFEngine, prompts: list[list[int]], params: SamplingParams, *, together: bool) -> list[Any]:
    async def main() -> list[Any]:
        if together:
            out = [r[0] for r in await asyncio.gather(*(engine.generate(p, params) for p in prompts))]
        else:
            out = [(await engine.generate(p, params))[0] for p in prompts]
        await engine.aclose()
        return out

    return asyncio.run(main())


def test_common_prefix_length() -> None:
    assert _common_prefix_len([1, 2, 3, 4], [1, 2, 3, 9, 9]) == 3
    assert _common_prefix_len([1, 2], [1, 2, 3]) == 2 and _common_prefix_len([5], [6]) == 0
    assert _common_prefix_len([], [1]) == 0 and _common_prefix_len(list(range(1000)), list(range(1000))) == 1000


def test_the_lru_keeps_at_most_its_token_budget() -> None:
    cache = PrefixCache(max_tokens=10)
    kv = [torch.zeros(1, 1, 4, 2)]
    cache.add([1, 2, 3, 4], kv, kv)
    cache.add([1, 2, 3, 5], kv, kv)
    cache.lookup([1, 2, 3, 4, 7])  # found, but only `touch` marks an entry used
    cache.touch(cache.entries[0])  # [1, 2, 3, 4] is now the most recently used
    cache.add([9, 9, 9, 9], kv, kv)  # 12 tokens > 10: the least recently used ([1, 2, 3, 5]) goes
    assert [e.tokens for e in cache.entries] == [[1, 2, 3, 4], [9, 9, 9, 9]]
    entry, n = cache.lookup([1, 2, 3, 4, 7])
    assert entry is cache.entries[0] and n == 4
    assert cache.lookup([1, 2, 3, 4])[1] == 3  # at most |P| − 1: the last prompt token must run
    cache.add(list(range(11)), kv, kv)  # longer than the whole budget: not stored
    assert len(cache.entries) == 2


def test_a_shared_head_is_prefilled_once_and_completions_stay_exact(tiny_model: tuple[Any, Any]) -> None:
    model, tok = tiny_model
    prompts = [chat(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]) for q in QUESTIONS]
    head = _common_prefix_len(prompts[0], prompts[1])
    assert head >= MIN_PREFIX
    params = SamplingParams(max_tokens=16, temperature=0.0)
    cached = HFEngine(model, tok, "tiny-random", max_batch_size=4)
    plain = HFEngine(model, tok, "tiny-random", max_batch_size=4, prefix_cache_tokens=0)
    with_cache = generate_all(cached, prompts, params, together=False)  # one at a time: each finds the last
    without = generate_all(plain, prompts, params, together=False)
    assert [c.token_ids for c in with_cache] == [c.token_ids for c in without]
    for p, c in zip(prompts, with_cache, strict=True):
        assert_logprobs_exact(model, p, c)
    assert cached.prefix_cache.hits == 3 and plain.prefix_cache.hits == 0
    assert cached.prefix_cache.reused_tokens >= 3 * head
    assert cached.prefix_cache.prefilled_tokens == sum(map(len, prompts)) - cached.prefix_cache.reused_tokens
    assert plain.prefix_cache.prefilled_tokens == sum(map(len, prompts))


def test_the_next_turn_reuses_the_whole_earlier_prompt(tiny_model: tuple[Any, Any]) -> None:
    """A multi-turn agent: call 2's prompt starts with call 1's; only the new turns are prefilled."""
    model, tok = tiny_model
    engine = HFEngine(model, tok, "tiny-random", max_batch_size=4)
    params = SamplingParams(max_tokens=8, temperature=0.0)
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}]
    second = [*first, {"role": "assistant", "content": "calculator(12 + 7)"}, {"role": "user", "content": "19"}]
    p1, p2 = chat(tok, first), chat(tok, second)
    shared = _common_prefix_len(p1, p2)
    c1, c2 = generate_all(engine, [p1, p2], params, together=False)
    assert engine.prefix_cache.reused_tokens == shared and shared >= len(p1) - 2  # the template may end a turn
    assert_logprobs_exact(model, p1, c1)
    assert_logprobs_exact(model, p2, c2)


def test_a_mixed_admission_with_and_without_a_head_stays_exact(tiny_model: tuple[Any, Any]) -> None:
    """Requests sharing a stored head and requests without one, admitted together, sampled with n > 1."""
    model, tok = tiny_model
    engine = HFEngine(model, tok, "tiny-random", max_batch_size=8)
    warm = chat(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}])
    with_head = [chat(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]) for q in QUESTIONS]
    others = [chat(tok, [{"role": "user", "content": q}]) for q in ("Say hello.", "Name three colours of the sea.")]
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=3, n=2)

    async def main() -> list[list[Completion]]:
        await engine.generate(warm, params)
        out = await asyncio.gather(*(engine.generate(p, params) for p in [*with_head, *others]))
        await engine.aclose()
        return list(out)

    results = asyncio.run(main())
    assert engine.prefix_cache.hits >= len(with_head)
    for p, completions in zip([*with_head, *others], results, strict=True):
        assert len(completions) == 2
        for c in completions:
            assert_logprobs_exact(model, p, c)


def test_new_weights_clear_the_cache(tiny_model_dir: Any) -> None:
    model, tok = load_model(tiny_model_dir)
    engine = HFEngine(model, tok, "tiny-random", max_batch_size=2)
    prompt = chat(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}])
    params = SamplingParams(max_tokens=8, temperature=0.0)

    async def main() -> Completion:
        await engine.generate(prompt, params)
        assert engine.prefix_cache.entries
        torch.manual_seed(0)
        engine.load_weights({k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}, 1)
        assert not engine.prefix_cache.entries  # keys and values of the old weights are gone
        out = (await engine.generate(prompt, params))[0]
        await engine.aclose()
        return out

    completion = asyncio.run(main())
    assert completion.weights_version == 1 and engine.prefix_cache.hits == 0
    assert_logprobs_exact(model, prompt, completion)  # model now holds the new weights


def test_an_admission_whose_first_group_evicts_the_next_groups_head_stays_exact(tiny_model: tuple[Any, Any]) -> None:
    """Two stored heads A (newer) and B (older) and a budget that holds only them: one admission with a request
    after A, then one after B. Storing the first request's prompt evicts B before B's group is prefilled; B's
    keys and values are still used (the engine holds them), nothing fails (a math recipe run hit a
    ``list.remove`` error here), and both completions stay exact."""
    model, tok = tiny_model
    other = "You are a terse assistant. Answer each question with one number and nothing else, ever, please."
    heads = [chat(tok, [{"role": "system", "content": s}, {"role": "user", "content": "Hi"}]) for s in (other, SYSTEM)]
    asks = [chat(tok, [{"role": "system", "content": s}, {"role": "user", "content": q}])
            for s, q in ((SYSTEM, QUESTIONS[0]), (other, QUESTIONS[1]))]  # fmt: skip
    budget = sum(map(len, heads)) + len(asks[0]) - 1  # both heads fit; storing the first request's prompt evicts B
    engine = HFEngine(model, tok, "tiny-random", max_batch_size=4, prefix_cache_tokens=budget)
    params = SamplingParams(max_tokens=8, temperature=0.0)

    async def main() -> list[Completion]:
        for head in heads:  # stored B (other's head), then A (SYSTEM's): B is the least recently used
            await engine.generate(head, params)
        assert [e.tokens for e in engine.prefix_cache.entries] == heads
        out = [r[0] for r in await asyncio.gather(*(engine.generate(p, params) for p in asks))]
        await engine.aclose()
        return out

    completions = asyncio.run(main())
    assert engine.prefix_cache.hits == 2  # both requests were prefilled after their heads, in one admission
    assert heads[0] not in [e.tokens for e in engine.prefix_cache.entries]  # B was evicted on the way
    for p, c in zip(asks, completions, strict=True):
        assert_logprobs_exact(model, p, c)
