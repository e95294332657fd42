"""The frozen OpenAI-compatible upstream, against a real HTTP server on loopback that answers like OpenAI."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tracerl.engines.openai import OpenAIUpstream, UpstreamError
from tracerl.errors import InvalidInput

SEEN: list[dict[str, Any]] = []


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions (JSON or SSE), /v1/models, and a 400 for model 'bad'."""

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"object": "list", "data": [{"id": "upstream-model", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        SEEN.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if body.get("model") == "bad":
            self._send(400, {"error": {"type": "invalid_request_error", "message": "model 'bad' does not exist"}})
            return
        if not body.get("stream"):
            self._send(200, {"id": "c1", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                                          "finish_reason": "stop"}]})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in ["Hel", "lo", "!"]:
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b": keep-alive comment\n\ndata: [DONE]\n\n")


@pytest.fixture
def upstream_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    SEEN.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_requests_are_forwarded_with_the_configured_model_and_key(upstream_url: str) -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        up = OpenAIUpstream(upstream_url, api_key="sk-test", model="upstream-model")
        try:
            body = {"model": "whatever-the-agent-says", "messages": [{"role": "user", "content": "hi"}]}
            return await up.request("chat/completions", body), await up.models()
        finally:
            await up.aclose()

    answer, models = asyncio.run(main())
    assert answer["choices"][0]["message"]["content"] == "Hello!"
    assert models["data"][0]["id"] == "upstream-model"
    assert SEEN[0]["path"] == "/v1/chat/completions"
    assert SEEN[0]["auth"] == "Bearer sk-test"
    assert SEEN[0]["body"]["model"] == "upstream-model"
    assert SEEN[0]["body"]["messages"] == [{"role": "user", "content": "hi"}]


def test_streaming_yields_each_event_until_done(upstream_url: str) -> None:
    async def main() -> list[dict[str, Any]]:
        up = OpenAIUpstream(upstream_url)
        try:
            return [e async for e in up.stream("chat/completions", {"model": "m", "messages": []})]
        finally:
            await up.aclose()

    events = asyncio.run(main())
    assert "".join(e["choices"][0]["delta"]["content"] for e in events) == "Hello!"
    assert SEEN[0]["body"]["stream"] is True
    assert SEEN[0]["auth"] is None


def test_upstream_errors_keep_their_status_and_message(upstream_url: str) -> None:
    async def call(stream: bool) -> None:
        up = OpenAIUpstream(upstream_url)
        try:
            if stream:
                async for _ in up.stream("chat/completions", {"model": "bad"}):
                    pass
            else:
                await up.request("chat/completions", {"model": "bad"})
        finally:
            await up.aclose()

    for stream in (False, True):
        with pytest.raises(UpstreamError, match="model 'bad' does not exist") as info:
            asyncio.run(call(stream))
        assert info.value.http_status == 400


def test_an_unreachable_upstream_is_a_502_naming_the_url() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"

    async def main() -> None:
        up = OpenAIUpstream(url)
        try:
            await up.request("chat/completions", {"model": "m"})
        finally:
            await up.aclose()

    with pytest.raises(UpstreamError, match=f"cannot reach upstream {url}") as info:
        asyncio.run(main())
    assert info.value.http_status == 502


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(InvalidInput, match="must start with http"):
        OpenAIUpstream("localhost:8000/v1")

    async def main() -> None:
        up = OpenAIUpstream("http://127.0.0.1:9/v1")
        try:
            await up.request("embeddings", {})
        finally:
            await up.aclose()

    with pytest.raises(InvalidInput, match="endpoint must be one of"):
        asyncio.run(main())
