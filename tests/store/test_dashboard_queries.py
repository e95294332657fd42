"""The dashboard's reads on every backend (memory, sqlite, postgres, http): the rollouts table sorts, filters
and pages like the memory store (the reference), counts agree, resources are listed, and a rollout's detail
holds its calls and credit. The SQL backends answer with their own query (deferred join), the others by
paging through ``query_rollouts``; both must give the same rows in the same order."""

from __future__ import annotations

import pytest

from tracerl.bench.dashboard import populate
from tracerl.server.dashboard import reader
from tracerl.store import Store, connect

N = 40


@pytest.fixture(scope="module")
def reference() -> Store:
    s = connect("memory://")
    populate(s, N, detailed=2, seed=5)
    return s


def _page(store: Store, **params: str) -> dict:  # type: ignore[type-arg]
    return reader.rollout_table(store, reader.TableQuery.from_params(params))


def test_table_counts_and_detail_match_the_memory_reference(store: Store, reference: Store) -> None:
    populate(store, N, detailed=2, seed=5)
    for sort in ("created", "reward", "attempts", "status", "version"):  # durations are wall-clock, so differ
        for direction in ("asc", "desc"):
            for params in ({}, {"status": "failed"}, {"mode": "val"}, {"version": "2"}):
                for window in ({"limit": "500"}, {"limit": "7", "offset": "14"}):
                    got = _page(store, sort=sort, dir=direction, **params, **window)
                    want = _page(reference, sort=sort, dir=direction, **params, **window)
                    assert got["total"] == want["total"]
                    assert [r["task"] for r in got["items"]] == [r["task"] for r in want["items"]], (
                        sort, direction, params, window)
    assert reader.rollout_counts(store) == reader.rollout_counts(reference)
    assert reader.resource_names(store) == ["prompts", "resources"]
    assert [v["version"] for v in reader.resource_history(store, "resources")["versions"]] == [1, 2, 3]
    first = _page(store, sort="created", dir="asc", limit="1")["items"][0]["rollout_id"]
    detail = reader.rollout_detail(store, first)
    assert [s["kind"] for s in detail["attempts"][-1]["spans"]] == ["custom", "llm_call", "tool", "reward", "llm_call"]
    assert [c["seq"] for c in detail["credit"]["calls"]] in ([1, 4], [])  # [] only for a zero-variance group
