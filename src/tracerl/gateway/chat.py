"""Chat messages (OpenAI format) to prompt token ids, with the model tokenizer's own chat template.

The gateway owns tokenization ("token in, token out"): what it renders here is exactly what the engine
sees and what the store records, so training never re-tokenizes text.

**Messages.** ``system`` (and ``developer``, treated as system), ``user``, ``assistant`` (with ``content``
and/or ``tool_calls``) and ``tool`` (a tool result, with ``tool_call_id``). Content may be a string or a
list of ``{"type": "text", "text": ...}`` parts (joined); other part types (images, audio) are refused.
Malformed messages raise :class:`~tracerl.gateway.errors.GatewayError` naming the message and the field.

**Tools.** When the tokenizer's chat template renders ``tools`` itself (it mentions ``tools``, as Qwen's and
Llama 3.1's do), messages and tool specs go to it unchanged, except that tool-call ``arguments`` are passed
as objects (templates serialise them with ``tojson``). When it does not (SmolLM2's plain ChatML), the
gateway uses one format of its own, the Hermes convention, and :mod:`tracerl.gateway.toolcalls` parses the
same convention back:

* the tool JSON schemas go into the system message (appended to it, or as a new first system message)::

      # Tools
      You can call the functions described in the JSON schemas inside <tools></tools>:
      <tools>
      {"type": "function", "function": {"name": "add", "parameters": {...}}}
      </tools>
      To call a function, answer with one block per call:
      <tool_call>
      {"name": "<function name>", "arguments": {<arguments as a JSON object>}}
      </tool_call>

* an assistant message's ``tool_calls`` become such ``<tool_call>`` blocks after its text;
* tool results become a ``user`` turn holding one ``<tool_response>...</tool_response>`` block per result
  (consecutive results share one turn), which is how Hermes-style models were trained to read them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tracerl.errors import InvalidInput
from tracerl.gateway.errors import GatewayError

ROLES = ("system", "developer", "user", "assistant", "tool")

TOOLS_HEADER = "# Tools\nYou can call the functions described in the JSON schemas inside <tools></tools>:\n<tools>\n"
TOOLS_FOOTER = (
    "</tools>\nTo call a function, answer with one block per call:\n<tool_call>\n"
    '{"name": "<function name>", "arguments": {<arguments as a JSON object>}}\n</tool_call>'
)


@dataclass(slots=True)
class RenderedPrompt:
    """The token ids of a rendered conversation and how tools were handled.

    ``tools_in_template``: the tokenizer's template rendered the tools itself (so the model family's own
    tool-call format applies); ``False`` when the gateway rendered them in the Hermes convention or there
    were no tools.
    """

    ids: list[int]
    tools_in_template: bool


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a ``tools`` argument (it mentions ``tools`` at all)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one, or a dedicated tool_use one
        return "tool_use" in template or "tools" in str(template.get("default", ""))
    return isinstance(template, str) and "tools" in template


# -- validation ------------------------------------------------------------------------------------------


def _text(content: Any, where: str) -> str:
    """The text of a message ``content``: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise GatewayError(
                    f"{where}[{j}] is a {kind!r} part; only text parts ({{'type': 'text', 'text': '...'}}) "
                    "are supported by this model",
                    param=f"{where}[{j}]",
                )
            parts.append(part["text"])
        return "".join(parts)
    raise GatewayError(f"{where} must be a string or a list of text parts, got {type(content).__name__}", param=where)


