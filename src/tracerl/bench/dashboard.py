"""``tracerl bench dashboard``: the rollouts table of the dashboard at 100,000 rollouts, over HTTP.

A sqlite store is filled through the store contract (enqueue → claim → finish, some attempts failing and
retried, some rollouts left running or queued; the first ``--detailed`` rollouts get two recorded llm calls
and reward spans each) and served by a real ``tracerl serve`` subprocess. Then, with one keep-alive HTTP
connection, each request is timed ``--repeat`` times (median reported):

* **baseline**: the store API's own page, ``POST /api/v1/rollouts/query {"limit": 50}`` (creation order,
  what the store contract offers);
* the dashboard's table, ``GET /dash/api/rollouts``: the first page in creation order, sorted by reward,
  by duration, filtered by status and sorted, a page deep in the table (offset 90 % of the rows), and one
  rollout's page (attempts, span tree, credit over its group).

The ``× baseline`` column is each median over the baseline's, measured in the same run. A second table
times the sorted page query in-process on the same file (sqlite3, no server): sorting whole rows
(``ORDER BY reward … LIMIT 50 OFFSET k``) against the dashboard's deferred join (sort only ``seq`` and the
key, then read the page's rows), at the first page and 90 % deep.

:func:`populate` is also what the dashboard's browser tests use to fill their store.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tracerl.store import Store, connect
from tracerl.types import AttemptStatus, Mode, RolloutQuery, RolloutSpec, Span, SpanKind

REPLIES = ["The answer is 12.", "Let me add them: 7 + 5 = 12.", "12", "I think it is 13."]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rollouts", type=int, default=100_000, help="rollouts in the store (default 100,000)")
    parser.add_argument("--detailed", type=int, default=200, help="rollouts with recorded calls and rewards")
    parser.add_argument("--repeat", type=int, default=15, help="timed requests per case (median reported)")
    parser.add_argument("--store", default=None, help="sqlite file to fill (default: a temporary one)")


def llm_span(attempt_id: str, seq: int, *, messages: list[dict[str, Any]], reply: str, reply_ids: list[int],
             prompt_ids: list[int], rng: random.Random, tool_call: dict[str, Any] | None = None,
             parent: int | None = None, start: float) -> Span:
    """An ``llm_call`` span with the attributes the gateway records (``tracerl.gateway.spans``)."""
    message: dict[str, Any] = {"role": "assistant", "content": reply}
    if tool_call is not None:
        message["tool_calls"] = [{"id": "call_1", "type": "function", "function": tool_call}]
    logprobs = [-rng.random() ** 3 * 4.0 for _ in reply_ids]
    return Span(
        attempt_id, seq, SpanKind.LLM_CALL, name="chat.completions", parent_seq=parent, start_time=start,
        end_time=start + 0.4, prompt_ids=prompt_ids, response_ids=reply_ids, logprobs=logprobs,
        attributes={
            "request": {"model": "tiny-random", "messages": messages,
                        **({"tools": [{"type": "function", "function": {"name": "add"}}]} if tool_call else {})},
            "response": {"id": f"chatcmpl-{attempt_id}-{seq}", "model": "tiny-random",
                         "choices": [{"index": 0, "message": message,
                                      "finish_reason": "tool_calls" if tool_call else "stop"}]},
            "finish_reason": "tool_calls" if tool_call else "stop", "model": "tiny-random", "weights_version": 3,
            "latency_s": 0.4, "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(reply_ids),
                                        "total_tokens": len(prompt_ids) + len(reply_ids)},
            "endpoint": "chat.completions", "stream": False,
        },
    )


def record_calls(store: Store, attempt_id: str, task: dict[str, Any], rng: random.Random, encode: Any) -> float:
    """Two llm calls (a tool call, then the answer), a tool span, an intermediate reward; returns R."""
    t = time.time()
    q = [{"role": "user", "content": task["question"]}]
    first = json.dumps({"a": task["a"], "b": task["b"]})
    reply = rng.choice(REPLIES)
    p1 = encode(task["question"])
    r1 = encode(first)
    p2 = p1 + r1 + encode(" 12")
    r2 = encode(reply)
    final = 1.0 if reply.rstrip(".").endswith(str(task["a"] + task["b"])) else 0.0
    store.add_spans([
        Span(attempt_id, 0, SpanKind.CUSTOM, name="agent", start_time=t, end_time=t + 1.2),
        llm_span(attempt_id, 1, messages=q, reply="", reply_ids=r1, prompt_ids=p1, rng=rng, parent=0, start=t,
                 tool_call={"name": "add", "arguments": first}),
        Span(attempt_id, 2, SpanKind.TOOL, name="add", parent_seq=0, start_time=t + 0.45,
             attributes={"arguments": first, "output": task["a"] + task["b"]}),
        Span(attempt_id, 3, SpanKind.REWARD, name="valid_tool_call", parent_seq=0, start_time=t + 0.46,
             attributes={"value": 0.1}),
        llm_span(attempt_id, 4, reply=reply,
                 messages=[*q, {"role": "assistant", "content": first}, {"role": "tool", "content": "12"}],
                 reply_ids=r2, prompt_ids=p2, rng=rng, parent=0, start=t + 0.5),
    ])  # fmt: skip
    return final


def populate(store: Store, n: int, *, detailed: int = 20, seed: int = 0, encode: Any = None,
             running: int = 2, queued: int = 3) -> list[str]:
    """Fill ``store`` with ``n`` finished rollouts (groups of 4; one in ten ``val``; about one in eight
    failing an attempt: retried once, and
    failed for good when the retry fails too) plus ``running`` claimed and ``queued`` untouched ones. The first
    ``detailed`` get recorded calls (token ids from ``encode(text)``, byte values if None). Returns every id."""
    rng = random.Random(seed)
    enc = encode or (lambda text: list(text.encode()))
    ids: list[str] = []
    specs = []
    specs_total = range(n + running + queued)  # resources versions 1, 2, 3 by thirds of the rollouts
    for i in specs_total:
        a, b = 7, 5 if i % 3 else 6
        specs.append(RolloutSpec(task={"question": f"What is {a} + {b}?", "a": a, "b": b, "n": i},
                                 mode=Mode.VAL if i % 10 == 9 else Mode.TRAIN, group_id=f"g{i // 4}", max_attempts=2,
                                 resources_version=1 + 3 * i // len(specs_total)))
    for start in range(0, n + running, 1000):
        ids += [r.rollout_id for r in store.enqueue(specs[start : min(start + 1000, n + running)])]
    tasks = {rid: s.task for rid, s in zip(ids, specs, strict=False)}
    index = {rid: i for i, rid in enumerate(ids)}
    done = 0
    while done < n:
        claim = store.claim(f"worker-{done % 3}", lease_s=3600)
        if claim is None:
            break
        rid, aid = claim.rollout.rollout_id, claim.attempt.attempt_id
        if rng.random() < (0.125 if claim.attempt.number == 1 else 0.3):  # the second failure is final
            store.finish(aid, AttemptStatus.FAILED, error="ConnectionError: the model server closed the connection")
            done += claim.attempt.number == 2
            continue
        detail = index[rid] < detailed
        reward = record_calls(store, aid, tasks[rid], rng, enc) if detail else round(rng.random(), 3)
        store.finish(aid, AttemptStatus.SUCCEEDED, reward=reward)
        done += 1
    for _ in range(running):
        store.claim("worker-live", lease_s=3600)
    ids += [r.rollout_id for r in store.enqueue(specs[n + running :])]
    store.put_resource("prompts", {"system": "You are a careful calculator.", "demos": []})
    store.put_resource("prompts", {"system": "You are a careful calculator. Answer with a number.",
                                   "demos": [{"q": "2+2", "a": "4"}]})
    for v in (1, 2, 3):
        store.put_resource("resources", {"model": "tiny-random", "weights_version": v, "stage": 1, "algorithm": "grpo"})
    return ids


def _time(conn: http.client.HTTPConnection, path: str, repeat: int) -> tuple[float, int]:
    """Median wall ms of ``path`` over ``repeat`` requests (after one warm-up), and the body size. ``path``
    is a GET path, or ``POST <path> <json body>``."""
    method, body = "GET", None
    if path.startswith("POST "):
        method, path, text = path.split(" ", 2)
        body = text.encode()
    times, size = [], 0
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        conn.request(method, path, body=body, headers={"content-type": "application/json"} if body else {})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path} answered {resp.status}: {data[:300]!r}")
        if i:
            times.append((time.perf_counter() - t0) * 1000)
        size = len(data)
    return statistics.median(times), size


def sql_sort_ratio(path: Path, offset: int, repeat: int) -> dict[str, float]:
    """Median ms of one sorted page read as whole-row sort vs deferred join, on the sqlite file ``path``."""
    import sqlite3

    from tracerl.store.queries import R

    order = "reward DESC NULLS LAST, seq DESC"
    naive = f"SELECT {R} FROM rollouts ORDER BY {order} LIMIT 50 OFFSET ?"
    page = f"SELECT seq FROM rollouts ORDER BY {order} LIMIT 50 OFFSET ?"
    deferred = f"SELECT {R} FROM rollouts WHERE seq IN ({page}) ORDER BY {order}"
    conn = sqlite3.connect(path)
    out: dict[str, float] = {}
    try:
        for name, sql in (("whole_rows_ms", naive), ("deferred_join_ms", deferred)):
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                rows = conn.execute(sql, (offset,)).fetchall()
                times.append((time.perf_counter() - t0) * 1000)
                assert len(rows) == 50
            out[name] = round(statistics.median(times), 1)
    finally:
        conn.close()
    out["speedup"] = round(out["whole_rows_ms"] / out["deferred_join_ms"], 2)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tracerl.server.testing import start_server

    tmp = tempfile.TemporaryDirectory(prefix="tracerl-bench-dash-")
    path = Path(args.store) if args.store else Path(tmp.name) / "dash.db"
    url = f"sqlite:///{path}"
    t0 = time.perf_counter()
    store = connect(url)
    try:
        if store.query_rollouts(RolloutQuery(limit=1)).total == 0:  # a --store filled before is reused
            populate(store, args.rollouts, detailed=args.detailed)
        first = store.query_rollouts(RolloutQuery(limit=1))
        some, total = first.items[0], first.total
    finally:
        store.close()
    fill_s = time.perf_counter() - t0
    print(f"store: {total} rollouts in {path} (filled in {fill_s:.0f} s)", flush=True)
    deep = int(total * 0.9)
    cases = [
        ("baseline: store API query, 50 rows in creation order", 'POST /api/v1/rollouts/query {"limit": 50}'),
        ("dashboard: first page (creation order)", "/dash/api/rollouts?limit=50"),
        ("dashboard: sorted by reward", "/dash/api/rollouts?limit=50&sort=reward&dir=desc"),
        ("dashboard: sorted by duration", "/dash/api/rollouts?limit=50&sort=duration&dir=desc"),
        ("dashboard: status=failed, mode=val, by attempts",
         "/dash/api/rollouts?limit=50&status=failed&mode=val&sort=attempts"),
        (f"dashboard: sorted by reward, offset {deep}", f"/dash/api/rollouts?limit=50&sort=reward&offset={deep}"),
        ("dashboard: summary (counts by status × mode)", "/dash/api/summary"),
        ("dashboard: one rollout with calls and credit", f"/dash/api/rollouts/{some.rollout_id}"),
    ]
    results: list[dict[str, Any]] = []
    with start_server(url) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        base_ms = None
        print(f"{'case':58s} {'median ms':>10s} {'× baseline':>11s} {'bytes':>8s}")
        for name, p in cases:
            ms, size = _time(conn, p, args.repeat)
            base_ms = base_ms or ms
            results.append({"case": name, "path": p, "median_ms": round(ms, 2), "x_baseline": round(ms / base_ms, 2),
                            "bytes": size})
            print(f"{name:58s} {ms:10.1f} {ms / base_ms:11.2f} {size:8d}", flush=True)
        conn.close()
    sorts = {}
    print(f"\n{'sorted page, in-process sqlite':34s} {'whole rows ms':>14s} {'deferred join ms':>17s} {'speedup':>8s}")
    for offset in (0, deep):
        r = sorts[offset] = sql_sort_ratio(path, offset, max(3, args.repeat // 3))
        print(f"{'by reward, offset ' + str(offset):34s} {r['whole_rows_ms']:14.1f} {r['deferred_join_ms']:17.1f} "
              f"{r['speedup']:7.2f}×", flush=True)
    tmp.cleanup()
    return {"rollouts": total, "fill_s": round(fill_s, 1), "cases": results, "sql_sort": sorts}
