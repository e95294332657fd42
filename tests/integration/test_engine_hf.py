"""The hf engine on the tiny random model: exact log-probs, batching, seeds, stops, weights versions, errors."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from tracerl.engines.base import Completion, SamplingParams
from tracerl.engines.hf import HFEngine
from tracerl.engines.models import load_model
from tracerl.errors import InvalidInput

QUESTIONS = [
    "What is 12 + 7?",
    "Say hello.",
    "Write one sentence about the sea and the wind over the sea tonight.",
    "How many days are there in a week? Think step by step.",
    "List three numbers.",
    "What is the capital of the country with the most people? Answer with one word please.",
    "Hi",
    "Count from one to ten, then from ten to one, and tell me the total of all the numbers.",
]


def prompts(tokenizer: Any) -> list[list[int]]:
    return [
        list(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=True, return_dict=True)["input_ids"])
        for q in QUESTIONS
    ]


def recompute_logprobs(model: Any, prompt: list[int], response: list[int]) -> torch.Tensor:
    """log π(response_t | prompt, response_<t) by one full forward pass over prompt + response."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)  # (T, V)
    return logprobs[len(prompt) - 1 : -1].gather(-1, torch.tensor(response)[:, None])[:, 0]


def assert_logprobs_exact(model: Any, prompt: list[int], completion: Completion) -> None:
    assert len(completion.logprobs) == len(completion.token_ids) > 0
    expected = recompute_logprobs(model, prompt, completion.token_ids)
    assert torch.allclose(torch.tensor(completion.logprobs), expected, atol=1e-4)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=24, temperature=0.0),
        SamplingParams(max_tokens=24, temperature=0.7, top_p=0.9, seed=1),
        SamplingParams(max_tokens=24, temperature=1.5, seed=2, n=3),
    ],
    ids=["greedy", "t0.7-top_p0.9", "t1.5-n3"],
)
def test_recorded_logprobs_match_a_full_forward_pass(
    tiny_engine: HFEngine, tiny_model: tuple[Any, Any], params: SamplingParams
) -> None:
    model, tok = tiny_model
    ps = prompts(tok)

    async def main() -> list[list[Completion]]:
        return await asyncio.gather(*(tiny_engine.generate(p, params) for p in ps))

    results = run(main())
    for prompt, completions in zip(ps, results, strict=True):
        assert len(completions) == params.n
        for c in completions:
            assert_logprobs_exact(model, prompt, c)
            assert c.weights_version == 0


def test_eight_concurrent_requests_equal_one_at_a_time(tiny_engine: HFEngine, tiny_model: tuple[Any, Any]) -> None:
    ps = prompts(tiny_model[1])
    params = SamplingParams(max_tokens=32, temperature=0.0)

    async def main() -> tuple[list[Completion], list[Completion], list[Completion]]:
        alone = [(await tiny_engine.generate(p, params))[0] for p in ps]
        together = [r[0] for r in await asyncio.gather(*(tiny_engine.generate(p, params) for p in ps))]

        async def late(i: int, p: list[int]) -> Completion:  # arrive while others are mid-generation
            await asyncio.sleep(0.004 * i)
            return (await tiny_engine.generate(p, SamplingParams(max_tokens=8 + 3 * i, temperature=0.0)))[0]

        staggered = await asyncio.gather(*(late(i, p) for i, p in enumerate(ps)))
        return alone, together, list(staggered)

    alone, together, staggered = run(main())
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    for a, t in zip(alone, together, strict=True):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(t.logprobs), atol=1e-4)
    assert [c.token_ids for c in staggered] == [a.token_ids[: 8 + 3 * i] for i, a in enumerate(alone)]
    assert all(c.finish_reason == "length" for c in staggered)


def test_more_requests_than_the_batch_holds_all_complete(tiny_model: tuple[Any, Any]) -> None:
    model, tok = tiny_model
    engine = HFEngine(model, tok, "tiny-random", max_batch_size=3)
    ps = prompts(tok)

    async def main() -> list[list[Completion]]:
        try:
            return await asyncio.gather(*(engine.generate(p, SamplingParams(max_tokens=10, n=2, seed=5)) for p in ps))
        finally:
            await engine.aclose()

    for prompt, completions in zip(ps, run(main()), strict=True):
        assert len(completions) == 2
        for c in completions:
            assert_logprobs_exact(model, prompt, c)


