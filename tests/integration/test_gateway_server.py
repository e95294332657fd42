"""The gateway in its deployments: mounted in ``tracerl serve``'s app (behind its token), standalone
recording into a store reached over HTTP, and in front of a frozen OpenAI-compatible upstream.

All servers are real uvicorn servers on loopback; the model is the tiny random model on the hf engine; the
frozen upstream is itself a (second) tracerl gateway's untracked ``/v1``, so no network or mock is needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tracerl.engines.hf import HFEngine
from tracerl.engines.models import load_model
from tracerl.engines.openai import OpenAIUpstream
from tracerl.gateway import build_gateway_router, serve_in_thread, start_gateway
from tracerl.server.app import create_app
from tracerl.store import connect
from tracerl.store.base import Store
from tracerl.store.http import HttpStore
from tracerl.types import RolloutSpec

MODEL = "tiny-random"
HI = [{"role": "user", "content": "hi there"}]


@pytest.fixture(scope="module")
def engine() -> Iterator[HFEngine]:
    model, tokenizer = load_model(MODEL)
    eng = HFEngine(model, tokenizer, MODEL)
    yield eng
    asyncio.run(eng.aclose())


def attempt(store: Store) -> tuple[str, str]:
    store.enqueue([RolloutSpec(task={})])
    claim = store.claim("w")
    assert claim is not None
    return claim.rollout.rollout_id, claim.attempt.attempt_id


def test_gateway_mounted_in_the_store_server_behind_its_token(engine: HFEngine, tmp_path: Path) -> None:
    store = connect(f"sqlite:///{tmp_path / 'serve.db'}")
    app = create_app(store, token="s3cret", gateway_router=build_gateway_router(store, engine))
    server = serve_in_thread(app)
    try:
        rid, aid = attempt(store)
        url = f"{server.url}/r/{rid}/{aid}/v1"
        reply = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0).chat.completions.create(
            model=MODEL, messages=HI, max_tokens=6  # type: ignore[arg-type]
        )
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).chat.completions.create(
                model=MODEL, messages=HI, max_tokens=6  # type: ignore[arg-type]
            )
        remote = HttpStore(server.url, token="s3cret")  # what a trainer on another machine reads
        [span] = remote.get_spans(attempt_id=aid)
        assert engine.tokenizer.decode(span.response_ids, skip_special_tokens=True) == reply.choices[0].message.content
        remote.close()
    finally:
        server.stop()
        store.close()


def test_standalone_gateway_records_into_a_store_over_http(engine: HFEngine, tmp_path: Path) -> None:
    backing = connect(f"sqlite:///{tmp_path / 'remote.db'}")
    store_server = serve_in_thread(create_app(backing))
    store = HttpStore(store_server.url)
    gateway = start_gateway(store, engine)
    try:
        rid, aid = attempt(store)
        client = openai.OpenAI(base_url=gateway.base_url(rid, aid), api_key="x", max_retries=0)
        replies = [client.chat.completions.create(model=MODEL, messages=HI, max_tokens=5) for _ in range(2)]
        spans = backing.get_spans(attempt_id=aid)
        assert [s.attributes["call_id"] for s in spans] == [r.id for r in replies]
        assert [s.position for s in spans] == [0, 1]
    finally:
        gateway.stop()
        store.close()
        store_server.stop()
        backing.close()


@pytest.fixture()
def upstream_gateway(engine: HFEngine) -> Iterator[tuple[Store, Any]]:
    """A frozen upstream (gateway A's untracked /v1) and gateway B recording text calls made through it."""
    store_a, store_b = connect("memory://"), connect("memory://")
    gw_a = start_gateway(store_a, engine)
    upstream = OpenAIUpstream(f"{gw_a.url}/v1", api_key="unused", model=MODEL)
    gw_b = start_gateway(store_b, upstream, model_name="judge")
    yield store_b, gw_b
    gw_b.stop()
    gw_a.stop()


def test_frozen_upstream_calls_are_forwarded_and_recorded_as_text(upstream_gateway: tuple[Store, Any]) -> None:
    store, gateway = upstream_gateway
    rid, aid = attempt(store)
    client = openai.OpenAI(base_url=gateway.base_url(rid, aid), api_key="x", max_retries=0)
    reply = client.chat.completions.create(model="judge", messages=HI, max_tokens=6, temperature=0)
    streamed = client.chat.completions.create(model="judge", messages=HI, max_tokens=6, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == reply.choices[0].message.content
    first, second = store.get_spans(attempt_id=aid)
    for span in (first, second):
        assert span.prompt_ids is None and span.response_ids is None and span.logprobs is None
        assert span.attributes["request"]["messages"] == HI
        assert span.attributes["response"]["choices"][0]["message"]["content"] == text
        assert span.attributes["weights_version"] is None
    assert second.attributes["stream"] is True
    with pytest.raises(openai.BadRequestError):  # the gateway only answers for its own model name
        client.chat.completions.create(model="gpt-4o", messages=HI)
    assert [m.id for m in client.models.list()] == ["judge"]
    with pytest.raises(openai.BadRequestError) as info:  # the upstream's own 400 is passed on
        client.chat.completions.create(model="judge", messages=HI, temperature=7)
    assert "temperature" in info.value.message
