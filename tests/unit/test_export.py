"""`tracerl export` writes one row per recorded LLM call of the finished attempt, with its rewards."""

from __future__ import annotations

import json
from pathlib import Path

from tracerl.export import iter_transitions, write_jsonl
from tracerl.store.memory import MemoryStore
from tracerl.types import AttemptStatus, RolloutSpec, Span, SpanKind


def _run(store: MemoryStore, status: AttemptStatus, calls: int, reward: float | None) -> str:
    claim = store.claim("w")
    assert claim is not None
    aid = claim.attempt.attempt_id
    spans = [
        Span(aid, i, SpanKind.LLM_CALL, prompt_ids=[1, 2, i], response_ids=[7, 8], logprobs=[-0.5, -1.0],
             attributes={"finish_reason": "stop", "weights_version": 3, **({"prefix_reused": True} if i else {})})
        for i in range(calls)
    ]
    spans.append(Span(aid, calls, SpanKind.REWARD, name="valid", attributes={"value": 0.1}))
    store.add_spans(spans)
    store.finish(aid, status, reward=reward, error=None if status is AttemptStatus.SUCCEEDED else "boom")
    return claim.rollout.rollout_id


def test_export_keeps_only_the_finishing_attempt(tmp_path: Path) -> None:
    store = MemoryStore()
    [r] = store.enqueue([RolloutSpec(task={"q": "1+1"}, group_id="g", max_attempts=2)])
    _run(store, AttemptStatus.FAILED, calls=3, reward=None)  # first attempt fails: its calls are not exported
    _run(store, AttemptStatus.SUCCEEDED, calls=2, reward=1.0)
    out = tmp_path / "t.jsonl"
    n = write_jsonl(iter_transitions(store), out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == 2 == len(rows)
    assert [row["call_index"] for row in rows] == [0, 1]
    assert rows[1]["prompt_ids"] == [1, 2, 1]
    assert rows[0]["final_reward"] == 1.0
    assert rows[0]["rewards"] == [{"name": "valid", "value": 0.1, "seq": 2, "position": 2}]
    assert [row["position"] for row in rows] == [0, 1]  # the store's order: call, call, reward
    assert rows[0]["weights_version"] == 3
    assert [row["prefix_reused"] for row in rows] == [None, True]
    assert {row["rollout_id"] for row in rows} == {r.rollout_id}


def test_export_cli_writes_jsonl_and_parquet_from_a_sqlite_store(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from tracerl.cli import main
    from tracerl.store import connect

    url = f"sqlite:///{tmp_path}/s.db"
    with connect(url) as store:
        store.enqueue([RolloutSpec(task={"q": "2+2"})])
        claim = store.claim("w")
        assert claim is not None
        aid = claim.attempt.attempt_id
        store.add_spans([Span(aid, 5, SpanKind.LLM_CALL, prompt_ids=[1, 2], response_ids=[3], logprobs=[-0.25])])
        store.finish(aid, AttemptStatus.SUCCEEDED, reward=0.5)
    assert main(["export", "--store", url, "--out", str(tmp_path / "t.jsonl")]) == 0
    [row] = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert row["response_ids"] == [3] and row["logprobs"] == [-0.25] and row["final_reward"] == 0.5
    assert main(["export", "--store", url, "--out", str(tmp_path / "t.parquet")]) == 0
    table = pq.read_table(tmp_path / "t.parquet").to_pylist()
    assert table[0]["prompt_ids"] == [1, 2] and table[0]["final_reward"] == 0.5
    assert main(["export", "--store", url, "--out", str(tmp_path / "t.csv")]) == 1  # clear error, exit 1