def _tool_calls(raw: Any, where: str) -> list[dict[str, Any]]:
    """Validated assistant ``tool_calls`` with arguments decoded to objects."""
    if not isinstance(raw, list):
        raise GatewayError(f"{where} must be a list of tool calls, got {type(raw).__name__}", param=where)
    out: list[dict[str, Any]] = []
    for j, call in enumerate(raw):
        here = f"{where}[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise GatewayError(
                f"{here} must look like {{'id': 'call_1', 'type': 'function', "
                "'function': {'name': 'f', 'arguments': '{...}'}}",
                param=here,
            )
        args: Any = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise GatewayError(
                    f"{here}.function.arguments is not valid JSON: {args[:200]!r}", param=f"{here}.function.arguments"
                ) from None
            except RecursionError:
                raise GatewayError(
                    f"{here}.function.arguments nests deeper than the JSON parser can read; flatten it",
                    param=f"{here}.function.arguments",
                ) from None
        if not isinstance(args, dict):
            where_args = f"{here}.function.arguments"
            raise GatewayError(f"{where_args} must encode a JSON object", param=where_args)
        fn_out = {"name": fn["name"], "arguments": args}
        out.append({"id": str(call.get("id", "")), "type": "function", "function": fn_out})
    return out


def normalize_messages(raw: Any) -> list[dict[str, Any]]:
    """Check OpenAI chat messages and return them in one canonical shape.

    Canonical: ``role`` in system/user/assistant/tool, ``content`` a string (``""`` when absent on an
    assistant message with tool calls), assistant ``tool_calls`` with arguments as dicts, tool messages
    with ``tool_call_id`` (and ``name`` when known).
    """
    if not isinstance(raw, list) or not raw:
        raise GatewayError("'messages' must be a non-empty list of chat messages", param="messages")
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name, to label tool results
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise GatewayError(f"{where} must be an object with 'role' and 'content'", param=where)
        role = m.get("role")
        if role not in ROLES:
            raise GatewayError(f"{where}.role is {role!r}; it must be one of {list(ROLES)}", param=f"{where}.role")
        if role == "developer":
            role = "system"
        msg: dict[str, Any] = {"role": role}
        content = m.get("content")
        if role == "assistant":
            msg["content"] = "" if content is None else _text(content, f"{where}.content")
            if m.get("tool_calls"):
                msg["tool_calls"] = _tool_calls(m["tool_calls"], f"{where}.tool_calls")
                for call in msg["tool_calls"]:
                    names[call["id"]] = call["function"]["name"]
            elif content is None:
                raise GatewayError(f"{where} (assistant) needs 'content' or 'tool_calls'", param=f"{where}.content")
        else:
            if content is None:
                raise GatewayError(f"{where} ({role}) is missing 'content'", param=f"{where}.content")
            msg["content"] = _text(content, f"{where}.content")
        if role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str):
                raise GatewayError(
                    f"{where} (tool) needs 'tool_call_id', the id of the assistant tool call it answers",
                    param=f"{where}.tool_call_id",
                )
            msg["tool_call_id"] = call_id
            name = m.get("name") or names.get(call_id)
            if name:
                msg["name"] = name
        out.append(msg)
    return out


def normalize_tools(raw: Any) -> list[dict[str, Any]]:
    """Check OpenAI ``tools`` (function tools only); returns them as ``{"type": "function", "function": ...}``."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise GatewayError(f"'tools' must be a list, got {type(raw).__name__}", param="tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise GatewayError(
                f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., 'parameters': {{...}}}}}}",
                param=f"tools[{i}]",
            )
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            where = f"tools[{i}].function.name"
            raise GatewayError(f"{where} must be a non-empty string", param=where)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise GatewayError(
                f"tools[{i}].function.parameters must be a JSON schema object", param=f"tools[{i}].function.parameters"
            )
        spec: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str):
            spec["description"] = fn["description"]
        spec["parameters"] = params
        out.append({"type": "function", "function": spec})
    return out


# -- Hermes convention (for templates without tool support) ---------------------------------------------


def tools_system_text(tools: list[dict[str, Any]]) -> str:
    """The tools block appended to the system message (format in the module docstring)."""
    lines = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tools)
    return TOOLS_HEADER + lines + TOOLS_FOOTER


def tool_call_text(call: dict[str, Any]) -> str:
    """One assistant tool call as a ``<tool_call>`` block."""
    payload = {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}
    return "<tool_call>\n" + json.dumps(payload, ensure_ascii=False) + "\n</tool_call>"


def to_hermes(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rewrite canonical messages into plain ``{"role", "content"}`` turns in the Hermes convention."""
    out: list[dict[str, Any]] = []
    if tools:
        block = tools_system_text(tools)
        if messages[0]["role"] == "system":
            first = messages[0]["content"]
            out.append({"role": "system", "content": f"{first}\n\n{block}" if first else block})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": block})
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            parts = [m["content"]] if m["content"] else []
            parts += [tool_call_text(c) for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(parts)})
        elif m["role"] == "tool":
            body = "<tool_response>\n" + m["content"] + "\n</tool_response>"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + body
            else:
                out.append({"role": "user", "content": body, "_tool_results": True})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    for m in out:
        m.pop("_tool_results", None)
    return out


