"""Four processes claim from one sqlite file and from one postgres schema: every rollout exactly once."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tracerl.store import Store, connect
from tracerl.types import AttemptStatus, RolloutQuery, RolloutSpec, RolloutStatus

N_ROLLOUTS = 240
N_PROCESSES = 4


def claim_until_empty(url: str, worker: str, start: Any, out: Any) -> None:
    """Child process: claim and finish rollouts until none is left; report the ids it got."""
    store = connect(url)
    got: list[str] = []
    start.wait()
    while (c := store.claim(worker, lease_s=600)) is not None:
        got.append(c.rollout.rollout_id)
        store.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=1.0)
    store.close()
    out.put((worker, got))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_processes_never_claim_the_same_rollout(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        fresh: Callable[[], str] = request.getfixturevalue("pg_schema")
        url = fresh()
    store = connect(url)
    ids = {r.rollout_id for r in store.enqueue([RolloutSpec(task={"i": i}) for i in range(N_ROLLOUTS)])}
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=claim_until_empty, args=(url, f"w{i}", start, out)) for i in range(N_PROCESSES)]
    for p in procs:
        p.start()
    start.set()
    results = dict(out.get(timeout=150) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    claimed = [rid for got in results.values() for rid in got]
    assert len(claimed) == N_ROLLOUTS and set(claimed) == ids  # each one exactly once
    done = store.query_rollouts(RolloutQuery(status=[RolloutStatus.SUCCEEDED], limit=N_ROLLOUTS))
    assert done.total == N_ROLLOUTS and all(r.attempts == 1 for r in done.items)
    store.close()


def finish_in_child(store: Store, out: Any) -> None:
    """Child process (forked): use the store object inherited from the parent while the parent uses it too."""
    got = []
    while (c := store.claim("child")) is not None:
        store.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=2.0)
        got.append(c.rollout.rollout_id)
    out.put(got)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_store_inherited_through_fork_keeps_working_in_both_processes(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'fork.db'}" if backend == "sqlite" else request.getfixturevalue("pg_schema")()
    store = connect(url)
    ids = [r.rollout_id for r in store.enqueue([RolloutSpec(task={"i": i}) for i in range(60)])]
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=finish_in_child, args=(store, out))
    child.start()
    while child.is_alive() and out.empty():  # the parent keeps using its handle at the same time
        page = store.query_rollouts(RolloutQuery(rollout_ids=ids, limit=100))
        assert page.total == len(ids)
    assert sorted(out.get(timeout=30)) == sorted(ids)
    child.join(30)
    assert child.exitcode == 0
    done = store.query_rollouts(RolloutQuery(status=[RolloutStatus.SUCCEEDED], limit=100))
    assert done.total == len(ids) and {r.reward for r in done.items} == {2.0}
    store.close()
