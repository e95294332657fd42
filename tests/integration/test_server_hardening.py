"""Hostile input to a real ``tracerl serve`` on loopback: refused with a clear 4xx, nothing stored, and the
server keeps serving everyone else (deep JSON, OTLP nesting, ids, the lease clock, headers, errors)."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tracerl.server.limits import MAX_HEAD_BYTES, MAX_HEADERS
from tracerl.server.testing import ServerProcess, start_server
from tracerl.store.base import MAX_JSON_DEPTH
from tracerl.store.http import HttpStore
from tracerl.types import RolloutQuery, RolloutSpec

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with start_server(f"sqlite:///{tmp_path_factory.mktemp('hardening') / 'store.db'}") as s:
        yield s


@pytest.fixture
def attempt_id(server: ServerProcess) -> str:
    store = HttpStore(server.url)
    store.enqueue([RolloutSpec(task={"q": "hardening"})])
    got = store.claim("w", lease_s=600)
    assert got is not None
    return got.attempt.attempt_id


def deep(levels: int) -> Any:
    """A JSON object ``levels`` deep: ``{"a": {"a": ... {}}}``."""
    value: Any = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def post(server: ServerProcess, path: str, body: Any, method: str = "POST") -> httpx.Response:
    return httpx.request(method, server.url + path, json=body, timeout=30)


def assert_400(resp: httpx.Response, *words: str) -> None:
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "InvalidInput"
    for word in words:
        assert word in err["message"], err["message"]


def rollout_ids(server: ServerProcess) -> list[str]:
    return [r.rollout_id for r in HttpStore(server.url).query_rollouts(RolloutQuery(limit=10_000)).items]


# -- deep JSON -------------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 252, 900])
def test_deep_json_is_refused_at_the_door_on_every_route_that_stores_json(
    server: ServerProcess, attempt_id: str, levels: int
) -> None:
    before = rollout_ids(server)
    limit = str(MAX_JSON_DEPTH)
    assert_400(post(server, "/api/v1/rollouts", {"specs": [{"task": deep(levels)}]}), limit, "flatten")
    assert_400(post(server, "/api/v1/rollouts", {"specs": [{"task": {}, "metadata": deep(levels)}]}), limit)
    span = {"attempt_id": attempt_id, "seq": 0, "kind": "custom", "attributes": deep(levels)}
    assert_400(post(server, "/api/v1/spans", {"spans": [span]}), limit)
    assert_400(post(server, "/api/v1/resources/deep", {"value": deep(levels)}, method="PUT"), limit)
    assert_400(post(server, "/api/v1/rollouts/query", {"group_id": "g", "x": deep(300)}), "request body")
    # nothing was stored, and everything still reads back
    assert rollout_ids(server) == before
    store = HttpStore(server.url)
    assert store.get_spans(attempt_id=attempt_id) == []
    assert httpx.get(f"{server.url}/api/v1/resources/deep").status_code == 404
    assert all(store.get_rollout(r) for r in before)


def otlp_doc(attempt_id: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "0" * 31 + "1", "spanId": "00000000000000a1", "name": "deep",
        "startTimeUnixNano": "1700000000000000000",
        "attributes": [{"key": "tracerl.attempt_id", "value": {"stringValue": attempt_id}},
                       {"key": "deep", "value": value}],
    }]}]}]}  # fmt: skip


def deep_otlp(levels: int, kind: str) -> dict[str, Any]:
    value: dict[str, Any] = {"stringValue": "leaf"}
    for _ in range(levels):
        if kind == "arrayValue":
            value = {"arrayValue": {"values": [value]}}
        else:
            value = {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
    return value


@pytest.mark.parametrize("kind", ["arrayValue", "kvlistValue"])
def test_deep_otlp_json_attributes_are_refused_with_400_and_nothing_is_stored(
    server: ServerProcess, attempt_id: str, kind: str
) -> None:
    resp = post(server, "/v1/traces", otlp_doc(attempt_id, deep_otlp(MAX_JSON_DEPTH + 1, kind)))
    assert_400(resp, str(MAX_JSON_DEPTH), kind)
    assert HttpStore(server.url).get_spans(attempt_id=attempt_id) == []
    # just under the limit is stored and reads back
    resp = post(server, "/v1/traces", otlp_doc(attempt_id, deep_otlp(MAX_JSON_DEPTH - 2, kind)))
    assert resp.status_code == 200 and "partialSuccess" not in resp.json(), resp.text
    [span] = HttpStore(server.url).get_spans(attempt_id=attempt_id)
    assert "deep" in span.attributes


# -- the lease clock -------------------------------------------------------------------------------


def test_a_client_cannot_move_the_servers_lease_clock(server: ServerProcess) -> None:
    store = HttpStore(server.url)
    store.enqueue([RolloutSpec(task={"q": "day-long"})])
    got = store.claim("w", lease_s=86_400)
    assert got is not None
    resp = post(server, "/api/v1/leases/expire", {"now": 1e18})
    assert_400(resp, "body.now", "own clock")
    [attempt] = store.get_attempts(got.rollout.rollout_id)
    assert attempt.status.value == "running"  # its 24-hour lease is untouched
    # without a body (or with {}) it expires only what ran out by the server's clock
    assert post(server, "/api/v1/leases/expire", {}).json() == {"attempts": []}
    assert httpx.post(f"{server.url}/api/v1/leases/expire", timeout=30).json() == {"attempts": []}
    assert store.get_rollout(got.rollout.rollout_id).status.value == "running"


# -- HTTP semantics: 405 Allow, and the OpenAPI spec agrees with the server -----------------------


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("DELETE", "/api/v1/rollouts/ro-x", "GET"), ("GET", "/api/v1/rollouts", "POST"),
    ("PUT", "/api/v1/spans", "GET, POST"), ("POST", "/api/v1/resources/a/b", "GET, PUT"),
    ("POST", "/healthz", "HEAD, GET"),
])  # fmt: skip
def test_405_names_the_allowed_methods_in_the_allow_header(
    server: ServerProcess, method: str, path: str, allow: str
) -> None:
    resp = httpx.request(method, server.url + path, timeout=30)
    assert resp.status_code == 405, resp.text
    assert sorted(resp.headers["allow"].split(", ")) == sorted(allow.split(", "))  # Starlette's order varies
    assert resp.json()["error"]["type"] == "InvalidInput"


# (path, body, what the spec says, what the server answers)
AGREEMENT = [
    ("/api/v1/claims", {"worker_id": ""}, False, 400),
    ("/api/v1/claims", {"worker_id": "w", "lease_s": 0}, False, 400),
    ("/api/v1/claims", {"worker_id": "w", "lease_s": 86_401}, False, 400),
    ("/api/v1/claims", {"worker_id": "w", "wait_s": 31}, False, 400),
    ("/api/v1/claims", {"worker_id": "w", "wait_s": -1}, False, 400),
    ("/api/v1/claims", {"worker_id": "w", "lease_s": None, "modes": None, "wait_s": None}, True, 200),
    ("/api/v1/claims", {"worker_id": "w", "modes": ["bogus"]}, False, 400),
    ("/api/v1/rollouts/wait", {"rollout_ids": [], "timeout_s": 31}, False, 400),
    ("/api/v1/rollouts/wait", {"rollout_ids": [], "timeout_s": -0.5}, False, 400),
    ("/api/v1/rollouts/wait", {"rollout_ids": [], "timeout_s": 0}, True, 200),
    ("/api/v1/rollouts/wait", {"rollout_ids": [""]}, False, 400),
    ("/api/v1/rollouts", {"specs": [{"task": {}, "max_attempts": 294.0}]}, True, 200),
    ("/api/v1/rollouts", {"specs": [{"task": {}, "max_attempts": 2.5}]}, False, 400),
    ("/api/v1/rollouts", {"specs": [{"task": {}, "mode": ""}]}, False, 400),
    ("/api/v1/rollouts", {"specs": [{"task": {}, "group_id": ""}]}, False, 400),
    ("/api/v1/rollouts", {"specs": [{"task": {}, "mode": None, "group_id": None, "metadata": None}]}, True, 200),
    ("/api/v1/rollouts", {"specs": [{"task": None}]}, False, 400),
    ("/api/v1/rollouts/query", {"limit": 0}, False, 400),
    ("/api/v1/rollouts/query", {"limit": None, "status": None, "group_id": None}, True, 200),
    ("/api/v1/experiment", {"name": ""}, False, 400),
]


@pytest.fixture(scope="module")
def openapi(server: ServerProcess) -> dict[str, Any]:
    return httpx.get(f"{server.url}/openapi.json", timeout=30).json()


@pytest.mark.parametrize(("path", "body", "valid", "status"), AGREEMENT, ids=[f"{p} {b}" for p, b, _, _ in AGREEMENT])
def test_the_openapi_spec_and_the_server_agree_on_what_is_valid(
    server: ServerProcess, openapi: dict[str, Any], path: str, body: Any, valid: bool, status: int
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(body))
    assert (not errors) == valid, errors
    resp = post(server, path, body)
    assert resp.status_code == status, resp.text


def test_the_openapi_spec_documents_the_json_error_responses(openapi: dict[str, Any]) -> None:
    operations = [(p, m, op) for p, ops in openapi["paths"].items() if p.startswith("/api/v1") for m, op in ops.items()]
    assert len(operations) == 17
    for path, method, op in operations:
        for code in ("400", "401", "404", "405", "413", "431", "500"):
            schema = op["responses"][code]["content"]["application/json"]["schema"]
            assert schema["required"] == ["error"], (path, method, code)
    claim = openapi["paths"]["/api/v1/claims"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert claim["properties"]["worker_id"]["minLength"] == 1


# -- header limits ---------------------------------------------------------------------------------


def raw_exchange(server: ServerProcess, head: bytes, *, chunk: int = 64 * 1024) -> bytes:
    """Send ``head`` (a request without body) on a fresh socket, however early the server hangs up, and
    return everything it answered until it closed the connection or went quiet."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        try:
            for i in range(0, len(head), chunk):
                sock.sendall(head[i : i + chunk])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused before the end: its answer is already in our receive buffer
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
                if b"\r\n\r\n" in answer and answer.startswith(b"HTTP/1.1 200"):
                    break  # keep-alive: the server would wait for the next request
        except (ConnectionResetError, TimeoutError):
            pass
    return answer


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def assert_431(answer: bytes, *words: str) -> None:
    assert answer.startswith(b"HTTP/1.1 431"), answer[:300]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["type"] == "InvalidInput"
    for word in words:
        assert word in body["error"]["message"], body


