"""Tool calling through the gateway with the official ``openai`` client, end to end.

A random model never emits a tool call on its own, so the fixture first teaches the tiny model one: its
output layer is edited in closed form (see :func:`teach`) so that after the gateway's own rendering of a
tools request, greedy decoding produces a Hermes ``<tool_call>`` block and the end-of-turn token.
Everything after that is the real path: the gateway renders the request (tools go into the system message,
since the tiny model's ChatML template cannot render them), the hf engine samples the ids, the gateway
parses the ``<tool_call>`` block into OpenAI ``tool_calls`` and records the exact ids.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from fixtures_models import ADD_TOOL, teach
from tracerl.engines.hf import HFEngine
from tracerl.engines.models import load_model
from tracerl.gateway import RunningGateway, start_gateway
from tracerl.gateway.chat import normalize_messages, normalize_tools, render_chat
from tracerl.store.memory import MemoryStore
from tracerl.types import RolloutSpec, Span

MODEL = "tiny-random"
TOOLS = [ADD_TOOL]
QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]
CALL_TEXT = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
# a second lesson: a call in compact JSON, which re-serialising the arguments would not give back
COMPACT_QUESTION = [{"role": "user", "content": "What is 17 + 25?"}]
COMPACT_TEXT = '<tool_call>\n{"name":"add","arguments":{"a":17,"b":25}}\n</tool_call>'




class Env:
    def __init__(self, tokenizer: Any, store: MemoryStore, gateway: RunningGateway, prompt: list[int]) -> None:
        self.tokenizer, self.store, self.gateway, self.prompt = tokenizer, store, gateway, prompt

    def client(self) -> tuple[openai.OpenAI, str]:
        self.store.enqueue([RolloutSpec(task={})])
        claim = self.store.claim("w")
        assert claim is not None
        url = self.gateway.base_url(claim.rollout.rollout_id, claim.attempt.attempt_id)
        return openai.OpenAI(base_url=url, api_key="unused", max_retries=0), claim.attempt.attempt_id

    def spans(self, attempt_id: str) -> list[Span]:
        return self.store.get_spans(attempt_id=attempt_id)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    model, tokenizer = load_model(MODEL)
    prompt = render_chat(tokenizer, normalize_messages(QUESTION), normalize_tools(TOOLS)).ids
    lessons = []
    for question, text in ((QUESTION, CALL_TEXT), (COMPACT_QUESTION, COMPACT_TEXT)):
        ids = render_chat(tokenizer, normalize_messages(question), normalize_tools(TOOLS)).ids
        lessons.append((ids, tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]))
    teach(model, lessons)
    engine = HFEngine(model, tokenizer, MODEL)
    store = MemoryStore()
    gateway = start_gateway(store, engine)
    yield Env(tokenizer, store, gateway, prompt)
    gateway.stop()
    asyncio.run(engine.aclose())


def test_tool_call_comes_back_as_openai_tool_calls(env: Env) -> None:
    client, aid = env.client()
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=64  # type: ignore[arg-type]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "add"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"a": 2, "b": 3}  # type: ignore[union-attr]
    [span] = env.spans(aid)
    assert span.prompt_ids == env.prompt
    assert env.tokenizer.decode(span.response_ids, skip_special_tokens=True) == CALL_TEXT
    assert span.attributes["finish_reason"] == "tool_calls"
    assert span.attributes["response"]["choices"][0]["message"]["tool_calls"][0]["id"] == call.id


def test_without_tools_the_same_text_is_plain_content(env: Env) -> None:
    """Tool calls are only parsed when the request offers tools (and tool_choice is not "none")."""
    client, _ = env.client()
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=64  # type: ignore
    )
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_streamed_tool_call_deltas_and_identical_capture(env: Env) -> None:
    client, aid = env.client()
    plain = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=64  # type: ignore[arg-type]
    )
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=64,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True},
    )
    name, args, ids, finish = "", "", [], None
    for chunk in stream:
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                assert tc.index == 0
                ids += [tc.id] if tc.id else []
                name += (tc.function.name or "") if tc.function else ""
                args += (tc.function.arguments or "") if tc.function else ""
            finish = c.finish_reason or finish
    assert finish == "tool_calls"
    assert name == "add" and json.loads(args) == {"a": 2, "b": 3}
    assert len(ids) == 1 and ids[0].startswith("call_")
    first, second = env.spans(aid)
    assert second.response_ids == first.response_ids and second.prompt_ids == first.prompt_ids
    assert second.attributes["finish_reason"] == first.attributes["finish_reason"] == "tool_calls"
    assert json.loads(plain.choices[0].message.tool_calls[0].function.arguments) == json.loads(args)  # type: ignore


def test_agent_loop_sends_tool_result_back_and_prompt_extends_the_previous_call(env: Env) -> None:
    client, aid = env.client()
    messages: list[dict[str, Any]] = list(QUESTION)
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, temperature=0, max_tokens=64  # type: ignore[arg-type]
    )
    call = (reply.choices[0].message.tool_calls or [])[0]
    result = sum(json.loads(call.function.arguments).values())  # type: ignore[union-attr]
    messages += [
        reply.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": str(result)},
    ]
    client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=8)  # type: ignore
    first, second = env.spans(aid)
    assert (first.position, second.position) == (0, 1)
    # The tool call re-rendered in the Hermes convention gives back exactly the sampled tokens, so the
    # second prompt is the first prompt + the first response + the new turns (no re-tokenization drift).
    before = (first.prompt_ids or []) + (first.response_ids or [])
    assert (second.prompt_ids or [])[: len(before)] == before
    tail = env.tokenizer.decode((second.prompt_ids or [])[len(before) :])
    assert tail == "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


def test_agent_loop_with_compact_tool_call_json_sees_the_tokens_the_model_wrote(env: Env) -> None:
    """The model writes ``{"a":17,"b":25}``; the client sends it back as ``{"a": 17, "b": 25}``; the next prompt
    still holds the tokens the model sampled, so training sees the history the model wrote."""
    client, aid = env.client()
    messages: list[dict[str, Any]] = list(COMPACT_QUESTION)
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, temperature=0, max_tokens=64  # type: ignore[arg-type]
    )
    call = (reply.choices[0].message.tool_calls or [])[0]
    assert call.function.arguments == '{"a": 17, "b": 25}'  # type: ignore[union-attr]
    messages += [
        reply.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "42"},
    ]
    client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=8)  # type: ignore
    first, second = env.spans(aid)
    assert env.tokenizer.decode(first.response_ids, skip_special_tokens=True) == COMPACT_TEXT
    before = (first.prompt_ids or []) + (first.response_ids or [])
    assert (second.prompt_ids or [])[: len(before)] == before
    assert second.attributes["prefix_reused"] is True
    rerendered = render_chat(env.tokenizer, normalize_messages(messages), normalize_tools(TOOLS)).ids
    assert rerendered[: len(before)] != before  # what the gateway showed the model before it kept the tokens
