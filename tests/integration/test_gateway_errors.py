"""Bad requests to the gateway get OpenAI-format 4xx errors naming the field, and record nothing.

A real uvicorn server on loopback with the tiny model; requests are sent raw (httpx) to check the exact
status and error document, and through the official client to check it raises the right exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tracerl.engines.hf import HFEngine
from tracerl.engines.models import load_model
from tracerl.gateway import RunningGateway, start_gateway
from tracerl.gateway.app import MAX_BODY_DEPTH
from tracerl.store.memory import MemoryStore
from tracerl.types import RolloutSpec

MODEL = "tiny-random"
HI = [{"role": "user", "content": "hi"}]


class Env:
    def __init__(self, store: MemoryStore, gateway: RunningGateway, rollout_id: str, attempt_id: str) -> None:
        self.store, self.gateway = store, gateway
        self.rollout_id, self.attempt_id = rollout_id, attempt_id
        self.http = httpx.Client(base_url=gateway.base_url(rollout_id, attempt_id), timeout=60)

    def post(self, path: str, body: Any) -> httpx.Response:
        if isinstance(body, bytes):
            return self.http.post(path, content=body, headers={"content-type": "application/json"})
        return self.http.post(path, json=body)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    model, tokenizer = load_model(MODEL)
    engine = HFEngine(model, tokenizer, MODEL, max_context=256)
    store = MemoryStore()
    store.enqueue([RolloutSpec(task={})])
    claim = store.claim("w")
    assert claim is not None
    gateway = start_gateway(store, engine)
    e = Env(store, gateway, claim.rollout.rollout_id, claim.attempt.attempt_id)
    yield e
    e.http.close()
    gateway.stop()
    asyncio.run(engine.aclose())


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HI, "max_tokens": 4, **fields}


def assert_openai_error(resp: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == ("invalid_request_error" if status == 400 else error["type"])
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error["message"]


@pytest.mark.parametrize(
    ("body", "param", "code", "says"),
    [
        (b"{not json", None, None, "not valid JSON"),
        ([1, 2], None, None, "JSON object"),
        ({"messages": HI}, "model", None, "'model' is required"),
        (chat(model="gpt-4o"), "model", "model_not_found", "serves 'tiny-random'"),
        (chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role", None, "'robot'"),
        (chat(messages=[]), "messages", None, "non-empty"),
        (chat(temperature="hot"), "temperature", None, "'hot'"),
        (chat(temperature=3.5), "temperature", None, "[0.0, 2.0]"),
        (chat(top_p=0), "top_p", None, "(0.0, 1.0]"),
        (chat(max_tokens=0), "max_tokens", None, "max_tokens"),
        (chat(max_completion_tokens="ten"), "max_completion_tokens", None, "integer"),
        (chat(n=0), "n", None, "[1, 64]"),
        (chat(stop=5), "stop", None, "stop"),
        (chat(seed=-1), "seed", None, "seed"),
        (chat(stream="yes"), "stream", None, "true or false"),
        (chat(presence_penalty=0.5), "presence_penalty", None, "not supported"),
        (chat(logit_bias={"5": 10}), "logit_bias", None, "not supported"),
        (chat(response_format={"type": "json_object"}), "response_format", None, "not supported"),
        (chat(functions=[{"name": "f"}]), "functions", None, "use 'tools'"),
        (chat(tool_choice="bogus"), "tool_choice", None, "'bogus'"),
        (chat(tools=[{"type": "function", "function": {}}]), "tools[0].function.name", None, "name"),
        (chat(max_tokens=1000), "max_tokens", "context_length_exceeded", "context of 256 tokens"),
        (chat(messages=[{"role": "user", "content": "word " * 400}]), "messages", "context_length_exceeded", "256"),
    ],
)
def test_bad_chat_requests_are_400_naming_the_field(
    env: Env, body: Any, param: str | None, code: str | None, says: str
) -> None:
    message = assert_openai_error(env.post("/chat/completions", body), 400, param, code)
    assert says in message
    assert env.store.get_spans(attempt_id=env.attempt_id) == []


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"model": MODEL, "prompt": 5}, "prompt", "string"),
        ({"model": MODEL, "prompt": [1, 99999]}, "prompt", "vocabulary"),
        ({"model": MODEL, "prompt": "x", "echo": True}, "echo", "not supported"),
        ({"model": MODEL, "prompt": "x", "best_of": 3}, "best_of", "'n'"),
        ({"model": MODEL, "prompt": "x", "logprobs": 9}, "logprobs", "[0, 5]"),
    ],
)
def test_bad_completion_requests_are_400(env: Env, body: Any, param: str, says: str) -> None:
    assert says in assert_openai_error(env.post("/completions", body), 400, param)
    assert env.store.get_spans(attempt_id=env.attempt_id) == []


def test_harmless_unknown_fields_are_ignored(env: Env) -> None:
    body = chat(
        user="u-1",
        parallel_tool_calls=False,
        metadata={"k": "v"},
        stream_options={"include_usage": True},
        logprobs=False,
        store=False,
        presence_penalty=0,
        some_future_field={"x": 1},
    )
    resp = env.post("/chat/completions", body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["role"] == "assistant"
    assert len(env.store.get_spans(attempt_id=env.attempt_id)) == 1


def test_unknown_route_and_wrong_method_are_openai_errors(env: Env) -> None:
    assert_openai_error(env.http.post("/embeddings", json={"model": MODEL, "input": "x"}), 404)
    assert_openai_error(env.http.get("/chat/completions"), 405)


def test_official_client_raises_bad_request_with_the_message(env: Env) -> None:
    client = openai.OpenAI(base_url=env.gateway.base_url(env.rollout_id, env.attempt_id), api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=5000)  # type: ignore[arg-type]
    assert info.value.code == "context_length_exceeded"
    assert info.value.param == "max_tokens"
    assert "ask for at most" in info.value.message


def _nested(depth: int) -> dict[str, Any]:
    """A JSON object nested exactly ``depth`` levels deep (``{}`` is 1)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_body_nested_deeper_than_the_store_can_record_is_400_before_any_work(env: Env) -> None:
    before = len(env.store.get_spans(attempt_id=env.attempt_id))
    # one level over: the body (with a harmless extra field) would be stored one level down in the span
    over = chat(some_future_field=_nested(MAX_BODY_DEPTH))  # the body is MAX_BODY_DEPTH + 1 levels
    says = assert_openai_error(env.post("/chat/completions", over), 400, code="body_too_deep")
    assert f"{MAX_BODY_DEPTH} levels" in says
    # far beyond what the JSON parser itself can read (a 500 before the check existed)
    huge = b'{"model": "tiny-random", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_openai_error(env.post("/chat/completions", huge), 400, code="body_too_deep")
    assert_openai_error(env.post("/completions", huge), 400, code="body_too_deep")
    # on an attempt that does not exist, too: the body is refused before the store is asked
    bad = httpx.post(f"{env.gateway.url}/r/nope/nope/v1/chat/completions", content=huge, timeout=60)
    assert_openai_error(bad, 400, code="body_too_deep")
    assert len(env.store.get_spans(attempt_id=env.attempt_id)) == before  # nothing generated or recorded
    # exactly at the limit: served, and the store keeps the request as sent
    ok = env.post("/chat/completions", chat(some_future_field=_nested(MAX_BODY_DEPTH - 1)))
    assert ok.status_code == 200, ok.text
    spans = env.store.get_spans(attempt_id=env.attempt_id)
    assert len(spans) == before + 1
    assert spans[-1].attributes["request"]["some_future_field"] == _nested(MAX_BODY_DEPTH - 1)