def test_a_seed_makes_sampling_reproducible(tiny_engine: HFEngine, tiny_model: tuple[Any, Any]) -> None:
    prompt = prompts(tiny_model[1])[0]

    async def sample(seed: int | None) -> list[list[int]]:
        params = SamplingParams(max_tokens=16, temperature=1.0, seed=seed, n=3)
        return [c.token_ids for c in await tiny_engine.generate(prompt, params)]

    first, again, other = run(sample(11)), run(sample(11)), run(sample(12))
    assert first == again
    assert first != other
    assert len({tuple(ids) for ids in first}) == 3  # the n completions differ from each other
    assert run(sample(None)) != run(sample(None))


def test_max_tokens_and_stop_tokens_end_with_the_right_finish_reason(
    tiny_engine: HFEngine, tiny_model: tuple[Any, Any]
) -> None:
    prompt = prompts(tiny_model[1])[2]

    async def gen(**kw: Any) -> Completion:
        return (await tiny_engine.generate(prompt, SamplingParams(temperature=0.0, **kw)))[0]

    full = run(gen(max_tokens=20))
    assert (full.finish_reason, len(full.token_ids)) == ("length", 20)
    assert run(gen(max_tokens=5)).token_ids == full.token_ids[:5]
    stop_id = full.token_ids[6]
    first = full.token_ids.index(stop_id)
    stopped = run(gen(max_tokens=20, stop_token_ids=[stop_id]))
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == full.token_ids[: first + 1]  # the stop token is kept
    assert tiny_engine.tokenizer.eos_token_id in tiny_engine.stop_token_ids


def test_stop_strings_cut_the_completion_before_them(tiny_engine: HFEngine, tiny_model: tuple[Any, Any]) -> None:
    tok = tiny_model[1]
    prompt = prompts(tok)[3]

    async def gen(**kw: Any) -> Completion:
        return (await tiny_engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=30, **kw)))[0]

    full = run(gen())
    full_text = tok.decode(full.token_ids)
    stop = tok.decode(full.token_ids[10:12])  # text that first appears around token 10
    assert stop.strip()
    stopped = run(gen(stop=["never printed", stop]))
    text = tok.decode(stopped.token_ids)
    assert stopped.finish_reason == "stop"
    assert stop not in text
    assert full_text.startswith(text)
    assert len(text) <= full_text.index(stop) < len(text) + len(tok.decode(full.token_ids[len(stopped.token_ids)]))
    assert stopped.token_ids == full.token_ids[: len(stopped.token_ids)]


def test_load_weights_changes_outputs_and_versions_without_mixing(tiny_model_dir: Path) -> None:
    model, tok = load_model(tiny_model_dir)
    other, _ = load_model(tiny_model_dir)
    torch.manual_seed(0)
    new_weights = {k: v + 0.05 * torch.randn_like(v) for k, v in other.state_dict().items()}
    other.load_state_dict(new_weights)
    engine = HFEngine(model, tok, "tiny-random", max_batch_size=4)
    ps = prompts(tok)
    params = SamplingParams(max_tokens=40, temperature=0.0)

    async def main() -> tuple[list[Completion], list[Completion]]:
        before = [r[0] for r in await asyncio.gather(*(engine.generate(p, params) for p in ps))]
        swapper = threading.Timer(0.05, engine.load_weights, args=(new_weights, 1))
        swapper.start()  # swap while requests are queued and running
        during = []
        for _ in range(3):
            during += [r[0] for r in await asyncio.gather(*(engine.generate(p, params) for p in ps))]
            await asyncio.sleep(0.02)
        await asyncio.to_thread(swapper.join)
        after = [r[0] for r in await asyncio.gather(*(engine.generate(p, params) for p in ps))]
        await engine.aclose()
        return before + during, after

    mixed, after = run(main())
    assert engine.weights_version == 1
    assert {c.weights_version for c in after} == {1}
    assert [c.token_ids for c in after] != [c.token_ids for c in mixed[: len(ps)]]
    versions = {c.weights_version for c in mixed}
    assert versions == {0, 1}, versions  # the traffic before the swap ran on version 0, later traffic on 1
    by_version = {0: load_model(tiny_model_dir)[0], 1: other}  # each completion matches its own weights
    for i, c in enumerate(mixed + after):
        assert_logprobs_exact(by_version[c.weights_version], ps[i % len(ps)], c)


