"""``tracerl serve`` as a user runs it: bearer-token auth, refusing unsafe binds, a port already in use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tracerl.errors import Unauthorized
from tracerl.server.testing import start_server
from tracerl.store.http import HttpStore
from tracerl.types import RolloutSpec

pytestmark = pytest.mark.timeout(120)

TOKEN = "s3cret-token-for-tests"


def serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``tracerl serve`` expecting it to exit on its own (it refuses to start)."""
    env = {k: v for k, v in os.environ.items() if k != "TRACERL_TOKEN"}
    return subprocess.run([sys.executable, "-m", "tracerl", "serve", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def test_token_is_required_compared_and_never_logged(tmp_path: Path) -> None:
    with start_server(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'store.db'}", token=TOKEN) as server:
        assert (tmp_path / "nested" / "dir" / "store.db").exists()  # the folder was created
        url = f"{server.url}/api/v1/rollouts/query"
        for headers, why in (({}, "no bearer token"), ({"Authorization": "Bearer wrong"}, "wrong"),
                             ({"Authorization": TOKEN}, "wrong")):  # fmt: skip
            resp = httpx.post(url, json={}, headers=headers)
            assert resp.status_code == 401, resp.text
            assert resp.headers["www-authenticate"] == "Bearer"
            assert resp.json()["error"]["type"] == "Unauthorized" and why in resp.json()["error"]["message"]
        ok = httpx.post(url, json={}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["total"] == 0
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # probes need no token
        assert httpx.get(f"{server.url}/openapi.json").status_code == 401

        with pytest.raises(Unauthorized, match="no bearer token"):
            HttpStore(server.url).enqueue([RolloutSpec(task={})])
        with pytest.raises(Unauthorized, match="wrong"):
            HttpStore(server.url, token="nope").enqueue([RolloutSpec(task={})])
        [r] = HttpStore(server.url, token=TOKEN).enqueue([RolloutSpec(task={"q": 1})])
        assert HttpStore(server.url, token=TOKEN).get_rollout(r.rollout_id).task == {"q": 1}
        assert TOKEN not in server.log_tail(100_000)


def test_binding_a_public_address_without_a_token_is_refused() -> None:
    result = serve("--store", "memory://", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 1
    assert "refusing to bind '0.0.0.0' without a token" in result.stderr
    assert "--token" in result.stderr and "Traceback" not in result.stderr


def test_a_second_server_on_a_port_in_use_gets_a_clear_error(tmp_path: Path) -> None:
    with start_server(f"sqlite:///{tmp_path / 'store.db'}") as first:
        result = serve("--store", f"sqlite:///{tmp_path / 'other.db'}", "--port", str(first.port))
        assert result.returncode == 1
        assert f"port {first.port} on 127.0.0.1 is already in use" in result.stderr
        assert "--port" in result.stderr and "Traceback" not in result.stderr
        assert httpx.get(f"{first.url}/healthz").status_code == 200  # the first one is untouched
