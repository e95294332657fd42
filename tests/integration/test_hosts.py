"""Several hosts, one store: the store server + gateway, two runners and the trainer on four network
namespaces (tests/hosts.py), first with one ``tracerl serve --token`` as the store, then with one PostgreSQL.

The trainer host enqueues rollouts; runner A's cable is pulled while it runs one; its lease runs out and
runner B runs the rollout again; every rollout ends succeeded, nothing recorded is lost (the cut attempt's
LLM call stays recorded beside the retry's), A's late report changes nothing once its cable is back, and
the trainer host turns what was recorded into a GRPO update.

Needs root and ``ip netns`` (skipped otherwise, with the reason; ``TRACERL_REQUIRE_NETNS=1`` turns the
skip into a failure, as CI sets it). The postgres case needs the PostgreSQL of tests/store (same rules).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tracerl
from hosts import Hosts, TcpForwarder, netns_unavailable
from postgres_schemas import PG_URL, require_postgres
from tracerl.store import connect
from tracerl.store.base import Store
from tracerl.types import AttemptStatus, RolloutQuery, RolloutSpec, RolloutStatus

pytestmark = pytest.mark.timeout(180)

TOKEN = "netns-token-0451"
PORT = 8765  # each host has its own ports
LEASE_S = 5.0  # heartbeats every lease/3: margin for a loaded CI machine
AGENT = """
import time

from openai import OpenAI


def slow(task, llm):
    client = OpenAI(base_url=llm.base_url, api_key=llm.api_key, max_retries=0, timeout=20)
    reply = client.chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": task["q"]}], max_tokens=4, temperature=1.0
    )
    assert reply.choices[0].message.content is not None
    time.sleep(task["sleep"])
    return task["reward"]
