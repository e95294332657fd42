"""Multi-turn token faithfulness with unchanged agents: call k+1's prompt starts with call k's prompt + response.

The gateway, the tiny model's real tokenizer, the store and the clients (the ``openai`` SDK, LangGraph with
``ChatOpenAI``) are real. What the model writes is scripted (:class:`ScriptedEngine`): a random model never
calls a tool, and the point here is a model that writes tool-call JSON in a form of its own (``{"a":17}``)
that the clients echo back re-serialised (``{"a": 17}``), which re-rendering would show the model instead.
``test_gateway_tools.py`` covers the same with real generation by a taught model.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from fixtures_models import ADD_TOOL
from tracerl.engines.base import Completion, SamplingParams, TokenEngine
from tracerl.engines.models import load_model
from tracerl.gateway import RunningGateway, start_gateway
from tracerl.gateway.chat import normalize_messages, normalize_tools, render_chat
from tracerl.store.memory import MemoryStore
from tracerl.types import RolloutSpec, Span

MODEL = "tiny-random"
TOOLS = [ADD_TOOL]
QUESTION = [{"role": "user", "content": "What is 17 + 25, plus 1?"}]
# what the model writes: tool calls in compact JSON (json.dumps would write '{"a": 17, "b": 25}'), then text
SCRIPT = [
    '<tool_call>\n{"name":"add","arguments":{"a":17,"b":25}}\n</tool_call>',
    'First 42.\n<tool_call>\n{"name":"add", "arguments":{"b":1,"a":42}}\n</tool_call>',
    "The answer is 43.",
]


class ScriptedEngine(TokenEngine):
    """A token engine whose outputs are fixed texts, one per call, tokenized by the real tokenizer and ended
    with ``<|im_end|>`` as a real engine records its stop token; it keeps the prompts it was given."""

    def __init__(self, tokenizer: Any, script: list[str]) -> None:
        self.model_name, self.tokenizer, self.max_context = MODEL, tokenizer, 4096
        self.script, self.prompts = list(script), []
        self.im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    @property
    def weights_version(self) -> int:
        return 0

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[Completion]:
        self.prompts.append(list(prompt_ids))
        ids = self.tokenizer(self.script.pop(0), add_special_tokens=False)["input_ids"] + [self.im_end]
        return [Completion(token_ids=ids, logprobs=[0.0] * len(ids), finish_reason="stop", weights_version=0)]

    def load_weights(self, state_dict: dict[str, Any], version: int) -> None:
        raise NotImplementedError


class Env:
    def __init__(self) -> None:
        _, self.tokenizer = load_model(MODEL)
        self.store = MemoryStore()
        self.engine = ScriptedEngine(self.tokenizer, [])
        self.gateway: RunningGateway = start_gateway(self.store, self.engine)

    def attempt(self, script: list[str]) -> tuple[str, str]:
        """A fresh running attempt: (its base_url, its id); the model will write ``script``."""
        self.engine.script = list(script)
        self.store.enqueue([RolloutSpec(task={})])
        claim = self.store.claim("w")
        assert claim is not None
        return self.gateway.base_url(claim.rollout.rollout_id, claim.attempt.attempt_id), claim.attempt.attempt_id

    def spans(self, attempt_id: str) -> list[Span]:
        return self.store.get_spans(attempt_id=attempt_id)

    def render(self, messages: list[dict[str, Any]]) -> list[int]:
        """What re-rendering the whole history would give (the behaviour this feature replaces)."""
        return render_chat(self.tokenizer, normalize_messages(messages), normalize_tools(TOOLS)).ids


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.gateway.stop()


def assert_each_prompt_extends_the_previous_call(spans: list[Span]) -> None:
    for k, (before, after) in enumerate(itertools.pairwise(spans)):
        prefix = (before.prompt_ids or []) + (before.response_ids or [])
        assert (after.prompt_ids or [])[: len(prefix)] == prefix, f"call {k + 1} does not extend call {k}"
        assert after.attributes["prefix_reused"] is True
        assert after.attributes["reused_prompt_tokens"] == len(prefix)
    assert "prefix_reused" not in spans[0].attributes


def add(a: int, b: int) -> int:
    return a + b


def run_openai_agent(base_url: str, *, stream: bool = False) -> list[dict[str, Any]]:
    """A plain tool-using loop with the official client, as its docs write one; returns the history."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    messages: list[dict[str, Any]] = list(QUESTION)
    for _ in range(5):
        if stream:
            message = streamed_message(client, messages)
        else:
            reply = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)  # type: ignore
            message = reply.choices[0].message.model_dump(exclude_none=True)
        messages.append(message)
        if not message.get("tool_calls"):
            return messages
        for call in message["tool_calls"]:
            result = add(**json.loads(call["function"]["arguments"]))
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": str(result)})
    raise AssertionError("the agent did not finish")


