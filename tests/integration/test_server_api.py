"""The store server's REST API against a real ``tracerl serve`` subprocess on loopback.

Bad input of every kind gets a 4xx JSON error ``{"error": {"type", "message"}}`` naming the problem —
never a stack trace, never a 500 — and leaves the store exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tracerl.server.testing import ServerProcess, start_server
from tracerl.store.http import HttpStore
from tracerl.types import AttemptStatus, RolloutQuery, RolloutSpec, Span, SpanKind

pytestmark = pytest.mark.timeout(120)

MAX_BODY = 64 * 1024  # a small limit so oversized bodies are cheap to send


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("server") / "store.db"
    with start_server(f"sqlite:///{db}", extra_args=("--max-body-mb", str(MAX_BODY / 2**20))) as s:
        yield s


@pytest.fixture(scope="module")
def seeded(server: ServerProcess) -> dict[str, str]:
    """A succeeded rollout, a running one with a span, a queued one, and a resource."""
    store = HttpStore(server.url)
    a, _, c = store.enqueue([RolloutSpec(task={"q": i}) for i in range(3)])
    ca = store.claim("w", lease_s=3600)
    assert ca is not None and ca.rollout.rollout_id == a.rollout_id
    store.finish(ca.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=1.0)
    cb = store.claim("w", lease_s=3600)
    assert cb is not None
    store.add_spans([Span(cb.attempt.attempt_id, 0, SpanKind.LLM_CALL, prompt_ids=[1, 2], response_ids=[3],
                          logprobs=[-0.5])])  # fmt: skip
    store.put_resource("prompt", {"text": "v1"})
    return {
        "finished_attempt": ca.attempt.attempt_id,
        "running_attempt": cb.attempt.attempt_id,
        "running_rollout": cb.rollout.rollout_id,
        "queued_rollout": c.rollout_id,
    }


def snapshot(url: str, seeded: dict[str, str]) -> Any:
    """Everything a bad request could have changed."""
    store = HttpStore(url)
    page = store.query_rollouts(RolloutQuery(limit=1000))
    return (
        [(r.rollout_id, r.status, r.attempts, r.reward, r.updated_at) for r in page.items],
        [(a.attempt_id, a.status, a.lease_expires_at) for r in page.items for a in store.get_attempts(r.rollout_id)],
        store.get_spans(rollout_id=seeded["running_rollout"]),
        store.get_resource("prompt").version,
    )


def api(server: ServerProcess, method: str, path: str, **kw: Any) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        return client.request(method, path, **kw)


def assert_error(resp: httpx.Response, status: int, error_type: str, *words: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["type"] == error_type, err
    for word in words:
        assert word in err["message"], err["message"]
    assert "Traceback" not in resp.text


# (method, path, body or raw bytes, expected status, error type, words the message must contain)
BAD = [
    ("POST", "/api/v1/rollouts", b"{not json", 400, "InvalidInput", "not valid JSON"),
    ("POST", "/api/v1/rollouts", b"", 400, "InvalidInput", "needs a JSON object"),
    ("POST", "/api/v1/rollouts", [1, 2], 400, "InvalidInput", "must be a JSON object"),
    ("POST", "/api/v1/rollouts", {"specs": "x"}, 400, "InvalidInput", "specs must be a list"),
    ("POST", "/api/v1/rollouts", {"specs": [{"task": "not a dict"}]}, 400, "InvalidInput", "specs[0].task"),
    ("POST", "/api/v1/rollouts", {"specs": [{"task": {}}, {"task": {}, "max_attempts": "3"}]}, 400,
     "InvalidInput", "specs[1].max_attempts"),
    ("POST", "/api/v1/rollouts", {"specs": [{"task": {}, "max_attempts": 0}]}, 400, "InvalidInput", "max_attempts"),
    ("POST", "/api/v1/rollouts", {"specs": [{"task": {}, "mode": "training"}]}, 400, "InvalidInput", "training"),
    ("POST", "/api/v1/claims", {}, 400, "InvalidInput", "worker_id"),
    ("POST", "/api/v1/claims", {"worker_id": "w", "lease_s": "long"}, 400, "InvalidInput", "lease_s"),
    ("POST", "/api/v1/claims", {"worker_id": "w", "lease_s": -1}, 400, "InvalidInput", "lease_s"),
    ("POST", "/api/v1/claims", {"worker_id": "w", "modes": ["nope"]}, 400, "InvalidInput", "nope"),
    ("POST", "/api/v1/attempts/at-missing/heartbeat", {}, 404, "NotFound", "at-missing"),
    ("POST", "/api/v1/attempts/{running_attempt}/heartbeat", {"lease_s": True}, 400, "InvalidInput", "lease_s"),
    ("POST", "/api/v1/attempts/at-missing/finish", {"status": "succeeded"}, 404, "NotFound", "at-missing"),
    ("POST", "/api/v1/attempts/{running_attempt}/finish", {"status": "done"}, 400, "InvalidInput", "done"),
    ("POST", "/api/v1/attempts/{running_attempt}/finish", {"status": "running"}, 409, "IllegalTransition"),
    ("POST", "/api/v1/attempts/{running_attempt}/finish", {"status": "succeeded", "reward": "1"}, 400,
     "InvalidInput", "reward"),
    ("POST", "/api/v1/attempts/{finished_attempt}/finish", {"status": "failed"}, 409, "AttemptFinished",
     "already ended"),
    ("POST", "/api/v1/attempts/{finished_attempt}/heartbeat", {}, 409, "AttemptFinished"),
    ("POST", "/api/v1/rollouts/ro-missing/cancel", None, 404, "NotFound", "ro-missing"),
    ("GET", "/api/v1/rollouts/ro-missing", None, 404, "NotFound", "ro-missing"),
    ("GET", "/api/v1/rollouts/ro-missing/attempts", None, 404, "NotFound"),
    ("POST", "/api/v1/rollouts/query", {"limit": 0}, 400, "InvalidInput", "limit"),
    ("POST", "/api/v1/rollouts/query", {"status": ["done"]}, 400, "InvalidInput", "done"),
    ("POST", "/api/v1/rollouts/wait", {"rollout_ids": ["ro-missing"], "timeout_s": 0}, 404, "NotFound"),
    ("POST", "/api/v1/rollouts/wait", {"rollout_ids": [1]}, 400, "InvalidInput", "rollout_ids"),
    ("POST", "/api/v1/spans", {"spans": [{"attempt_id": "at-missing", "seq": 0, "kind": "llm_call"}]}, 404,
     "NotFound", "at-missing"),
    ("POST", "/api/v1/spans", {"spans": [{"attempt_id": "{running_attempt}", "seq": 1, "kind": "custom"},
                                         {"attempt_id": "at-missing", "seq": 0, "kind": "custom"}]}, 404,
     "NotFound", "at-missing"),
    ("POST", "/api/v1/spans", {"spans": [{"attempt_id": "{running_attempt}", "seq": "1", "kind": "custom"}]},
     400, "InvalidInput", "spans[0].seq"),
    ("POST", "/api/v1/spans", {"spans": [{"attempt_id": "{running_attempt}", "seq": 1, "kind": "custom"},
                                         {"attempt_id": "{running_attempt}", "seq": 2, "kind": "bogus"}]},
     400, "InvalidInput", "bogus"),
    ("POST", "/api/v1/spans", {"spans": [{"attempt_id": "{running_attempt}", "seq": 1, "kind": "llm_call",
                                          "response_ids": [1, 2], "logprobs": [-1.0]}]}, 400, "InvalidInput",
     "logprobs"),
    ("POST", "/api/v1/spans", {"spans": [{"attempt_id": "{running_attempt}", "seq": 1, "kind": "llm_call",
                                          "prompt_ids_b64": "!!!"}]}, 400, "InvalidInput", "base64"),
    ("GET", "/api/v1/spans", None, 400, "InvalidInput", "exactly one"),
    ("GET", "/api/v1/spans?attempt_id=at-missing", None, 404, "NotFound"),
    ("PUT", "/api/v1/resources/prompt", {"value": "text"}, 400, "InvalidInput", "value"),
    ("GET", "/api/v1/resources/missing", None, 404, "NotFound", "missing"),
    ("GET", "/api/v1/resources/prompt?version=9", None, 404, "NotFound"),
    ("GET", "/api/v1/resources/prompt?version=x", None, 400, "InvalidInput", "version"),
    ("POST", "/api/v1/experiment", {"name": 3}, 400, "InvalidInput", "name"),
    ("POST", "/api/v1/nowhere", {}, 404, "NotFound", "/api/v1/nowhere"),
    ("DELETE", "/api/v1/rollouts/ro-x", None, 405, "InvalidInput"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "error_type", "words"),
                         [(*case[:5], case[5:]) for case in BAD],
                         ids=[f"{c[0]} {c[1]} -> {c[3]} {c[4]}" for c in BAD])  # fmt: skip
def test_bad_input_gets_a_json_4xx_and_leaves_the_store_unchanged(
    server: ServerProcess,
    seeded: dict[str, str],
    method: str,
    path: str,
    body: Any,
    status: int,
    error_type: str,
    words: tuple[str, ...],
) -> None:
    before = snapshot(server.url, seeded)
    path = path.format(**seeded)
    if isinstance(body, (dict, list)):
        text = httpx.Request("POST", "/", json=body).content.decode()
        body = text.replace("{running_attempt}", seeded["running_attempt"]).encode()
    resp = api(server, method, path, content=body, headers={"Content-Type": "application/json"})
    assert_error(resp, status, error_type, *words)
    assert snapshot(server.url, seeded) == before


def test_oversized_bodies_get_413_by_declared_length_and_by_streamed_size(
    server: ServerProcess, seeded: dict[str, str]
) -> None:
    before = snapshot(server.url, seeded)
    span = {"attempt_id": seeded["running_attempt"], "seq": 7, "kind": "custom", "attributes": {"x": "y" * MAX_BODY}}
    resp = api(server, "POST", "/api/v1/spans", json={"spans": [span]})
    assert_error(resp, 413, "PayloadTooLarge", str(MAX_BODY))

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count what streams in
        yield b'{"spans": [{"attempt_id": "' + seeded["running_attempt"].encode() + b'", "seq": 8, "kind": "custom",'
        yield b' "attributes": {"x": "'
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"y" * 1024
        yield b'"}}]}'

    resp = api(server, "POST", "/api/v1/spans", content=chunks())
    assert_error(resp, 413, "PayloadTooLarge")
    assert snapshot(server.url, seeded) == before
    # the HTTP client maps it back to the same exception class
    from tracerl.errors import PayloadTooLarge

    with pytest.raises(PayloadTooLarge):
        HttpStore(server.url).add_spans(
            [Span(seeded["running_attempt"], 9, SpanKind.CUSTOM, attributes={"x": "y" * MAX_BODY})]
        )
    assert snapshot(server.url, seeded) == before


def test_api_round_trip_with_plain_json_lists_and_openapi(server: ServerProcess, seeded: dict[str, str]) -> None:
    """A hand-written client (plain JSON, no packing) can drive the whole lifecycle."""
    rollout = api(server, "POST", "/api/v1/rollouts", json={"specs": [{"task": {"q": "hand"}, "mode": "val"}]})
    assert rollout.status_code == 200
    rid = rollout.json()["rollouts"][0]["rollout_id"]
    claim = api(server, "POST", "/api/v1/claims", json={"worker_id": "hand", "modes": ["val"]}).json()["claim"]
    assert claim["rollout"]["rollout_id"] == rid
    aid = claim["attempt"]["attempt_id"]
    span = {"attempt_id": aid, "seq": 0, "kind": "llm_call", "prompt_ids": [5, 6], "response_ids": [7],
            "logprobs": [-0.25]}  # fmt: skip
    assert api(server, "POST", "/api/v1/spans", json={"spans": [span, span]}).json() == {"added": 1}
    done = api(server, "POST", f"/api/v1/attempts/{aid}/finish", json={"status": "succeeded", "reward": 0.5})
    assert done.json()["status"] == "succeeded" and done.json()["reward"] == 0.5
    [got] = api(server, "GET", f"/api/v1/spans?rollout_id={rid}").json()["spans"]
    assert (got["prompt_ids"], got["response_ids"], got["logprobs"]) == ([5, 6], [7], [-0.25])
    [packed] = api(server, "GET", f"/api/v1/spans?attempt_id={aid}&encoding=packed").json()["spans"]
    assert "prompt_ids" not in packed and packed["prompt_ids_b64"]

    spec = api(server, "GET", "/openapi.json").json()
    for path in ("/api/v1/rollouts", "/api/v1/claims", "/api/v1/spans", "/v1/traces",
                 "/api/v1/attempts/{attempt_id}/finish", "/api/v1/resources/{name}"):  # fmt: skip
        assert path in spec["paths"], sorted(spec["paths"])
    assert api(server, "GET", "/healthz").json() == {"status": "ok"}


def test_resource_names_with_slashes_and_versions(server: ServerProcess) -> None:
    store = HttpStore(server.url)
    assert store.put_resource("prompts/sql agent", {"v": 1}).version == 1
    assert store.put_resource("prompts/sql agent", {"v": 2}).version == 2
    assert store.get_resource("prompts/sql agent").value == {"v": 2}
    assert store.get_resource("prompts/sql agent", 1).value == {"v": 1}


def test_unreachable_server_is_store_unavailable_with_a_clear_message(tmp_path: Path) -> None:
    import socket

    from tracerl.errors import StoreUnavailable

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = HttpStore(f"http://127.0.0.1:{port}", retries=1)
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}.*tracerl serve"):
        store.get_rollout("ro-x")
    with pytest.raises(StoreUnavailable):
        store.enqueue([RolloutSpec(task={})])
