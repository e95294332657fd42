"""Serving calls through a frozen OpenAI-compatible upstream (:class:`~tracerl.engines.openai.OpenAIUpstream`).

Nothing here is trainable and there are no token ids: the request body is forwarded as the client sent it
(the upstream substitutes its own model name when it has one), the upstream's answer goes back unchanged,
and the span records request and response text (``prompt_ids = response_ids = logprobs = None``).

A streamed call is read from the upstream to its end, recorded, and then replayed to the client event by
event — so, as with a token engine, the span is stored before the agent sees the call finish (at the cost
of time-to-first-token). To record it, the events are folded into the non-streamed response shape
(content and tool-call arguments concatenated per choice, the last ``finish_reason``, the usage chunk).

When the gateway is given a ``model_name``, requests for another model get a 400 like a token engine's;
without one, any model name is passed on to the upstream.
"""

from __future__ import annotations

import time
from typing import Any

from tracerl.engines.openai import OpenAIUpstream
from tracerl.gateway.errors import GatewayError
from tracerl.gateway.service import CallResult, Sample


def fold_chat_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed ``chat.completion`` equivalent of streamed chunks."""
    choices: dict[int, dict[str, Any]] = {}
    head: dict[str, Any] = {}
    usage = None
    for chunk in chunks:
        head = head or chunk
        usage = chunk.get("usage") or usage
        for c in chunk.get("choices") or []:
            choice = choices.setdefault(
                c.get("index", 0),
                {"index": c.get("index", 0), "message": {"role": "assistant", "content": None},
                 "logprobs": None, "finish_reason": None},
            )
            msg, delta = choice["message"], c.get("delta") or {}
            if delta.get("content"):
                msg["content"] = (msg["content"] or "") + delta["content"]
            for tc in delta.get("tool_calls") or []:
                calls = msg.setdefault("tool_calls", [])
                k = tc.get("index", len(calls))
                while len(calls) <= k:
                    calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                fn = tc.get("function") or {}
                calls[k]["id"] = tc.get("id") or calls[k]["id"]
                calls[k]["function"]["name"] += fn.get("name") or ""
                calls[k]["function"]["arguments"] += fn.get("arguments") or ""
            if c.get("finish_reason"):
                choice["finish_reason"] = c["finish_reason"]
    return {
        "id": head.get("id", ""),
        "object": "chat.completion",
        "created": head.get("created", int(time.time())),
        "model": head.get("model", ""),
        "choices": [choices[i] for i in sorted(choices)],
        "usage": usage,
    }


def fold_completion_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed ``text_completion`` equivalent of streamed chunks."""
    choices: dict[int, dict[str, Any]] = {}
    head: dict[str, Any] = {}
    usage = None
    for chunk in chunks:
        head = head or chunk
        usage = chunk.get("usage") or usage
        for c in chunk.get("choices") or []:
            i = c.get("index", 0)
            choice = choices.setdefault(i, {"index": i, "text": "", "logprobs": None, "finish_reason": None})
            choice["text"] += c.get("text") or ""
            if c.get("finish_reason"):
                choice["finish_reason"] = c["finish_reason"]
    return {
        "id": head.get("id", ""),
        "object": "text_completion",
        "created": head.get("created", int(time.time())),
        "model": head.get("model", ""),
        "choices": [choices[i] for i in sorted(choices)],
        "usage": usage,
    }


class UpstreamService:
    """Chat and text completions forwarded to a frozen upstream."""

    def __init__(self, upstream: OpenAIUpstream, *, model_name: str | None):
        self.upstream = upstream
        self.model_name = model_name

    async def models(self) -> dict[str, Any]:
        if self.model_name:
            return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                                "owned_by": "tracerl"}]}
        return await self.upstream.models()

    def _check(self, body: Any) -> bool:
        if not isinstance(body, dict):
            raise GatewayError("the request body must be a JSON object")
        if self.model_name and body.get("model") != self.model_name:
            raise GatewayError(
                f"model {body.get('model')!r} is not served here; this gateway serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise GatewayError(f"'stream' must be true or false, got {stream!r}", param="stream")
        return stream

    async def _call(self, endpoint: str, body: Any) -> CallResult:
        started = time.time()
        stream = self._check(body)
        events: list[dict[str, Any]] | None = None
        if stream:
            events = [e async for e in self.upstream.stream(endpoint, body)]
            fold = fold_chat_chunks if endpoint == "chat/completions" else fold_completion_chunks
            response = fold(events)
        else:
            response = await self.upstream.request(endpoint, body)
        choices = response.get("choices") or []
        samples = [Sample(index=i, prompt_ids=None, completion=None, choice=c) for i, c in enumerate(choices)]
        return CallResult(
            endpoint=endpoint.replace("/", "."),
            request=body,
            response=response,
            samples=samples,
            stream=stream,
            include_usage=False,
            raw_events=events,
            started=started,
            latency_s=time.time() - started,
        )

    async def chat(self, body: Any, attempt: tuple[str, str] | None = None) -> CallResult:
        """Forward a chat completion (``attempt`` is unused: an upstream gets text, not recorded tokens)."""
        return await self._call("chat/completions", body)

    def forget(self, attempt: tuple[str, str]) -> None:
        """Nothing is remembered per attempt for a frozen upstream."""

    async def completion(self, body: Any) -> CallResult:
        return await self._call("completions", body)
