"""Server-sent events in OpenAI's chunk format, cut from a finished response.

The engine returns whole completions, and the gateway records them before the first byte goes out, so a
streamed call is captured exactly like a non-streamed one (same ids, same log-probs, same response JSON).
The stream is then cut from that response:

chat (``chat.completion.chunk``), per choice: a role chunk ``{"role": "assistant", "content": ""}``; one
content delta per sampled token (text split at token boundaries, holding back incomplete UTF-8), or, when
tool calls were parsed, the remaining content as one delta followed by one delta per tool call (id, type
and name, then its arguments); a finish chunk with an empty delta and ``finish_reason``. With
``stream_options.include_usage`` every chunk carries ``"usage": null`` and a last chunk with no choices
carries the usage. The stream ends with ``data: [DONE]``.

completions (``text_completion``): one chunk per token piece, a finish chunk, the usage chunk, ``[DONE]``.

Concatenating the deltas of a choice gives exactly its non-streamed ``content`` / ``text``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def sse(payload: dict[str, Any] | str) -> bytes:
    """One SSE ``data:`` event."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def token_pieces(tokenizer: Any, ids: list[int], full_text: str) -> list[str]:
    """``full_text`` cut into one piece per token of ``ids`` (``""`` for a token that completes nothing
    printable yet). ``"".join(pieces) == full_text`` always holds: should incremental decoding disagree with
    the full decode (rare tokenizer normalisations), the remainder goes into the last piece."""
    pieces: list[str] = []
    prefix_start, read_start = 0, 0  # decode a short window so leading-space rules match the full decode
    for k in range(len(ids)):
        before = tokenizer.decode(ids[prefix_start:read_start], skip_special_tokens=True)
        after = tokenizer.decode(ids[prefix_start : k + 1], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            piece = after[len(before) :]
            prefix_start, read_start = read_start, k + 1
        else:
            piece = ""
        pieces.append(piece)
    if "".join(pieces) != full_text:
        return [""] * (len(ids) - 1) + [full_text] if ids else [full_text]
    return pieces


def _chat_chunk(response: dict[str, Any], choices: list[dict[str, Any]], usage: bool) -> dict[str, Any]:
    chunk = {
        "id": response["id"],
        "object": "chat.completion.chunk",
        "created": response["created"],
        "model": response["model"],
        "system_fingerprint": response.get("system_fingerprint"),
        "choices": choices,
    }
    if usage:
        chunk["usage"] = None
    return chunk


def chat_events(
    response: dict[str, Any], pieces: list[list[str] | None], *, include_usage: bool
) -> Iterator[bytes]:
    """SSE events for a chat completion ``response``; ``pieces[i]`` are the per-token content pieces of
    choice ``i`` (``None`` when it has tool calls and goes out in one delta)."""
    for i, choice in enumerate(response["choices"]):
        msg = choice["message"]
        lp = (choice.get("logprobs") or {}).get("content")

        def delta(d: dict[str, Any], logprobs: Any = None, finish: str | None = None, i: int = i) -> bytes:
            entry = {"index": i, "delta": d, "logprobs": logprobs, "finish_reason": finish}
            return sse(_chat_chunk(response, [entry], include_usage))

        yield delta({"role": "assistant", "content": ""})
        choice_pieces = pieces[i]
        if choice_pieces is not None:
            for k, piece in enumerate(choice_pieces):
                yield delta({"content": piece}, {"content": [lp[k]]} if lp else None)
        else:
            if msg.get("content"):
                yield delta({"content": msg["content"]}, {"content": lp} if lp else None)
            for k, call in enumerate(msg.get("tool_calls") or []):
                head = {"name": call["function"]["name"], "arguments": ""}
                yield delta({"tool_calls": [{"index": k, "id": call["id"], "type": "function", "function": head}]})
                args = {"arguments": call["function"]["arguments"]}
                yield delta({"tool_calls": [{"index": k, "function": args}]})
        yield delta({}, finish=choice["finish_reason"])
    if include_usage:
        last = _chat_chunk(response, [], False)
        last["usage"] = response["usage"]
        yield sse(last)
    yield sse("[DONE]")


def completion_events(
    response: dict[str, Any], pieces: list[list[str]], *, include_usage: bool
) -> Iterator[bytes]:
    """SSE events for a text completion ``response`` (one piece per token of each choice)."""

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        c = {"id": response["id"], "object": "text_completion", "created": response["created"],
             "model": response["model"], "choices": choices}
        if include_usage:
            c["usage"] = None
        return c

    for i, choice in enumerate(response["choices"]):
        for piece in pieces[i]:
            yield sse(chunk([{"index": i, "text": piece, "logprobs": None, "finish_reason": None}]))
        yield sse(chunk([{"index": i, "text": "", "logprobs": None, "finish_reason": choice["finish_reason"]}]))
    if include_usage:
        last = chunk([])
        last["usage"] = response["usage"]
        yield sse(last)
    yield sse("[DONE]")