def test_bad_requests_are_refused_with_a_clear_error(tiny_engine: HFEngine, tiny_model: tuple[Any, Any]) -> None:
    prompt = prompts(tiny_model[1])[0]
    vocab = tiny_engine.vocab_size

    def refused(ids: Any, params: Any, fragment: str) -> None:
        with pytest.raises(InvalidInput, match=fragment):
            run(tiny_engine.generate(ids, params))

    refused([], SamplingParams(), "non-empty list")
    refused([1, vocab], SamplingParams(), rf"\[{vocab}\].*\[0, {vocab}\)")
    refused([1, "a"], SamplingParams(), "not token ids")
    refused(prompt, {"max_tokens": 3}, "SamplingParams")
    refused(prompt, SamplingParams(stop_token_ids=[-1]), "stop_token_ids")
    refused(prompt, SamplingParams(stop=[""]), "stop must be")
    refused(prompt, SamplingParams(seed=-3), "seed must be")
    changed = SamplingParams()
    changed.top_p = 0.0  # changed after construction: checked again
    refused(prompt, changed, "top_p")
    with pytest.raises(InvalidInput, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(InvalidInput, match="missing"):
        tiny_engine.load_weights({"lm_head.weight": torch.zeros(3)}, 1)
    state = {k: v.clone() for k, v in tiny_engine.model.state_dict().items()}
    state["model.norm.weight"] = torch.zeros(7)
    with pytest.raises(InvalidInput, match=r"model.norm.weight.*shape \(7,\)"):
        tiny_engine.load_weights(state, 1)
    assert tiny_engine.weights_version == 0


def test_a_prompt_longer_than_the_context_names_both_lengths(tiny_model: tuple[Any, Any]) -> None:
    model, tok = tiny_model
    engine = HFEngine(model, tok, "tiny-random", max_context=64)
    with pytest.raises(InvalidInput, match=r"the prompt has 64 tokens .* at most 64 tokens .* at most 63"):
        run(engine.generate([5] * 64, SamplingParams()))
    done = run(engine.generate([5] * 60, SamplingParams(max_tokens=100, temperature=0.0)))[0]
    assert (done.finish_reason, len(done.token_ids)) == ("length", 4)  # stops at the context limit
    run(engine.aclose())


def test_a_cancelled_request_does_not_disturb_the_others(tiny_engine: HFEngine, tiny_model: tuple[Any, Any]) -> None:
    model, tok = tiny_model
    ps = prompts(tok)

    async def main() -> list[Completion]:
        doomed = asyncio.ensure_future(tiny_engine.generate(ps[0], SamplingParams(max_tokens=200, temperature=0)))
        others = [asyncio.ensure_future(tiny_engine.generate(p, SamplingParams(max_tokens=30, temperature=0)))
                  for p in ps[1:4]]
        await asyncio.sleep(0.02)
        doomed.cancel()
        return [r[0] for r in await asyncio.gather(*others)]

    for prompt, c in zip(ps[1:4], run(main()), strict=True):
        assert_logprobs_exact(model, prompt, c)
    # the engine still serves after the cancellation
    assert_logprobs_exact(model, ps[4], run(tiny_engine.generate(ps[4], SamplingParams(max_tokens=5)))[0])


@pytest.mark.slow
def test_smollm2_logprobs_match_a_full_forward_pass() -> None:
    """≈ 5 s once the model is converted into ~/.cache/tracerl (the first conversion takes ≈ 20-30 s)."""
    model, tok = load_model("smollm2-135m")
    engine = HFEngine(model, tok, "smollm2-135m")
    ps = prompts(tok)[:4]

    async def main() -> list[list[Completion]]:
        try:
            return await asyncio.gather(
                *(engine.generate(p, SamplingParams(max_tokens=12, temperature=0.8, seed=i)) for i, p in enumerate(ps))
            )
        finally:
            await engine.aclose()

    for prompt, (c,) in zip(ps, run(main()), strict=True):
        assert_logprobs_exact(model, prompt, c)


def test_closing_fails_unfinished_requests_and_refuses_new_ones(tiny_model: tuple[Any, Any]) -> None:
    model, tok = tiny_model
    engine = HFEngine(model, tok, "tiny-random", max_batch_size=2, stop_token_ids=[])
    ps = prompts(tok)

    async def main() -> list[Any]:
        pending = [asyncio.ensure_future(engine.generate(p, SamplingParams(max_tokens=1500, temperature=0)))
                   for p in ps[:4]]  # two run, two wait
        await asyncio.sleep(0.05)
        await engine.aclose()
        return await asyncio.gather(*pending, return_exceptions=True)

    outcomes = run(main())
    assert all(isinstance(o, InvalidInput) and "closed before this request finished" in str(o) for o in outcomes)
    with pytest.raises(InvalidInput, match="engine is closed"):
        run(engine.generate(ps[0], SamplingParams()))