def streamed_message(client: openai.OpenAI, messages: list[dict[str, Any]]) -> dict[str, Any]:
    stream = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, stream=True)  # type: ignore
    content, calls = "", {}
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                empty = {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                call = calls.setdefault(tc.index, empty)
                call["id"] += tc.id or ""
                call["function"]["name"] += (tc.function.name or "") if tc.function else ""
                call["function"]["arguments"] += (tc.function.arguments or "") if tc.function else ""
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_openai_tools_agent_sees_its_own_tool_call_tokens(env: Env, stream: bool) -> None:
    base_url, aid = env.attempt(SCRIPT)
    history = run_openai_agent(base_url, stream=stream)
    assert history[-1]["content"] == "The answer is 43."
    spans = env.spans(aid)
    assert len(spans) == 3
    assert_each_prompt_extends_the_previous_call(spans)
    assert [s.prompt_ids for s in spans] == env.engine.prompts[-3:]  # what was recorded is what the engine saw
    # re-rendering the history would have shown the model '{"a": 17, "b": 25}', which it never wrote
    second_history = history[:3]
    prefix = (spans[0].prompt_ids or []) + (spans[0].response_ids or [])
    assert env.render(second_history)[: len(prefix)] != prefix
    assert '{"name":"add","arguments":{"a":17,"b":25}}' in env.tokenizer.decode(spans[2].prompt_ids or [])


def test_a_turn_the_client_changed_is_rendered_and_reported(env: Env) -> None:
    base_url, aid = env.attempt([*SCRIPT[:1], "ok", "ok"])
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS)  # type: ignore
    message = reply.choices[0].message.model_dump(exclude_none=True)
    call = message["tool_calls"][0]
    call["function"]["arguments"] = '{"a": 17, "b": 24}'  # the agent rewrites the call it got
    history = [*QUESTION, message, {"role": "tool", "tool_call_id": call["id"], "content": "41"}]
    client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS)  # type: ignore
    _, second = env.spans(aid)
    assert second.attributes["prefix_reused"] is False and second.attributes["reused_prompt_tokens"] == 0
    assert second.prompt_ids == env.render(history)
    # a later call that continues the re-rendered turn reuses it again
    history += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "and?"}]
    client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS)  # type: ignore
    third = env.spans(aid)[2]
    assert third.attributes["prefix_reused"] is True
    assert (third.prompt_ids or [])[: len(second.prompt_ids or [])] == second.prompt_ids


def test_untracked_calls_and_other_attempts_do_not_reuse_turns(env: Env) -> None:
    base_url, _ = env.attempt(SCRIPT[:1])
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS)  # type: ignore
    history = [*QUESTION, reply.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": "x", "content": "42"}]
    other_url, other = env.attempt(["ok", "ok"])  # the second answers the untracked call
    openai.OpenAI(base_url=other_url, api_key="unused", max_retries=0).chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS  # type: ignore[arg-type]
    )
    [span] = env.spans(other)
    assert span.prompt_ids == env.render(history) and "prefix_reused" not in span.attributes
    untracked = openai.OpenAI(base_url=f"{env.gateway.url}/v1", api_key="unused", max_retries=0)
    untracked.chat.completions.create(model=MODEL, messages=history, tools=TOOLS)  # type: ignore[arg-type]
    assert env.engine.prompts[-1] == env.render(history)


def test_langgraph_tool_agent_sees_its_own_tool_call_tokens(env: Env) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    @tool
    def add_tool(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    add_tool.name = "add"
    base_url, aid = env.attempt(SCRIPT)
    llm = ChatOpenAI(base_url=base_url, api_key="unused", model=MODEL, max_retries=0).bind_tools([add_tool])  # type: ignore

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [llm.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([add_tool]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    result = graph.compile().invoke({"messages": [HumanMessage(QUESTION[0]["content"])]})
    assert result["messages"][-1].content == "The answer is 43."
    spans = env.spans(aid)
    assert len(spans) == 3
    assert_each_prompt_extends_the_previous_call(spans)
    # LangChain sends the call back re-serialised: the request holds '{"a": 17, "b": 25}', the prompt the model's
    sent = spans[1].attributes["request"]["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert sent != '{"a":17,"b":25}' and json.loads(sent) == {"a": 17, "b": 25}


def test_the_service_counts_outcomes_and_forgets_a_finished_attempt(env: Env) -> None:
    """What ``TokenService.turns.stats`` tells an operator, and that a finished attempt's turns are dropped."""
    import asyncio

    from tracerl.gateway.service import TokenService

    engine = ScriptedEngine(env.tokenizer, [SCRIPT[0], "ok", "ok", "ok"])
    service = TokenService(engine, model_name=MODEL)
    attempt = ("r", "a")

    def chat(messages: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"model": MODEL, "messages": messages, "tools": TOOLS}
        return asyncio.run(service.chat(body, attempt)).response["choices"][0]["message"]

    message = chat(QUESTION)
    result = [{"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "42"}]
    chat([*QUESTION, message, *result])
    edited = json.loads(json.dumps(message))
    edited["tool_calls"][0]["function"]["arguments"] = '{"a": 1, "b": 2}'
    chat([*QUESTION, edited, *result])
    assert service.turns.stats == {"reused": 1, "changed": 1}
    assert service.turns.tokens > 0
    service.forget(attempt)
    assert service.turns.tokens == 0
    chat([*QUESTION, message, *result])  # nothing remembered any more: neither reused nor changed
    assert service.turns.stats == {"reused": 1, "changed": 1}
