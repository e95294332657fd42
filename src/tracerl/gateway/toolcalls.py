"""Tool calls out of generated text, into OpenAI ``tool_calls``.

Models emit tool calls as text in a format their family was trained on. Two formats are understood:

* ``hermes`` (the default; Hermes, Qwen 2/2.5/3, SmolLM2 and anything the gateway prompts itself, see
  :mod:`tracerl.gateway.chat`)::

      some optional text
      <tool_call>
      {"name": "add", "arguments": {"a": 1, "b": 2}}
      </tool_call>

  Several blocks may follow each other. A final block whose closing tag is missing (the model stopped on
  its end-of-turn token right after the JSON) is accepted when its JSON is complete.
* ``llama3-json`` (Llama 3.1+ with its own tool template): the whole reply is one JSON object
  ``{"name": ..., "parameters": {...}}``.

A block whose JSON does not parse, or lacks a string ``name`` or an object of arguments, is *not* a tool
call: it stays in the content as the model wrote it, so nothing the model produced is lost or invented.
Arguments are returned as a JSON string (OpenAI's convention), ids as ``call_<24 hex>``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_HERMES_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)


@dataclass(slots=True)
class ToolCall:
    """One parsed call: ``arguments`` is a JSON-encoded object."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(slots=True)
class ParsedOutput:
    """Generated text split into the assistant's ``content`` (``None`` when only calls remain) and calls."""

    content: str | None
    tool_calls: list[ToolCall]


def _as_call(payload: str, args_keys: tuple[str, ...]) -> ToolCall | None:
    """A :class:`ToolCall` from a JSON payload, or ``None`` when the payload is not a well-formed call."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args: Any = {}
    for key in args_keys:
        if key in obj:
            args = obj[key]
            break
    if isinstance(args, str):  # some models double-encode the arguments
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(name=obj["name"], arguments=json.dumps(args, ensure_ascii=False))


def parse_hermes(text: str) -> ParsedOutput:
    """Split ``<tool_call>{json}</tool_call>`` blocks out of ``text`` (see the module docstring)."""
    if "<tool_call>" not in text:
        return ParsedOutput(content=text, tool_calls=[])
    calls: list[ToolCall] = []
    kept: list[str] = []
    pos = 0
    for m in _HERMES_BLOCK.finditer(text):
        call = _as_call(m.group(1).strip(), ("arguments", "parameters"))
        if call is None:
            continue  # malformed: the block stays in the content verbatim
        kept.append(text[pos : m.start()])
        pos = m.end()
        calls.append(call)
    if not calls:
        return ParsedOutput(content=text, tool_calls=[])
    kept.append(text[pos:])
    content = "".join(kept).strip()
    return ParsedOutput(content=content or None, tool_calls=calls)


def parse_llama3_json(text: str) -> ParsedOutput:
    """A reply that is exactly one ``{"name": ..., "parameters": {...}}`` object is a call."""
    stripped = text.strip()
    if stripped.startswith("<|python_tag|>"):
        stripped = stripped.removeprefix("<|python_tag|>").strip()
    if not stripped.startswith("{"):
        return ParsedOutput(content=text, tool_calls=[])
    call = _as_call(stripped, ("parameters", "arguments"))
    if call is None:
        return ParsedOutput(content=text, tool_calls=[])
    return ParsedOutput(content=None, tool_calls=[call])


ToolCallParser = Callable[[str], ParsedOutput]

PARSERS: dict[str, ToolCallParser] = {"hermes": parse_hermes, "llama3-json": parse_llama3_json}

# substring of the lower-cased model name or tokenizer name -> format; first match wins, else hermes
_FAMILIES: tuple[tuple[str, str], ...] = (("llama-3", "llama3-json"), ("llama3", "llama3-json"))


def tool_format_for(model_name: str) -> str:
    """The tool-call format of a model family, chosen from its name (``hermes`` unless it is Llama 3)."""
    name = model_name.lower()
    return next((fmt for key, fmt in _FAMILIES if key in name), "hermes")
