"""The gateway end to end: the official ``openai`` client (sync, async, streaming) against a real uvicorn
server on loopback, serving the tiny random model with the real hf engine, recording into a real store.

What a user relies on: every call on a tracked URL is stored with exactly the token ids the model saw and
sampled (they decode to the text the agent got), with the model's own log-probs, and calls of different
rollouts never mix.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from tracerl.engines.hf import HFEngine
from tracerl.engines.models import load_model
from tracerl.gateway import RunningGateway, start_gateway
from tracerl.store import connect
from tracerl.store.base import Store
from tracerl.types import AttemptStatus, RolloutSpec, Span, SpanKind

MODEL = "tiny-random"


class Env:
    def __init__(self, model: Any, tokenizer: Any, store: Store, gateway: RunningGateway) -> None:
        self.model, self.tokenizer, self.store, self.gateway = model, tokenizer, store, gateway

    def attempt(self) -> tuple[str, str]:
        """A fresh running attempt: ``(rollout_id, attempt_id)``."""
        [rollout] = self.store.enqueue([RolloutSpec(task={"q": "x"})])
        claim = self.store.claim("test-worker")
        assert claim is not None and claim.rollout.rollout_id == rollout.rollout_id
        return rollout.rollout_id, claim.attempt.attempt_id

    def client(self, rollout_id: str, attempt_id: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.base_url(rollout_id, attempt_id), api_key="unused", max_retries=0)

    def aclient(self, rollout_id: str, attempt_id: str) -> openai.AsyncOpenAI:
        url = self.gateway.base_url(rollout_id, attempt_id)
        return openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)

    def spans(self, attempt_id: str) -> list[Span]:
        return [s for s in self.store.get_spans(attempt_id=attempt_id) if s.kind is SpanKind.LLM_CALL]

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out if isinstance(out, list) else out["input_ids"])

    def recomputed_logprobs(self, prompt: list[int], response: list[int]) -> torch.Tensor:
        """log p(response[i] | prompt + response[:i]) by one plain forward pass of the model."""
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logits = self.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # (R, V)
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    model, tokenizer = load_model(MODEL)
    engine = HFEngine(model, tokenizer, MODEL, max_batch_size=8)
    db: Path = tmp_path_factory.mktemp("gw") / "gateway.db"
    store = connect(f"sqlite:///{db}")
    gateway = start_gateway(store, engine)
    yield Env(model, tokenizer, store, gateway)
    gateway.stop()
    asyncio.run(engine.aclose())
    store.close()


def test_sync_chat_records_exact_ids_and_logprobs(env: Env) -> None:
    rid, aid = env.attempt()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
    reply = env.client(rid, aid).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=24, temperature=1.0, seed=7
    )
    [span] = env.spans(aid)
    assert span.rollout_id == rid and span.name == "chat.completions"
    assert span.prompt_ids == env.chat_prompt(messages)
    assert span.response_ids is not None and span.logprobs is not None
    assert len(span.response_ids) == reply.usage.completion_tokens
    assert env.text(span.response_ids) == reply.choices[0].message.content
    expected = env.recomputed_logprobs(span.prompt_ids, span.response_ids)
    assert torch.allclose(torch.tensor(span.logprobs), expected, atol=1e-4, rtol=0)
    attrs = span.attributes
    assert attrs["request"]["messages"] == messages
    assert attrs["response"]["choices"][0]["message"]["content"] == reply.choices[0].message.content
    assert attrs["finish_reason"] == reply.choices[0].finish_reason
    assert attrs["model"] == MODEL and attrs["weights_version"] == 0
    assert attrs["usage"]["prompt_tokens"] == len(span.prompt_ids) == reply.usage.prompt_tokens
    assert attrs["latency_s"] > 0 and attrs["call_id"] == reply.id


def test_multi_turn_calls_are_stored_in_call_order(env: Env) -> None:
    rid, aid = env.attempt()
    client = env.client(rid, aid)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "hello"}]
    for _ in range(3):
        reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
        answer = reply.choices[0].message.content
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "more"}]
    spans = env.spans(aid)
    assert len(spans) == 3
    assert [s.position for s in spans] == [0, 1, 2] and len({s.seq for s in spans}) == 3  # seq: an identity
    # each later prompt holds the earlier conversation: the store returns full prompts, whatever it packs
    assert all(spans[i].prompt_ids[: len(spans[i - 1].prompt_ids)] == spans[i - 1].prompt_ids for i in (1, 2))


def test_async_client_with_n_choices_records_one_span_per_choice(env: Env) -> None:
    rid, aid = env.attempt()

    async def call() -> Any:
        return await env.aclient(rid, aid).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Name a city."}], n=3, max_tokens=12, seed=1
        )

    reply = asyncio.run(call())
    spans = env.spans(aid)
    assert len(reply.choices) == 3 and len(spans) == 3
    assert [s.attributes["choice_index"] for s in spans] == [0, 1, 2]
    assert len({s.attributes["call_id"] for s in spans}) == 1
    for span, choice in zip(spans, reply.choices, strict=True):
        assert span.prompt_ids == spans[0].prompt_ids
        assert env.text(span.response_ids or []) == choice.message.content
        assert span.attributes["response"]["choices"] == [span.attributes["response"]["choices"][0]]
        assert span.attributes["response"]["choices"][0]["index"] == choice.index
    assert reply.usage is not None
    assert reply.usage.completion_tokens == sum(len(s.response_ids or []) for s in spans)


def test_streaming_delivers_the_same_text_and_records_the_same_ids(env: Env) -> None:
    messages = [{"role": "user", "content": "Count to five."}]
    rid, aid = env.attempt()
    client = env.client(rid, aid)
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=20, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        plain.choices[0].finish_reason
    ]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed in pieces
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    first, second = env.spans(aid)
    assert streamed == plain.choices[0].message.content == env.text(second.response_ids or [])
    assert second.response_ids == first.response_ids and second.prompt_ids == first.prompt_ids
    assert second.logprobs == pytest.approx(first.logprobs, abs=1e-5)
    assert second.attributes["stream"] is True and first.attributes["stream"] is False
    assert second.attributes["response"]["choices"][0]["message"]["content"] == streamed


def test_logprobs_are_returned_when_asked(env: Env) -> None:
    rid, aid = env.attempt()
    reply = env.client(rid, aid).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6, logprobs=True, top_logprobs=2
    )
    [span] = env.spans(aid)
    content = reply.choices[0].logprobs.content
    assert [t.logprob for t in content] == pytest.approx(span.logprobs)


def test_text_completions_record_the_tokenized_prompt(env: Env) -> None:
    rid, aid = env.attempt()
    client = env.client(rid, aid)
    prompt = "What is 12 + 30? Answer:"
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, temperature=0, logprobs=1)
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=10, temperature=0, stream=True
        ) if c.choices
    )
    first, second = env.spans(aid)
    assert first.prompt_ids == env.tokenizer(prompt)["input_ids"] == second.prompt_ids
    assert env.text(first.response_ids or []) == reply.choices[0].text == streamed
    assert reply.choices[0].logprobs.token_logprobs == pytest.approx(first.logprobs)
    tokens = reply.choices[0].logprobs.tokens or []
    offsets = [sum(len(t) for t in tokens[:k]) for k in range(len(tokens))]  # where each token starts
    assert reply.choices[0].logprobs.text_offset == offsets and len(offsets) == len(first.response_ids or [])
    assert first.name == "completions"
    ids_reply = client.completions.create(model=MODEL, prompt=first.prompt_ids or [], max_tokens=10, temperature=0)
    assert ids_reply.choices[0].text == reply.choices[0].text  # token ids in, same tokens out


def test_two_rollouts_in_parallel_never_mix_spans(env: Env) -> None:
    attempts = [env.attempt() for _ in range(2)]
    markers = ["apple", "river"]

    async def agent(rid: str, aid: str, word: str) -> None:
        client = env.aclient(rid, aid)
        for turn in range(4):
            content = f"{word} {turn}"
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=6, temperature=1.0
            )

    async def both() -> None:
        await asyncio.gather(*(agent(r, a, w) for (r, a), w in zip(attempts, markers, strict=True)))

    asyncio.run(both())
    for (rid, aid), word in zip(attempts, markers, strict=True):
        spans = env.spans(aid)
        assert len(spans) == 4
        assert {s.rollout_id for s in spans} == {rid}
        assert [s.attributes["request"]["messages"][0]["content"] for s in spans] == [f"{word} {t}" for t in range(4)]
        assert all(f"{word} " in env.tokenizer.decode(s.prompt_ids) for s in spans)
    assert len(env.store.get_spans(rollout_id=attempts[0][0])) == 4


def test_untracked_urls_are_served_but_not_recorded(env: Env) -> None:
    rid, aid = env.attempt()
    client = openai.OpenAI(base_url=f"{env.gateway.url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.choices[0].message.role == "assistant"
    assert [m.id for m in client.models.list()] == [MODEL]
    assert [m.id for m in env.client(rid, aid).models.list()] == [MODEL]
    assert env.store.get_spans(attempt_id=aid) == []


def test_unknown_rollout_or_attempt_is_404(env: Env) -> None:
    rid, aid = env.attempt()
    _, other_aid = env.attempt()
    for r, a in (("ro-nope", aid), (rid, "at-nope"), (rid, other_aid)):
        with pytest.raises(openai.NotFoundError) as info:
            env.client(r, a).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 404
        assert a in str(info.value.message)


def test_finished_attempt_is_409_and_nothing_is_recorded(env: Env) -> None:
    rid, aid = env.attempt()
    env.store.finish(aid, AttemptStatus.SUCCEEDED, reward=1.0)
    with pytest.raises(openai.ConflictError) as info:
        env.client(rid, aid).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "succeeded" in info.value.message and "not running" in info.value.message
    body = info.value.body
    assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}
    assert env.store.get_spans(attempt_id=aid) == []


def test_a_seq_taken_by_another_writer_moves_the_call_and_a_retry_does_not_duplicate(env: Env) -> None:
    from tracerl.gateway.recording import write_spans

    _, aid = env.attempt()
    taken = Span(aid, 1_000, SpanKind.REWARD, name="final", attributes={"value": 1.0})  # e.g. the runner's
    env.store.add_spans([taken])
    call = Span(aid, 1_000, SpanKind.LLM_CALL, name="chat.completions", attributes={"call_id": "c1", "choice_index": 0},
                prompt_ids=[1, 2], response_ids=[3], logprobs=[-0.5])  # fmt: skip
    write_spans(env.store, [call])
    assert call.seq != 1_000  # drew a fresh seq
    write_spans(env.store, [call])  # the same call written again (a retried request): no second copy
    stored = env.store.get_spans(attempt_id=aid)
    assert [(s.seq, s.kind) for s in stored] == [(1_000, SpanKind.REWARD), (call.seq, SpanKind.LLM_CALL)]
    assert stored[1].response_ids == [3]


def test_streaming_several_choices_keeps_them_apart(env: Env) -> None:
    rid, aid = env.attempt()
    stream = env.client(rid, aid).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a word."}], n=2, max_tokens=10, seed=3, stream=True
    )
    texts, finishes = ["", ""], [None, None]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            finishes[c.index] = c.finish_reason or finishes[c.index]
    spans = env.spans(aid)
    assert [env.text(s.response_ids or []) for s in spans] == texts
    assert [s.attributes["finish_reason"] for s in spans] == finishes


def test_val_rollouts_decode_greedily_unless_the_agent_sets_a_temperature(env: Env) -> None:
    [rollout] = env.store.enqueue([RolloutSpec(task={"q": "x"}, mode="val")])  # type: ignore[arg-type]
    claim = env.store.claim("test-worker")
    assert claim is not None and claim.rollout.rollout_id == rollout.rollout_id
    rid, aid = rollout.rollout_id, claim.attempt.attempt_id
    messages = [{"role": "user", "content": "Count to five."}]
    client = env.client(rid, aid)
    replies = [client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12) for _ in range(2)]
    assert replies[0].choices[0].message.content == replies[1].choices[0].message.content
    span = env.spans(aid)[0]
    assert span.response_ids is not None and span.prompt_ids is not None
    ids = torch.tensor([span.prompt_ids + span.response_ids])
    with torch.no_grad():
        logits = env.model(input_ids=ids).logits[0, len(span.prompt_ids) - 1 : -1]  # (R, V)
    assert logits.argmax(-1).tolist() == span.response_ids  # every token was the most likely one
    assert span.attributes["request"]["temperature"] == 0.0  # what was served is what is recorded
    # an explicit temperature from the agent is kept
    client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=1.0, seed=1)
    assert env.spans(aid)[-1].attributes["request"]["temperature"] == 1.0
