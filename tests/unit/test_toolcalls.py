"""Parsing tool calls out of generated text (Hermes ``<tool_call>`` blocks and Llama 3 JSON)."""

from __future__ import annotations

import json

from tracerl.gateway.toolcalls import parse_hermes, parse_llama3_json, tool_format_for


def test_hermes_single_call_becomes_openai_tool_call() -> None:
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    out = parse_hermes(text)
    assert out.content is None
    [call] = out.tool_calls
    assert call.name == "add"
    assert json.loads(call.arguments) == {"a": 2, "b": 3}
    assert call.id.startswith("call_") and len(call.id) == len("call_") + 24
    assert call.to_openai() == {
        "id": call.id,
        "type": "function",
        "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
    }


def test_hermes_keeps_text_around_calls_and_parses_several() -> None:
    text = (
        "Let me compute both.\n"
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>\n'
        '<tool_call>{"name": "mul", "parameters": {"a": 3, "b": 4}}</tool_call>'
    )
    out = parse_hermes(text)
    assert out.content == "Let me compute both."
    assert [c.name for c in out.tool_calls] == ["add", "mul"]
    assert json.loads(out.tool_calls[1].arguments) == {"a": 3, "b": 4}
    assert out.tool_calls[0].id != out.tool_calls[1].id


def test_hermes_accepts_a_final_block_without_closing_tag() -> None:
    out = parse_hermes('<tool_call>\n{"name": "search", "arguments": {"q": "tracerl"}}\n')
    assert [c.name for c in out.tool_calls] == ["search"]
    assert json.loads(out.tool_calls[0].arguments) == {"q": "tracerl"}


def test_hermes_double_encoded_arguments_are_decoded() -> None:
    out = parse_hermes('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>')
    assert json.loads(out.tool_calls[0].arguments) == {"x": 1}


def test_hermes_malformed_json_stays_text() -> None:
    for text in (
        '<tool_call>{"name": "add", "arguments": {"a": 2,</tool_call>',  # truncated JSON
        '<tool_call>{"arguments": {"a": 2}}</tool_call>',  # no name
        '<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>',  # arguments not an object
        "<tool_call>not json at all</tool_call>",
    ):
        out = parse_hermes(text)
        assert out.tool_calls == [], text
        assert out.content == text


def test_hermes_malformed_block_kept_next_to_a_good_one() -> None:
    bad = "<tool_call>{oops}</tool_call>"
    good = '<tool_call>{"name": "ok", "arguments": {}}</tool_call>'
    out = parse_hermes(bad + "\n" + good)
    assert [c.name for c in out.tool_calls] == ["ok"]
    assert out.content == bad
    assert out.tool_calls[0].arguments == "{}"


def test_plain_text_is_untouched() -> None:
    text = "  The answer is 5.\n"
    assert parse_hermes(text).content == text
    assert parse_hermes(text).tool_calls == []


def test_llama3_json_whole_reply_is_a_call() -> None:
    out = parse_llama3_json('{"name": "get_weather", "parameters": {"city": "Paris"}}')
    assert out.content is None
    assert out.tool_calls[0].name == "get_weather"
    assert json.loads(out.tool_calls[0].arguments) == {"city": "Paris"}
    assert parse_llama3_json("The weather is nice.").tool_calls == []
    assert parse_llama3_json("{not json").content == "{not json"


def test_format_is_chosen_per_model_family() -> None:
    assert tool_format_for("smollm2-135m") == "hermes"
    assert tool_format_for("Qwen/Qwen2.5-0.5B-Instruct") == "hermes"
    assert tool_format_for("tiny-random") == "hermes"
    assert tool_format_for("meta-llama/Llama-3.1-8B-Instruct") == "llama3-json"
