"""Prompt substitution in the real gateway: a ``prompts`` resource version makes the gateway serve another
system prompt plus demonstrations to an unchanged agent, and the recorded token ids are those it served.

The real hf engine with the tiny random model behind a real uvicorn gateway on loopback, the official
``openai`` client, a real sqlite store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi import FastAPI, Request

from tracerl.engines.hf import HFEngine
from tracerl.engines.models import load_model
from tracerl.engines.openai import OpenAIUpstream
from tracerl.gateway import RunningGateway, serve_in_thread, start_gateway
from tracerl.prompts import PROMPTS_RESOURCE, prompt_key
from tracerl.store import connect
from tracerl.store.base import Store
from tracerl.types import RolloutSpec, Span, SpanKind

MODEL = "tiny-random"
ORIGINAL = "You are a calculator."
BETTER = "You are a careful calculator. End with a line 'Answer: <n>'."
DEMOS = [{"role": "user", "content": "2+3"}, {"role": "assistant", "content": "Answer: 5"}]


class Env:
    def __init__(self, tokenizer: Any, store: Store, gateway: RunningGateway) -> None:
        self.tokenizer, self.store, self.gateway = tokenizer, store, gateway

    def attempt(self, **spec: Any) -> tuple[str, str]:
        [rollout] = self.store.enqueue([RolloutSpec(task={"q": "x"}, **spec)])
        claim = self.store.claim("test-worker")
        assert claim is not None and claim.rollout.rollout_id == rollout.rollout_id
        return rollout.rollout_id, claim.attempt.attempt_id

    def chat(self, rid: str, aid: str, messages: list[dict[str, Any]]) -> Span:
        client = openai.OpenAI(base_url=self.gateway.base_url(rid, aid), api_key="unused", max_retries=0)
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)  # type: ignore[arg-type]
        [span] = [s for s in self.store.get_spans(attempt_id=aid) if s.kind is SpanKind.LLM_CALL][-1:]
        return span

    def rendered(self, messages: list[dict[str, Any]]) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out if isinstance(out, list) else out["input_ids"])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    model, tokenizer = load_model(MODEL)
    engine = HFEngine(model, tokenizer, MODEL, max_batch_size=4)
    db: Path = tmp_path_factory.mktemp("gwp") / "store.db"
    store = connect(f"sqlite:///{db}")
    gateway = start_gateway(store, engine)
    yield Env(tokenizer, store, gateway)
    gateway.stop()
    asyncio.run(engine.aclose())
    store.close()


@pytest.fixture(scope="module")
def version(env: Env) -> int:
    value = {"prompts": {prompt_key(ORIGINAL): {"text": BETTER, "demos": DEMOS}}}
    return env.store.put_resource(PROMPTS_RESOURCE, value).version


def test_matched_prompt_is_served_substituted_with_demos(env: Env, version: int) -> None:
    rid, aid = env.attempt(metadata={"prompts_version": version})
    sent = [{"role": "system", "content": ORIGINAL}, {"role": "user", "content": "7+8"}]
    span = env.chat(rid, aid, sent)
    served = [{"role": "system", "content": BETTER}, *DEMOS, {"role": "user", "content": "7+8"}]
    assert span.prompt_ids == env.rendered(served)
    assert span.prompt_ids != env.rendered(sent)
    assert span.attributes["prompts"] == {"version": version, "key": prompt_key(ORIGINAL), "demos": 2}
    assert span.attributes["request"]["messages"] == served  # what the model saw
    assert env.store.get_rollout(rid).metadata["prompts_version"] == version


def test_text_parts_match_like_a_string(env: Env, version: int) -> None:
    rid, aid = env.attempt(metadata={"prompts_version": version})
    parts = [{"type": "text", "text": "You are a "}, {"type": "text", "text": "calculator."}]
    span = env.chat(rid, aid, [{"role": "system", "content": parts}, {"role": "user", "content": "1+1"}])
    served = [{"role": "system", "content": BETTER}, *DEMOS, {"role": "user", "content": "1+1"}]
    assert span.prompt_ids == env.rendered(served)


def test_other_prompts_and_other_rollouts_are_untouched(env: Env, version: int) -> None:
    other = [{"role": "system", "content": ORIGINAL + " "}, {"role": "user", "content": "7+8"}]  # one space more
    rid, aid = env.attempt(metadata={"prompts_version": version})
    span = env.chat(rid, aid, other)
    assert span.prompt_ids == env.rendered(other)
    assert span.attributes["prompts"] == {"version": version, "key": None, "demos": 0}
    no_system = [{"role": "user", "content": "7+8"}]
    assert env.chat(rid, aid, no_system).prompt_ids == env.rendered(no_system)

    plain_rid, plain_aid = env.attempt()  # a rollout without a prompts version
    sent = [{"role": "system", "content": ORIGINAL}, {"role": "user", "content": "7+8"}]
    span = env.chat(plain_rid, plain_aid, sent)
    assert span.prompt_ids == env.rendered(sent)
    assert "prompts" not in span.attributes


def test_version_from_the_resources_bundle(env: Env, version: int) -> None:
    bundle = env.store.put_resource("resources", {"model": MODEL, "prompts_version": version}).version
    rid, aid = env.attempt(resources_version=bundle)
    span = env.chat(rid, aid, [{"role": "system", "content": ORIGINAL}, {"role": "user", "content": "3+3"}])
    assert span.attributes["prompts"]["version"] == version
    assert span.prompt_ids == env.rendered([{"role": "system", "content": BETTER}, *DEMOS,
                                            {"role": "user", "content": "3+3"}])


def test_unknown_prompts_version_is_a_clear_404(env: Env) -> None:
    rid, aid = env.attempt(metadata={"prompts_version": 999})
    client = openai.OpenAI(base_url=env.gateway.base_url(rid, aid), api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="no version 999 of the 'prompts' resource"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_a_frozen_upstream_gets_the_substituted_messages(tmp_path: Path) -> None:
    """A closed model behind an API: the upstream receives the substituted prompt and the demonstrations."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def echo(request: Request) -> dict[str, Any]:
        body = await request.json()
        text = " | ".join(f"{m['role']}: {m['content']}" for m in body["messages"])
        return {"id": "u1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    upstream = serve_in_thread(app)
    store = connect(f"sqlite:///{tmp_path / 'store.db'}")
    gateway = start_gateway(store, OpenAIUpstream(f"{upstream.url}/v1", model="closed"), model_name="closed")
    try:
        version = store.put_resource(PROMPTS_RESOURCE, {"prompts": {prompt_key(ORIGINAL): {"text": BETTER,
                                                                                      "demos": DEMOS}}}).version
        [rollout] = store.enqueue([RolloutSpec(task={}, metadata={"prompts_version": version})])
        claim = store.claim("w")
        assert claim is not None
        client = openai.OpenAI(base_url=gateway.base_url(rollout.rollout_id, claim.attempt.attempt_id),
                               api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="closed", messages=[
            {"role": "system", "content": ORIGINAL}, {"role": "user", "content": "7+8"}])
        assert reply.choices[0].message.content == (
            f"system: {BETTER} | user: 2+3 | assistant: Answer: 5 | user: 7+8")
        [span] = [s for s in store.get_spans(attempt_id=claim.attempt.attempt_id) if s.kind is SpanKind.LLM_CALL]
        assert span.attributes["prompts"] == {"version": version, "key": prompt_key(ORIGINAL), "demos": 2}
    finally:
        gateway.stop()
        upstream.stop()
        store.close()


def test_a_second_turn_reuses_the_substituted_first_turn(env: Env, version: int) -> None:
    """Token in, token out still holds: turn 2 starts with exactly the ids recorded for turn 1."""
    rid, aid = env.attempt(metadata={"prompts_version": version})
    first = [{"role": "system", "content": ORIGINAL}, {"role": "user", "content": "7+8"}]
    one = env.chat(rid, aid, first)
    reply = one.attributes["response"]["choices"][0]["message"]
    two = env.chat(rid, aid, [*first, {"role": "assistant", "content": reply["content"]},
                              {"role": "user", "content": "and 1+1?"}])  # fmt: skip
    assert two.attributes["prefix_reused"] is True
    assert one.prompt_ids is not None and one.response_ids is not None and two.prompt_ids is not None
    assert two.prompt_ids[: len(one.prompt_ids) + len(one.response_ids)] == one.prompt_ids + one.response_ids
    assert two.attributes["prompts"]["key"] == prompt_key(ORIGINAL)
