"""Gold demonstrations recorded from an unchanged openai-client agent against a scripted policy on loopback:
one transcript per call as the client sent it, earlier assistant turns weight 0, only runs that score kept,
and SFT turns them into exactly one example per call."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import OpenAI

import tracerl
from tracerl.algorithms.sft_data import examples_from_transcripts
from tracerl.demonstrations import DemonstrationRun, record_demonstrations, tool_call
from tracerl.errors import ConfigError
from tracerl.gateway.chat import normalize_messages, normalize_tools, render_chat

pytest_plugins = ["tests.fixtures_models"]

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]},
    },
}
SYSTEM = "Add the numbers with the add tool, then reply 'Answer: <n>'."


def _run_tools(client: OpenAI, model: str, task: dict[str, Any], stream: bool) -> str:
    """A plain openai tool loop, as a user writes it: call, run the tool, call again."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task["q"]}]
    for _ in range(3):
        if stream:
            content, calls = "", {}
            for chunk in client.chat.completions.create(model=model, messages=messages, tools=[ADD], stream=True):  # type: ignore[arg-type]
                delta = chunk.choices[0].delta if chunk.choices else None
                if delta is None:
                    continue
                content += delta.content or ""
                for c in delta.tool_calls or []:
                    entry = calls.setdefault(c.index, {"id": c.id, "name": "", "arguments": ""})
                    entry["name"] += (c.function.name or "") if c.function else ""
                    entry["arguments"] += (c.function.arguments or "") if c.function else ""
            tool_calls = [{"id": c["id"], "type": "function", "function": {"name": c["name"],
                                                                          "arguments": c["arguments"]}}
                          for c in calls.values()]
        else:
            reply = client.chat.completions.create(model=model, messages=messages, tools=[ADD])  # type: ignore[arg-type]
            message = reply.choices[0].message
            content = message.content or ""
            tool_calls = [{"id": c.id, "type": "function", "function": {"name": c.function.name,  # type: ignore[union-attr]
                                                                        "arguments": c.function.arguments}}  # type: ignore[union-attr]
                          for c in message.tool_calls or []]
        if not tool_calls:
            return content
        messages.append({"role": "assistant", "content": content or None, "tool_calls": tool_calls})
        for c in tool_calls:
            args = json.loads(c["function"]["arguments"])
            messages.append({"role": "tool", "tool_call_id": c["id"], "content": str(args["a"] + args["b"])})
    return ""


@tracerl.agent
def add_agent(task: dict[str, Any], llm: tracerl.LLM) -> float:
    client = OpenAI(base_url=llm.base_url, api_key=llm.api_key, max_retries=0)
    reply = _run_tools(client, llm.model, task, stream=bool(task.get("stream")))
    return float(reply.strip().endswith(f"Answer: {task['a'] + task['b']}"))


def gold(task: dict[str, Any], messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
    """Call add with the task's numbers, then answer with the tool's result (or a wrong one when asked)."""
    assert [t["function"]["name"] for t in tools] == ["add"]
    results = [m["content"] for m in messages if m["role"] == "tool"]
    if not results:
        return tool_call("add", a=task["a"], b=task["b"])
    return {"content": f"Answer: {int(results[-1]) + task.get('off', 0)}"}


TASKS = [
    {"q": "What is 17 + 25?", "a": 17, "b": 25},
    {"q": "What is 3 + 4?", "a": 3, "b": 4, "stream": True},
    {"q": "What is 1 + 1?", "a": 1, "b": 1, "off": 1},  # the policy answers wrongly: reward 0, not kept
]


def test_each_call_becomes_one_transcript_of_what_the_client_sent() -> None:
    runs: list[DemonstrationRun] = []
    demos = record_demonstrations(add_agent, TASKS, gold, runs=runs)

    assert [r.reward for r in runs] == [1.0, 1.0, 0.0]
    assert [len(r.calls) for r in runs] == [2, 2, 2]
    assert len(demos) == 4  # two calls of each of the two runs that scored
    first, second = demos[0], demos[1]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert first["messages"][-1]["weight"] == 1
    call = first["messages"][-1]["tool_calls"][0]["function"]
    assert (call["name"], json.loads(call["arguments"])) == ("add", {"a": 17, "b": 25})
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert [m.get("weight") for m in second["messages"] if m["role"] == "assistant"] == [0, 1]
    assert second["messages"][3]["content"] == "42"
    assert second["messages"][-1]["content"] == "Answer: 42"
    assert first["tools"] == [ADD]
    # the streamed run was reassembled by the client into the same shape
    streamed = demos[3]["messages"]
    assert streamed[2]["tool_calls"][0]["function"]["name"] == "add" and streamed[-1]["content"] == "Answer: 7"


def test_sft_trains_each_reply_once_on_the_prompt_the_gateway_renders(tiny_model: tuple[Any, Any]) -> None:
    _, tokenizer = tiny_model
    demos = record_demonstrations(add_agent, TASKS[:1], gold)
    examples = examples_from_transcripts(demos, tokenizer)

    assert len(examples) == 2  # the weight-0 copy of the tool call in the second transcript is not trained again
    second = demos[1]
    history = normalize_messages(second["messages"][:-1])
    expected_prompt = render_chat(tokenizer, history, normalize_tools(second["tools"])).ids
    assert examples[1].prompt_ids == expected_prompt
    assert tokenizer.decode(examples[1].response_ids).startswith("Answer: 42")


def test_bad_weights_and_a_policy_that_never_scores_are_refused(tiny_model: tuple[Any, Any]) -> None:
    _, tokenizer = tiny_model
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 0.5}]}
    with pytest.raises(ConfigError, match=r"messages\[1\]\.weight is 0\.5"):
        examples_from_transcripts([bad], tokenizer)
    with pytest.raises(ConfigError, match=r"no scripted run reached min_reward=1\.0"):
        record_demonstrations(add_agent, TASKS[2:], gold)
