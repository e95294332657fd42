"""Rendering OpenAI chat messages (with tools, tool calls and tool results) into prompt token ids.

Uses the real tokenizer of the tiny test model (a byte-level BPE with SmolLM2's plain ChatML template, which
cannot render tools itself), and a copy of it given a tool-aware template.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from fixtures_models import ADD_TOOL
from tracerl.engines.models import load_model
from tracerl.gateway.chat import (
    normalize_messages,
    normalize_tools,
    render_chat,
    template_supports_tools,
    tool_call_text,
    tools_system_text,
)
from tracerl.gateway.errors import GatewayError
from tracerl.gateway.toolcalls import parse_hermes


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    _, tok = load_model("tiny-random")
    return tok


def render_text(tok: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    rendered = render_chat(tok, normalize_messages(messages), normalize_tools(tools))
    return tok.decode(rendered.ids)


def test_plain_conversation_is_the_templates_own_rendering(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": [{"type": "text", "text": "And 2 + "}, {"type": "text", "text": "4?"}]},
    ]
    rendered = render_chat(tokenizer, normalize_messages(messages), [])
    expected = tokenizer.apply_chat_template(
        [*messages[:3], {"role": "user", "content": "And 2 + 4?"}], add_generation_prompt=True, tokenize=True
    )
    expected_ids = expected["input_ids"] if not isinstance(expected, list) else expected
    assert rendered.ids == expected_ids
    assert tokenizer.decode(rendered.ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n5<|im_end|>\n<|im_start|>user\nAnd 2 + 4?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert rendered.tools_in_template is False


def test_developer_role_is_a_system_message(tokenizer: Any) -> None:
    text = render_text(tokenizer, [{"role": "developer", "content": "Rules."}, {"role": "user", "content": "hi"}])
    assert text.startswith("<|im_start|>system\nRules.<|im_end|>\n")


def test_chatml_without_tool_support_gets_tools_in_the_system_message(tokenizer: Any) -> None:
    assert not template_supports_tools(tokenizer)
    text = render_text(
        tokenizer,
        [{"role": "system", "content": "You are a calculator."}, {"role": "user", "content": "2+3?"}],
        [ADD_TOOL],
    )
    tools_block = tools_system_text(normalize_tools([ADD_TOOL]))
    assert text == (
        f"<|im_start|>system\nYou are a calculator.\n\n{tools_block}<|im_end|>\n"
        "<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n"
    )
    # the block holds each tool's JSON schema on its own line inside <tools></tools>, and the call format
    inside = tools_block.split("<tools>\n", 1)[1].split("</tools>", 1)[0]
    assert [json.loads(line) for line in inside.splitlines()] == [ADD_TOOL]
    assert "<tool_call>" in tools_block and '"arguments"' in tools_block


def test_tools_without_a_system_message_create_one(tokenizer: Any) -> None:
    text = render_text(tokenizer, [{"role": "user", "content": "2+3?"}], [ADD_TOOL])
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert text.count("<|im_start|>system") == 1


def test_tool_calls_and_results_follow_the_hermes_convention(tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": "What is 2+3 and 4+5?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}},
                {"id": "call_2", "type": "function", "function": {"name": "add", "arguments": '{"a": 4, "b": 5}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
        {"role": "tool", "tool_call_id": "call_2", "content": "9"},
    ]
    text = render_text(tokenizer, messages, [ADD_TOOL])
    after_system = text.split("<|im_end|>\n", 1)[1]
    assert after_system == (
        "<|im_start|>user\nWhat is 2+3 and 4+5?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": {"a": 4, "b": 5}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n5\n</tool_response>\n<tool_response>\n9\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_rendered_tool_call_parses_back_to_the_same_call() -> None:
    [msg] = normalize_messages(
        [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": '{"x": [1, "y"]}'}}]}]
    )
    parsed = parse_hermes(tool_call_text(msg["tool_calls"][0]))
    assert parsed.tool_calls[0].name == "f"
    assert json.loads(parsed.tool_calls[0].arguments) == {"x": [1, "y"]}


TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS={{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_tool_aware_template_renders_tools_itself(tokenizer: Any) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = TOOL_TEMPLATE
    assert template_supports_tools(tok)
    messages = [
        {"role": "user", "content": "2+3?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "add", "arguments": '{"a": 2}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
    ]
    rendered = render_chat(tok, normalize_messages(messages), normalize_tools([ADD_TOOL]))
    text = tok.decode(rendered.ids)
    assert rendered.tools_in_template is True
    assert text.startswith('<|im_start|>system\nTOOLS=[{"type": "function"')
    assert "# Tools" not in text
    # arguments reach the template as an object, not as a JSON string
    assert 'CALL add {"a": 2}' in text
    assert "<|im_start|>tool\n5<|im_end|>" in text


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ("hello", "messages"),
        ([{"content": "no role"}], "messages[0].role"),
        ([{"role": "wizard", "content": "x"}], "messages[0].role"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content[0]"),
        ([{"role": "assistant"}], "messages[0].content"),
        ([{"role": "user", "content": "q"}, {"role": "tool", "content": "5"}], "messages[1].tool_call_id"),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]}],
            "messages[0].tool_calls[0].function.arguments",
        ),
        ([{"role": "assistant", "tool_calls": [{"type": "function"}]}], "messages[0].tool_calls[0]"),
    ],
)
def test_malformed_messages_name_the_field(messages: Any, param: str) -> None:
    with pytest.raises(GatewayError) as info:
        normalize_messages(messages)
    assert info.value.param == param
    assert info.value.http_status == 400


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ({"name": "f"}, "tools"),
        ([{"type": "retrieval"}], "tools[0]"),
        ([{"type": "function", "function": {"description": "no name"}}], "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], "tools[0].function.parameters"),
    ],
)
def test_malformed_tools_name_the_field(tools: Any, param: str) -> None:
    with pytest.raises(GatewayError) as info:
        normalize_tools(tools)
    assert info.value.param == param


def test_render_turns_gives_each_assistant_turn_the_gateways_prompt_and_its_own_tokens(tokenizer: Any) -> None:
    from tracerl.gateway.chat import render_turns

    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    messages = normalize_messages([
        {"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
        {"role": "assistant", "content": "Answer: 5"},
    ])
    tools = normalize_tools([ADD_TOOL])
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    turns = render_turns(tokenizer, messages, tools, [end])
    assert len(turns) == 2
    (p0, r0), (p1, r1) = turns
    # the prompt of each turn is exactly what the gateway renders for the history before it
    assert p0 == render_chat(tokenizer, messages[:2], tools).ids
    assert p1 == render_chat(tokenizer, messages[:4], tools).ids
    # responses end with the end-of-turn token the engine records, and the next prompt repeats them
    assert r0[-1] == end and r1[-1] == end and end not in r0[:-1]
    assert p1[: len(p0) + len(r0)] == p0 + r0
    [tool_call] = parse_hermes(tokenizer.decode(r0, skip_special_tokens=True)).tool_calls
    assert json.loads(tool_call.arguments) == {"a": 2, "b": 3}
    assert tokenizer.decode(r1, skip_special_tokens=True) == "Answer: 5"


def test_render_turns_refuses_a_transcript_that_starts_with_the_assistant(tokenizer: Any) -> None:
    from tracerl.gateway.chat import render_turns

    messages = normalize_messages([{"role": "assistant", "content": "hi"}])
    with pytest.raises(GatewayError, match="start with an assistant"):
        render_turns(tokenizer, messages, [], [2])
