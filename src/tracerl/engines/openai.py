"""``openai`` engine: a frozen OpenAI-compatible upstream (for judges and evaluation).

It is not trainable and has no token ids: the gateway forwards the agent's request body (with ``model``
replaced by the upstream's model name when one is configured), returns the upstream's JSON, and records
text. Streaming requests are forwarded with ``stream: true`` and the upstream's server-sent events are
handed back one parsed ``data:`` payload at a time, so the gateway can both pass them on and capture them.

Errors: an upstream answer with status ≥ 400 raises :class:`UpstreamError` carrying that status and the
upstream's own error message; an upstream that cannot be reached (or times out) raises it with status 502
(504 for a timeout), naming the URL.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tracerl.errors import InvalidInput, TracerlError

logger = logging.getLogger(__name__)

ENDPOINTS = ("chat/completions", "completions")


class UpstreamError(TracerlError):
    """The upstream answered with an error, or could not be reached. ``http_status`` is the status to pass on."""

    def __init__(self, message: str, *, status: int, body: Any = None) -> None:
        super().__init__(message)
        self.http_status = status
        self.body = body


class OpenAIUpstream:
    """Forward OpenAI API calls to ``base_url`` (e.g. ``https://api.openai.com/v1``), authenticating with
    ``api_key``; ``model`` (when given) replaces the ``model`` of every forwarded request."""

    trainable = False

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        model: str | None = None,
        *,
        timeout_s: float = 120.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InvalidInput(f"upstream base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.model_name = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def _body(self, endpoint: str, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        if endpoint not in ENDPOINTS:
            raise InvalidInput(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}")
        if not isinstance(body, dict):
            raise InvalidInput(f"the request body must be a JSON object, got {type(body).__name__}")
        body = dict(body)
        if self.model:
            body["model"] = self.model
        body["stream"] = stream
        return body

    async def request(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``endpoint`` (``chat/completions`` or ``completions``) and return the JSON answer."""
        payload = self._body(endpoint, body, stream=False)
        try:
            response = await self._client.post(f"/{endpoint}", json=payload)
        except httpx.HTTPError as exc:
            raise _unreachable(self.base_url, exc) from exc
        if response.status_code >= 400:
            raise _error_from(response.status_code, response.content, self.base_url)
        try:
            answer = response.json()
        except ValueError as exc:
            raise UpstreamError(f"upstream {self.base_url} answered with invalid JSON", status=502) from exc
        if not isinstance(answer, dict):
            raise UpstreamError(f"upstream {self.base_url} answered with a non-object JSON value", status=502)
        return answer

    async def stream(self, endpoint: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST ``body`` with ``stream: true``; yield each server-sent event's JSON payload until ``[DONE]``."""
        payload = self._body(endpoint, body, stream=True)
        try:
            async with self._client.stream("POST", f"/{endpoint}", json=payload) as response:
                if response.status_code >= 400:
                    raise _error_from(response.status_code, await response.aread(), self.base_url)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, `event:` lines
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        return
                    try:
                        yield json.loads(data)
                    except ValueError as exc:
                        raise UpstreamError(
                            f"upstream {self.base_url} sent an event that is not JSON: {data[:200]!r}", status=502
                        ) from exc
        except httpx.HTTPError as exc:
            raise _unreachable(self.base_url, exc) from exc

    async def models(self) -> dict[str, Any]:
        """The upstream's ``GET /models`` answer."""
        try:
            response = await self._client.get("/models")
        except httpx.HTTPError as exc:
            raise _unreachable(self.base_url, exc) from exc
        if response.status_code >= 400:
            raise _error_from(response.status_code, response.content, self.base_url)
        return response.json()

    async def aclose(self) -> None:
        await self._client.aclose()


def _error_from(status: int, content: bytes, base_url: str) -> UpstreamError:
    """An :class:`UpstreamError` with the upstream's status and message (OpenAI's ``{"error": {...}}``)."""
    try:
        body: Any = json.loads(content)
    except ValueError:
        body = None
    message = content.decode(errors="replace")[:500]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message", message))
    return UpstreamError(f"upstream {base_url} answered {status}: {message}", status=status, body=body)


def _unreachable(base_url: str, exc: httpx.HTTPError) -> UpstreamError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(f"upstream {base_url} did not answer in time ({type(exc).__name__})", status=504)
    return UpstreamError(
        f"cannot reach upstream {base_url}: {exc!r} — check the URL and that the server is running", status=502
    )
