"""Feeding a turn the gateway produced back as its recorded tokens (tracerl.gateway.history), on the real
tokenizer of the tiny test model (byte-level BPE, SmolLM2's ChatML template)."""

from __future__ import annotations

import copy
import json
from array import array
from typing import Any

import pytest

from fixtures_models import ADD_TOOL
from tracerl.engines.models import load_model
from tracerl.gateway.chat import normalize_messages, normalize_tools, render_chat
from tracerl.gateway.history import Call, TurnMemory, reply_key, splice
from tracerl.gateway.toolcalls import parse_hermes

TOOLS = normalize_tools([ADD_TOOL])
QUESTION = [{"role": "user", "content": "What is 17 + 25?"}]
COMPACT = '<tool_call>\n{"name":"add","arguments":{"a":17,"b":25}}\n</tool_call>'  # not json.dumps' spacing
KEY = ("rollout-1", "attempt-1")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    _, tok = load_model("tiny-random")
    return tok


def ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def served(tokenizer: Any, messages: list[dict[str, Any]], text: str, *, eot: bool = True) -> tuple[Call, dict]:
    """A call as the gateway serves it: canonical prompt, the model's ``text`` (+ <|im_end|>), and the
    assistant message returned to the client (arguments as a JSON string)."""
    canonical = normalize_messages(messages)
    prompt = render_chat(tokenizer, canonical, TOOLS).ids
    response = ids(tokenizer, text) + ([tokenizer.convert_tokens_to_ids("<|im_end|>")] if eot else [])
    parsed = parse_hermes(text)
    message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
    if parsed.tool_calls:
        message["tool_calls"] = [t.to_openai() for t in parsed.tool_calls]
    call = Call.of(canonical, TOOLS, prompt, prompt, [(response, message)])
    return call, message


def echoed(message: dict[str, Any]) -> dict[str, Any]:
    """The assistant message as an agent framework sends it back: arguments re-serialised its own way."""
    out = copy.deepcopy(message)
    for c in out.get("tool_calls") or []:
        c["function"]["arguments"] = json.dumps(json.loads(c["function"]["arguments"]), indent=2)
    return out