def test_a_huge_header_gets_431_without_growing_the_server_and_health_stays_fast(server: ServerProcess) -> None:
    assert server.proc is not None
    before = rss_kib(server.proc.pid)
    big = b"GET /api/v1/rollouts/x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (32 * 2**20) + b"\r\n\r\n"
    started = time.monotonic()
    assert_431(raw_exchange(server, big), str(MAX_HEAD_BYTES), "fewer or smaller headers")
    assert time.monotonic() - started < 10
    assert rss_kib(server.proc.pid) - before < 16 * 1024  # the 32 MiB header was never buffered
    two_mb = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (2 * 2**20) + b"\r\n\r\n"
    assert_431(raw_exchange(server, two_mb))
    t0 = time.monotonic()
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert time.monotonic() - t0 < 1.0


def test_too_many_headers_get_431_but_normal_large_heads_pass(server: ServerProcess) -> None:
    many = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
    assert_431(raw_exchange(server, many + b"\r\n"), f"more than {MAX_HEADERS} headers")
    ten_thousand = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(10_000))
    assert_431(raw_exchange(server, ten_thousand + b"\r\n"))
    # just under both limits, three times on one keep-alive connection: every request is served
    fat = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 200) for i in range(200))
    assert len(fat) < MAX_HEAD_BYTES
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(fat + b"\r\n")
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