# -- rendering -------------------------------------------------------------------------------------------


def _ids(encoded: Any) -> list[int]:
    """Token ids from whatever ``apply_chat_template(tokenize=True)`` returned (list or BatchEncoding)."""
    if isinstance(encoded, list):
        return [int(i) for i in encoded]
    ids = encoded["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def render_chat(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, generation_prompt: bool = True
) -> RenderedPrompt:
    """Prompt ids for canonical ``messages`` and ``tools``, ending with the assistant generation prompt
    (``generation_prompt=False``: the conversation as it stands, e.g. ending with an assistant turn)."""
    native = bool(tools) and template_supports_tools(tokenizer)
    if native:
        convo, kwargs = messages, {"tools": tools}
    elif tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
        convo, kwargs = to_hermes(messages, tools), {}
    else:
        convo, kwargs = messages, {}
    if getattr(tokenizer, "chat_template", None) is None:
        raise InvalidInput(
            f"the tokenizer of this model ({type(tokenizer).__name__}) has no chat template; "
            "use /v1/completions with a raw prompt, or give the tokenizer a chat_template"
        )
    try:
        encoded = tokenizer.apply_chat_template(
            convo, add_generation_prompt=generation_prompt, tokenize=True, **kwargs
        )
    except Exception as e:  # a template may raise on conversations it does not accept
        raise GatewayError(f"the model's chat template cannot render these messages: {e}", param="messages") from e
    return RenderedPrompt(ids=_ids(encoded), tools_in_template=native)


def render_turns(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]], end_of_turn: Sequence[int]
) -> list[tuple[list[int], list[int]]]:
    """``(prompt_ids, response_ids)`` for every assistant turn of a transcript, as the gateway renders them.

    ``prompt_ids`` of turn k are exactly what the gateway sends the engine when a client's history is the
    messages before it (:func:`render_chat`); ``response_ids`` are the tokens the model would have to write
    for that turn — its text and tool calls as the template renders them, through the first end-of-turn
    token (``end_of_turn``: e.g. ``<|im_end|>``), which the engine records too. So the next turn's prompt
    starts with ``prompt_ids + response_ids`` and training on these pairs trains the tokens the served model
    sees. ``messages`` are canonical (:func:`normalize_messages`).
    """
    stops = set(end_of_turn)
    out: list[tuple[list[int], list[int]]] = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if k == 0:
            raise GatewayError("a transcript cannot start with an assistant turn (no prompt before it)",
                               param="messages[0]")
        prompt = render_chat(tokenizer, messages[:k], tools).ids
        full = render_chat(tokenizer, messages[: k + 1], tools, generation_prompt=False).ids
        if full[: len(prompt)] != prompt:
            raise GatewayError(
                f"the chat template renders messages[{k}] (assistant) so that the conversation before it is not a "
                "prefix of the conversation with it; this template cannot be trained turn by turn",
                param=f"messages[{k}]",
            )
        rest = full[len(prompt) :]
        end = next((i for i, t in enumerate(rest) if t in stops), None)
        if end is None:
            raise GatewayError(
                f"the rendered assistant turn messages[{k}] has no end-of-turn token {sorted(stops)}", param="messages"
            )
        out.append((prompt, rest[: end + 1]))
    return out