def next_request(tokenizer: Any, memory: TurnMemory, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """(spliced prompt, canonical prompt) of a request, as TokenService builds them."""
    canonical = normalize_messages(messages)
    full = render_chat(tokenizer, canonical, TOOLS).ids
    match, changed = memory.match(KEY, canonical, TOOLS)
    assert match is not None and not changed
    end_of_turn = {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    spliced = splice(full, match, end_of_turn)
    assert spliced is not None
    return spliced, full


# a template that renders tools and tool calls itself, the way Qwen's does (the gateway then passes them through)
QWEN_LIKE_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n"
    "{% endif %}{% for m in messages %}{% if m.role == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}{% for c in m.tool_calls or [] %}"
    '<tool_call>\n{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n</tool_call>'
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize("template", ["gateway's Hermes convention", "template's own tools"])
def test_compact_tool_call_json_is_fed_back_as_the_tokens_the_model_wrote(tokenizer: Any, template: str) -> None:
    if template == "template's own tools":
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.chat_template = QWEN_LIKE_TEMPLATE
    memory = TurnMemory()
    call, message = served(tokenizer, QUESTION, COMPACT)
    memory.remember(KEY, call)
    messages = [*QUESTION, echoed(message), {"role": "tool", "tool_call_id": "c", "content": "42"}]
    prompt, canonical = next_request(tokenizer, memory, messages)
    before = [*call.prompt_ids, *call.choices[0][0]]
    assert prompt[: len(before)] == before
    # what re-rendering would have shown the model: its call in json.dumps' spacing, not what it wrote
    assert canonical[: len(before)] != before
    assert '"a": 17' in tokenizer.decode(canonical) and '"a":17' not in tokenizer.decode(canonical)
    native = "You can call the functions" not in tokenizer.decode(canonical)
    assert native == (template == "template's own tools")
    tail = tokenizer.decode(prompt[len(before) :])
    assert tail == "\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


def test_canonical_output_splices_to_exactly_the_full_render(tokenizer: Any) -> None:
    """Where re-rendering is faithful anyway, the spliced prompt is the template's own render, token for token."""
    memory = TurnMemory()
    call, message = served(tokenizer, QUESTION, '<tool_call>\n{"name": "add", "arguments": {"a": 17, "b": 25}}\n'
                                                "</tool_call>")
    memory.remember(KEY, call)
    prompt, canonical = next_request(tokenizer, memory, [*QUESTION, message,
                                                        {"role": "tool", "tool_call_id": "c", "content": "42"}])
    assert prompt == canonical


def test_a_response_cut_by_max_tokens_is_closed_with_the_templates_end_of_turn(tokenizer: Any) -> None:
    memory = TurnMemory()
    call, message = served(tokenizer, QUESTION, "It is  42", eot=False)
    memory.remember(KEY, call)
    prompt, _ = next_request(tokenizer, memory, [*QUESTION, message, {"role": "user", "content": "Sure?"}])
    before = [*call.prompt_ids, *call.choices[0][0]]
    assert prompt[: len(before)] == before
    assert tokenizer.decode(prompt[len(before) :]).startswith("<|im_end|>\n<|im_start|>user\nSure?<|im_end|>")


def test_three_calls_chain_and_the_longest_remembered_call_wins(tokenizer: Any) -> None:
    memory = TurnMemory()
    first, m1 = served(tokenizer, QUESTION, COMPACT)
    memory.remember(KEY, first)
    history = [*QUESTION, echoed(m1), {"role": "tool", "tool_call_id": "c", "content": "42"}]
    prompt2, _ = next_request(tokenizer, memory, history)
    text2 = '<tool_call>\n{"name":"add","arguments":{"a":42,"b":1}}\n</tool_call>'
    second, m2 = served(tokenizer, history, text2)
    second.prompt_ids = array("i", prompt2)  # what the gateway sent the engine (spliced)
    memory.remember(KEY, second)
    history += [echoed(m2), {"role": "tool", "tool_call_id": "d", "content": "43"}]
    prompt3, canonical3 = next_request(tokenizer, memory, history)
    for call in (first, second):
        before = [*call.prompt_ids, *call.choices[0][0]]
        assert prompt3[: len(before)] == before
    # the same conversation as the template renders it, except each call is in the model's own spacing
    written = tokenizer.decode(canonical3)
    for compact in (COMPACT, text2):
        payload = compact.split("\n")[1]
        written = written.replace(json.dumps(json.loads(payload)), payload)
    assert tokenizer.decode(prompt3) == written


def test_a_changed_turn_is_not_reused_and_is_reported(tokenizer: Any) -> None:
    memory = TurnMemory()
    call, message = served(tokenizer, QUESTION, COMPACT)
    memory.remember(KEY, call)
    edited = echoed(message)
    edited["tool_calls"][0]["function"]["arguments"] = '{"a": 17, "b": 26}'
    for changed_message in (edited, {"role": "assistant", "content": "I would rather not."}):
        messages = normalize_messages([*QUESTION, changed_message, {"role": "user", "content": "ok"}])
        assert memory.match(KEY, messages, TOOLS) == (None, True)


def test_requests_that_continue_nothing_remembered_are_neither_reused_nor_changed(tokenizer: Any) -> None:
    memory = TurnMemory()
    call, message = served(tokenizer, QUESTION, COMPACT)
    memory.remember(KEY, call)
    other_question = normalize_messages([{"role": "user", "content": "What is 1 + 1?"}, message])
    assert memory.match(KEY, other_question, TOOLS) == (None, False)
    same = normalize_messages([*QUESTION, message])
    assert memory.match(KEY, same, []) == (None, False)  # other tools: another system prompt
    assert memory.match(("rollout-1", "attempt-2"), same, TOOLS) == (None, False)  # other attempt
    assert memory.match(KEY, same, TOOLS)[0] is not None


def test_reply_key_ignores_ids_and_json_formatting_but_not_values() -> None:
    def msg(args: str, content: str | None = None, call_id: str = "a") -> dict[str, Any]:
        call = {"id": call_id, "type": "function", "function": {"name": "add", "arguments": args}}
        return {"role": "assistant", "content": content, "tool_calls": [call]}

    assert reply_key(msg('{"a":1,"b":2}')) == reply_key(msg('{\n  "b": 2,\n  "a": 1\n}', "", call_id="z"))
    assert reply_key(msg('{"a":1,"b":2}')) != reply_key(msg('{"a":1,"b":3}'))
    assert reply_key(msg('{"a":1}')) != reply_key(msg('{"a":1}', "thinking"))
    assert reply_key(normalize_messages([msg('{"a":1}')])[0]) == reply_key(msg('{"a": 1}'))


def chatml_variant(tokenizer: Any, assistant: str, system: str = "{{ m.content }}") -> Any:
    """The tiny tokenizer with a ChatML template that renders earlier assistant turns / system turns its way."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.role == 'assistant' and not loop.last %}" + assistant + "{% elif m.role == 'system' %}" + system
        + "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tok


def test_a_template_that_hides_earlier_turns_still_shows_the_model_what_it_wrote(tokenizer: Any) -> None:
    tok = chatml_variant(tokenizer, assistant="(earlier answer)")
    memory = TurnMemory()
    call, message = served(tok, QUESTION, "It is 42.")
    memory.remember(KEY, call)
    prompt, canonical = next_request(tok, memory, [*QUESTION, message, {"role": "user", "content": "Sure?"}])
    assert "(earlier answer)" in tok.decode(canonical)
    tail = "It is 42.<|im_end|>\n<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(prompt).endswith(tail)


def test_a_template_that_renders_the_earlier_prompt_differently_is_not_spliced(tokenizer: Any) -> None:
    """E.g. a system prompt that depends on the number of turns: the remembered prompt is no longer this
    conversation's beginning, so the request is rendered as a whole."""
    tok = chatml_variant(tokenizer, assistant="{{ m.content }}", system="turns: {{ messages | length }}")
    memory = TurnMemory()
    system = [{"role": "system", "content": "You add."}]
    call, message = served(tok, [*system, *QUESTION], "It is 42.")
    memory.remember(KEY, call)
    messages = normalize_messages([*system, *QUESTION, message, {"role": "user", "content": "Sure?"}])
    full = render_chat(tok, messages, TOOLS).ids
    match, _ = memory.match(KEY, messages, TOOLS)
    assert match is not None
    assert splice(full, match, {tok.convert_tokens_to_ids("<|im_end|>")}) is None


def test_memory_is_bounded_by_calls_tokens_attempts_and_time(tokenizer: Any) -> None:
    call, message = served(tokenizer, QUESTION, COMPACT)
    same = normalize_messages([*QUESTION, message])

    memory = TurnMemory(max_calls=2)
    for _ in range(3):
        memory.remember(KEY, copy.deepcopy(call))
    assert memory.tokens == 2 * call.tokens

    memory = TurnMemory(max_tokens=2 * call.tokens)
    for attempt in ("a1", "a2", "a3"):
        memory.remember(("r", attempt), copy.deepcopy(call))
    assert memory.tokens == 2 * call.tokens
    assert memory.match(("r", "a1"), same, TOOLS) == (None, False)  # least recently used went first
    assert memory.match(("r", "a3"), same, TOOLS)[0] is not None

    memory = TurnMemory(max_attempts=1)
    memory.remember(("r", "a1"), copy.deepcopy(call))
    memory.remember(("r", "a2"), copy.deepcopy(call))
    assert memory.match(("r", "a1"), same, TOOLS) == (None, False) and memory.tokens == call.tokens

    memory = TurnMemory()
    memory.remember(KEY, copy.deepcopy(call))
    memory.forget(KEY)
    assert memory.match(KEY, same, TOOLS) == (None, False) and memory.tokens == 0

    memory = TurnMemory(ttl_s=0.0)
    memory.remember(KEY, copy.deepcopy(call))
    assert memory.match(KEY, same, TOOLS) == (None, False) and memory.tokens == 0


def test_with_n_choices_the_one_the_agent_kept_is_reused(tokenizer: Any) -> None:
    canonical = normalize_messages(QUESTION)
    prompt = render_chat(tokenizer, canonical, TOOLS).ids
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    texts = ["It is 42.", "It is  42 ."]
    replies = [([*ids(tokenizer, t), end], {"role": "assistant", "content": t}) for t in texts]
    memory = TurnMemory()
    memory.remember(KEY, Call.of(canonical, TOOLS, prompt, prompt, replies))
    prompt2, _ = next_request(tokenizer, memory, [*QUESTION, {"role": "assistant", "content": texts[1]},
                                                  {"role": "user", "content": "Sure?"}])
    before = prompt + replies[1][0]
    assert prompt2[: len(before)] == before
