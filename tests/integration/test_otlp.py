"""OTLP/HTTP ingest at ``/v1/traces``: OpenTelemetry spans of an attempt become store spans.

Requests are built with the official ``opentelemetry-proto`` classes (protobuf) and in OTLP's JSON
encoding, and — when the OpenTelemetry SDK and its OTLP/HTTP exporter are installed — sent by the real
exporter, as an instrumented agent would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("opentelemetry.proto")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from tracerl.server.otlp import seq_of
from tracerl.server.testing import ServerProcess, start_server
from tracerl.store.http import HttpStore
from tracerl.types import Claim, RolloutQuery, RolloutSpec, SpanKind

pytestmark = pytest.mark.timeout(120)

TRACE_ID = bytes(range(16))
ROOT_ID = bytes.fromhex("00000000000000a1")
LLM_ID = bytes.fromhex("00000000000000b2")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with start_server(f"sqlite:///{tmp_path_factory.mktemp('otlp') / 'store.db'}") as s:
        yield s


@pytest.fixture
def claim(server: ServerProcess) -> Claim:
    store = HttpStore(server.url)
    store.enqueue([RolloutSpec(task={"q": "otlp"})])
    got = store.claim("otel-worker", lease_s=600)
    assert got is not None
    return got


def kv(key: str, value: object) -> KeyValue:
    return KeyValue(key=key, value=any_value(value))


def any_value(value: object) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    return AnyValue(string_value=str(value))


def protobuf_request(attempt_id: str) -> bytes:
    """An agent run: a root span and an LLM call under it (with token ids), plus one span of an unknown
    attempt (its own resource) that must be rejected."""
    root = PbSpan(trace_id=TRACE_ID, span_id=ROOT_ID, name="agent.run", kind=PbSpan.SPAN_KIND_INTERNAL,
                  start_time_unix_nano=1_700_000_000_000_000_000, end_time_unix_nano=1_700_000_002_000_000_000,
                  attributes=[kv("task.id", 7), kv("ok", True)])  # fmt: skip
    llm = PbSpan(
        trace_id=TRACE_ID, span_id=LLM_ID, parent_span_id=ROOT_ID, name="chat smollm2", kind=PbSpan.SPAN_KIND_CLIENT,
        start_time_unix_nano=1_700_000_000_500_000_000, end_time_unix_nano=1_700_000_001_500_000_000,
        attributes=[kv("gen_ai.request.model", "smollm2-135m"), kv("gen_ai.usage.output_tokens", 2),
                    kv("tracerl.prompt_ids", [1, 2, 3]), kv("tracerl.response_ids", [4, 5]),
                    kv("tracerl.logprobs", [-0.5, -0.25]), kv("temperature", 0.7)],
    )  # fmt: skip
    stray = PbSpan(trace_id=TRACE_ID, span_id=bytes.fromhex("00000000000000c3"), name="stray",
                   start_time_unix_nano=1_700_000_000_000_000_000)  # fmt: skip
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[kv("service.name", "my-agent"), kv("tracerl.attempt_id", attempt_id)]),
                scope_spans=[ScopeSpans(spans=[root, llm])],
            ),
            ResourceSpans(
                resource=Resource(attributes=[kv("tracerl.attempt_id", "at-unknown")]),
                scope_spans=[ScopeSpans(spans=[stray])],
            ),
        ]
    ).SerializeToString()


def json_request(attempt_id: str) -> dict[str, object]:
    """The same kind of run in OTLP/JSON: hex ids, camelCase, 64-bit integers as strings."""
    return {
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my-agent"}}]},
            "scopeSpans": [{"scope": {"name": "agent-lib"}, "spans": [
                {"traceId": TRACE_ID.hex(), "spanId": "00000000000000d4", "name": "search tool", "kind": 1,
                 "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000100000000",
                 "attributes": [
                     {"key": "tracerl.attempt_id", "value": {"stringValue": attempt_id}},
                     {"key": "gen_ai.operation.name", "value": {"stringValue": "execute_tool"}},
                     {"key": "hits", "value": {"intValue": "3"}},
                     {"key": "scores", "value": {"arrayValue": {"values": [{"doubleValue": 0.5}]}}},
                 ],
                 "events": [{"name": "cache miss", "timeUnixNano": "1700000000050000000"}],
                 "status": {"code": 2, "message": "boom"}},
                {"traceId": TRACE_ID.hex(), "spanId": "00000000000000e5", "name": "custom step",
                 "startTimeUnixNano": "1700000000000000000",
                 "attributes": [{"key": "tracerl.attempt_id", "value": {"stringValue": attempt_id}},
                                {"key": "tracerl.span.kind", "value": {"stringValue": "reward"}},
                                {"key": "value", "value": {"doubleValue": 1.0}}]},
                {"traceId": TRACE_ID.hex(), "spanId": "00000000000000f6", "name": "no attempt id"},
            ]}],
        }]
    }  # fmt: skip


def test_protobuf_export_becomes_store_spans_and_resending_is_idempotent(
    server: ServerProcess, claim: Claim
) -> None:
    body = protobuf_request(claim.attempt.attempt_id)
    headers = {"Content-Type": "application/x-protobuf"}
    for _ in range(2):  # the exporter retries: the second batch must change nothing
        resp = httpx.post(f"{server.url}/v1/traces", content=body, headers=headers)
        assert resp.status_code == 200 and resp.headers["content-type"] == "application/x-protobuf"
        answer = ExportTraceServiceResponse.FromString(resp.content)
        assert answer.partial_success.rejected_spans == 1
        assert "at-unknown" in answer.partial_success.error_message

    spans = HttpStore(server.url).get_spans(attempt_id=claim.attempt.attempt_id)
    assert len(spans) == 2
    by_name = {s.name: s for s in spans}
    root, llm = by_name["agent.run"], by_name["chat smollm2"]
    assert root.seq == seq_of(ROOT_ID) and root.seq >= 2**62 and root.kind is SpanKind.CUSTOM
    assert root.rollout_id == claim.rollout.rollout_id
    assert root.attributes["task.id"] == 7 and root.attributes["ok"] is True
    assert root.attributes["otel.trace_id"] == TRACE_ID.hex() and root.attributes["otel.kind"] == "INTERNAL"
    assert root.attributes["otel.resource"]["service.name"] == "my-agent"
    assert (root.start_time, root.end_time) == (1_700_000_000.0, 1_700_000_002.0)
    assert llm.kind is SpanKind.LLM_CALL and llm.parent_seq == root.seq
    assert (llm.prompt_ids, llm.response_ids, llm.logprobs) == ([1, 2, 3], [4, 5], [-0.5, -0.25])
    assert llm.attributes["gen_ai.request.model"] == "smollm2-135m" and llm.attributes["temperature"] == 0.7
    assert "tracerl.prompt_ids" not in llm.attributes


def test_json_export_with_gzip(server: ServerProcess, claim: Claim) -> None:
    import gzip
    import json

    body = gzip.compress(json.dumps(json_request(claim.attempt.attempt_id)).encode())
    resp = httpx.post(f"{server.url}/v1/traces", content=body,
                      headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    partial = resp.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1 and "no tracerl.attempt_id" in partial["errorMessage"]
    spans = {s.name: s for s in HttpStore(server.url).get_spans(attempt_id=claim.attempt.attempt_id)}
    tool, reward = spans["search tool"], spans["custom step"]
    assert tool.kind is SpanKind.TOOL and tool.seq == seq_of(bytes.fromhex("00000000000000d4"))
    assert tool.attributes["hits"] == 3 and tool.attributes["scores"] == [0.5]
    assert tool.attributes["otel.status"] == {"code": "ERROR", "message": "boom"}
    assert tool.attributes["otel.events"] == [{"name": "cache miss", "time": 1_700_000_000.05, "attributes": {}}]
    assert tool.attributes["otel.scope"] == "agent-lib"
    assert reward.kind is SpanKind.REWARD and reward.attributes["value"] == 1.0


@pytest.mark.parametrize(
    ("content_type", "body", "status", "words"),
    [
        ("application/x-protobuf", b"\xff\xff\xff garbage", 400, "protobuf"),
        ("application/json", b"{nope", 400, "not valid JSON"),
        ("application/json", b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "zz"}]}]}]}', 400,
         "spanId"),
        ("text/plain", b"hello", 415, "application/x-protobuf"),
    ],
)  # fmt: skip
def test_malformed_exports_get_4xx_json_and_write_nothing(
    server: ServerProcess, content_type: str, body: bytes, status: int, words: str
) -> None:
    store = HttpStore(server.url)
    before = store.query_rollouts(RolloutQuery(limit=1000)).items
    spans_before = {r.rollout_id: store.get_spans(rollout_id=r.rollout_id) for r in before}
    resp = httpx.post(f"{server.url}/v1/traces", content=body, headers={"Content-Type": content_type})
    assert resp.status_code == status, resp.text
    assert words in resp.json()["error"]["message"]
    assert {r.rollout_id: store.get_spans(rollout_id=r.rollout_id) for r in before} == spans_before


def test_real_opentelemetry_sdk_exporter(server: ServerProcess, claim: Claim, tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk")
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource as SdkResource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=SdkResource.create({"tracerl.attempt_id": claim.attempt.attempt_id}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{server.url}/v1/traces")))
    tracer = provider.get_tracer("my-agent")
    with tracer.start_as_current_span("agent") as outer:
        with tracer.start_as_current_span("chat", attributes={"gen_ai.system": "openai"}) as inner:
            inner.set_attribute("gen_ai.usage.input_tokens", 12)
        outer.set_attribute("answer", "42")
    provider.shutdown()

    spans = {s.name: s for s in HttpStore(server.url).get_spans(attempt_id=claim.attempt.attempt_id)}
    assert set(spans) == {"agent", "chat"}
    assert spans["chat"].kind is SpanKind.LLM_CALL and spans["chat"].parent_seq == spans["agent"].seq
    assert spans["chat"].attributes["gen_ai.usage.input_tokens"] == 12
    assert spans["agent"].attributes["answer"] == "42"
    assert spans["agent"].attributes["otel.span_id"] == format(outer.get_span_context().span_id, "016x")