"""


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    why = netns_unavailable()
    if why is not None:
        if os.environ.get("TRACERL_REQUIRE_NETNS") == "1":
            pytest.fail(f"network namespaces are required (TRACERL_REQUIRE_NETNS=1) but unavailable: {why}")
        pytest.skip(f"network namespaces unavailable: {why}")
    with Hosts(["store", "runner-a", "runner-b"]) as h:
        yield h


def _wait_port(host: str, port: int, proc: subprocess.Popen[Any], log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout_s} s:\n{log.read_text()[-3000:]}")


def _pg_url(host: str, port: int, schema: str) -> str:
    rest = PG_URL.split("@", 1)[1].split("/", 1)[1]
    return f"{PG_URL.split('@', 1)[0]}@{host}:{port}/{rest}{'&' if '?' in rest else '?'}schema={schema}"


@pytest.mark.parametrize("backend", ["serve", "postgres"])
def test_runners_on_other_hosts_share_one_store_and_survive_a_pulled_cable(
    hosts: Hosts, tiny_model_dir: Path, tmp_path: Path, backend: str
) -> None:
    (tmp_path / "netns_agent.py").write_text(AGENT)
    src = str(Path(tracerl.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src, "TRACERL_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    gateway = f"http://{hosts.ip('store')}:{PORT}"
    with TcpForwarder(hosts.ip("root"), ("127.0.0.1", 5432)) as pg_forward:
        if backend == "postgres":
            require_postgres()
            schema = f"tracerl_test_{uuid.uuid4().hex[:12]}"
            served = runner_store = _pg_url(hosts.ip("root"), pg_forward.port, schema)  # via the forwarder
            client_url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema={schema}"  # the trainer host: direct
        else:
            schema = ""
            served = f"sqlite:///{tmp_path / 'store.db'}"
            runner_store = client_url = gateway
        try:
            _run(hosts, tmp_path, env, tiny_model_dir, served, runner_store, client_url, gateway, pg_forward, backend)
        finally:
            if schema:
                import psycopg
                from psycopg import sql

                with psycopg.connect(PG_URL, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _run(
    hosts: Hosts, tmp: Path, env: dict[str, str], model_dir: Path, served: str, runner_store: str, client_url: str,
    gateway: str, pg_forward: TcpForwarder, backend: str,
) -> None:  # fmt: skip
    serve_log = tmp / "serve.log"
    serve = hosts.popen(
        "store", [sys.executable, "-m", "tracerl", "serve", "--store", served, "--host", hosts.ip("store"),
                  "--port", str(PORT), "--model", str(model_dir)],
        env=env, stdout=serve_log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    logs = {name: tmp / f"{name}.log" for name in ("runner-a", "runner-b")}
    runner_cmd = [sys.executable, "-m", "tracerl", "runner", "--agent", "netns_agent:slow", "--store", runner_store,
                  "--gateway", gateway, "-n", "1", "--lease", str(LEASE_S), "--grace", "1", "--api-key", TOKEN,
                  "--model", str(model_dir)]  # fmt: skip
    runners = {
        name: hosts.popen(name, runner_cmd, cwd=tmp, env=env, stdout=logs[name].open("w"), stderr=subprocess.STDOUT)
        for name in logs
    }
    _wait_port(hosts.ip("store"), PORT, serve, serve_log)
    store = connect(client_url, token=TOKEN) if client_url.startswith("http") else connect(client_url)
    try:
        specs = [RolloutSpec(task={"q": f"add {i} and {i}", "sleep": 3.0, "reward": float(i % 2)}, max_attempts=3)
                 for i in range(4)]  # fmt: skip
        ids = [r.rollout_id for r in store.enqueue(specs)]
        pid_a = runners["runner-a"].pid
        victim = _wait_running_on(store, ids, pid_a, logs["runner-a"], runners["runner-a"])
        hosts.cut("runner-a")
        pg_forward.drop(hosts.ip("runner-a"))  # the dead link's postgres sessions end (TCP keep-alive, sooner)
        done = store.wait(ids, timeout_s=60)
        assert [r.status for r in done] == [RolloutStatus.SUCCEEDED] * 4, _tails(logs, serve_log)
        attempts = store.get_attempts(victim)
        assert [a.status for a in attempts] == [AttemptStatus.UNRESPONSIVE, AttemptStatus.SUCCEEDED]
        assert _ran_on(attempts[0].worker_id, pid_a) and _ran_on(attempts[1].worker_id, runners["runner-b"].pid)
        calls = {a.attempt_id: _llm_calls(store, a.attempt_id) for a in attempts}
        assert [len(c) for c in calls.values()] == [1, 1]  # the cut attempt's call was recorded before the cut
        for rid in ids:
            assert any(_llm_calls(store, a.attempt_id) for a in store.get_attempts(rid))
        hosts.mend("runner-a")  # A comes back; its late report must change nothing
        time.sleep(3.0)
        assert store.get_rollout(victim).status is RolloutStatus.SUCCEEDED
        assert [a.status for a in store.get_attempts(victim)] == [a.status for a in attempts]
        total = store.query_rollouts(RolloutQuery(limit=100)).items
        assert len(total) == 4
        _train_on(store, ids, model_dir)
    finally:
        store.close()
        for proc in [*runners.values(), serve]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*runners.values(), serve]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _ran_on(worker_id: str, pid: int) -> bool:
    """Whether ``worker_id`` (``HOST-PID``: the runner process claims for its workers) names runner ``pid``."""
    return worker_id.rsplit("-", 1)[-1] == str(pid)


def _wait_running_on(store: Store, ids: list[str], pid: int, log: Path, proc: subprocess.Popen[Any]) -> str:
    """The rollout whose running attempt ran on the runner process ``pid``, once there is one."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        for rid in ids:
            attempts = store.get_attempts(rid)
            ended = [a.error for a in attempts if a.status is AttemptStatus.FAILED]
            assert not ended, ended
            last = attempts[-1] if attempts else None
            if last and last.status is AttemptStatus.RUNNING and _ran_on(last.worker_id, pid) and _llm_calls(
                store, last.attempt_id
            ):  # mid-rollout: running on that runner, its LLM call recorded
                return rid
        time.sleep(0.1)
    raise AssertionError(f"runner {pid} never ran a rollout:\n{log.read_text()[-3000:]}")


def _llm_calls(store: Store, attempt_id: str) -> list[Any]:
    return [s for s in store.get_spans(attempt_id=attempt_id) if s.kind.value == "llm_call"]


def _train_on(store: Store, ids: list[str], model_dir: Path) -> None:
    """The trainer host: credit assignment over the recorded calls and one GRPO update."""
    grpo = tracerl.GRPO(str(model_dir), group_size=2, lr=1e-3, advantage="batch", device="cpu", bf16=False)
    grpo.setup()
    batch = grpo.make_batch(store, [{} for _ in ids], ids)
    assert len(batch.transitions) == 4  # one call per rollout: the succeeded attempt's
    result = grpo.update(batch)
    assert result.weights_version == 1 and result.metrics["transitions"] == 4


def _tails(logs: dict[str, Path], serve_log: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()[-2000:]}" for p in [*logs.values(), serve_log])
