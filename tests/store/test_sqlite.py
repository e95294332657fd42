"""What only the sqlite backend promises: a durable file, WAL, migrations, clear errors for bad paths."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tracerl.errors import ConfigError, StoreUnavailable
from tracerl.store import connect
from tracerl.store.schema import SCHEMA_VERSION
from tracerl.store.sqlite import SqliteStore
from tracerl.types import AttemptStatus, RolloutSpec, RolloutStatus, Span, SpanKind

pytestmark = pytest.mark.timeout(60)


def test_data_survives_reopening_and_prefix_reuse_continues_across_handles(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "a.db"  # the parent folder is created
    url = f"sqlite:///{path}"
    p1, r1 = list(range(64)), [1, 2, 3]
    p2, r2 = [*p1, *r1, 9], [4]
    p3, r3 = [*p2, *r2, 10, 11], [5]
    with connect(url) as store:
        [r] = store.enqueue([RolloutSpec(task={"q": 1})])
        c = store.claim("w")
        assert c is not None
        aid = c.attempt.attempt_id
        store.add_spans([Span(aid, 0, SpanKind.LLM_CALL, prompt_ids=p1, response_ids=r1, logprobs=[-1.0] * 3)])
        store.add_spans([Span(aid, 1, SpanKind.LLM_CALL, prompt_ids=p2, response_ids=r2, logprobs=[-1.0])])
        store.put_resource("prompt", {"t": "x"})
        store.bind_experiment("exp")
    with SqliteStore(url) as store:  # a new handle has no cached context: turn 3 decodes the chain from disk
        store.add_spans([Span(aid, 2, SpanKind.LLM_CALL, prompt_ids=p3, response_ids=r3, logprobs=[-1.0])])
        with sqlite3.connect(path) as raw:
            refs = raw.execute("SELECT seq, prompt_ref, length(prompt) FROM spans ORDER BY seq").fetchall()
        assert refs == [(0, None, 4 * 64), (1, 0, 4 * 1), (2, 1, 4 * 2)]  # each turn stores only new ids
        assert [(s.prompt_ids, s.response_ids) for s in store.get_spans(rollout_id=r.rollout_id)] == [
            (p1, r1),
            (p2, r2),
            (p3, r3),
        ]
        assert store.get_rollout(r.rollout_id).status is RolloutStatus.RUNNING
        assert store.get_resource("prompt").value == {"t": "x"}
        store.bind_experiment("exp")


CRASHING_WRITER = """
import os, signal, sys
from tracerl.store import connect
from tracerl.types import AttemptStatus, RolloutSpec, Span, SpanKind
store = connect(sys.argv[1])
store.enqueue([RolloutSpec(task={"i": i}) for i in range(20)])
for i in range(10):
    c = store.claim("w")
    store.add_spans([Span(c.attempt.attempt_id, 0, SpanKind.LLM_CALL, prompt_ids=[i] * 30, response_ids=[i],
                          logprobs=[-0.5])])
    store.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=float(i))
print("acknowledged", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_acknowledged_writes_survive_a_killed_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    proc = subprocess.run([sys.executable, "-c", CRASHING_WRITER, url], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9 and "acknowledged" in proc.stdout, proc.stderr
    with connect(url) as store:
        from tracerl.types import RolloutQuery

        page = store.query_rollouts(RolloutQuery(status=[RolloutStatus.SUCCEEDED]))
        assert sorted(r.reward for r in page.items if r.reward is not None) == [float(i) for i in range(10)]
        for r in page.items:
            [span] = store.get_spans(rollout_id=r.rollout_id)
            assert span.prompt_ids == [int(r.reward or 0)] * 30
        assert store.query_rollouts(RolloutQuery(status=[RolloutStatus.QUEUED])).total == 10


def test_file_uses_wal_and_records_its_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    SqliteStore(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="newer"):
        SqliteStore(f"sqlite:///{path}")


def test_in_memory_database() -> None:
    with connect("sqlite:///:memory:") as store:
        store.enqueue([RolloutSpec(task={})])
        c = store.claim("w")
        assert c is not None
        assert store.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED).status is RolloutStatus.SUCCEEDED


def test_bad_urls_and_files_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sqlite:///"):
        connect("sqlite://")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, just text" * 100)
    with pytest.raises(ConfigError, match="not a SQLite database"):
        connect(f"sqlite:///{junk}")
    with pytest.raises(StoreUnavailable, match=str(tmp_path)):
        connect(f"sqlite:///{tmp_path}")  # a directory cannot be opened as a database
