"""``tracerl bench store``: store throughput per backend (memory, sqlite, postgres in-process, http).

One *lifecycle* is what a runner does per rollout: claim → ``add_spans`` of 4 spans of ≈1 KB (one
``llm_call`` with 200 prompt ids, 100 response ids and 100 log-probs; a tool, a message and a reward span
with ≈1 KB of attributes) → finish. Rollouts are enqueued in batches of ``--batch`` (inside the timed
loop, so the rate includes enqueueing). Each client (a thread with its own connection for http) runs::

    repeat: enqueue(batch) ; for each: claim → add_spans(4) → finish

and the reported rate is finished lifecycles / wall time over all clients. Also measured:

* enqueue-only rate (same batch size), ``query_rollouts`` rate (a 50-row page filtered by status) and
  ``get_spans`` rate;
* CPU time per lifecycle, of this process plus the server process for http (postgres' own processes are
  not counted): unlike the wall rate it hardly depends on what else runs on the machine, and
  ``1e6 / cpu_us`` is the rate one free core would give;
* RSS growth while the spans pile up (peak RSS minus RSS at the start, of this process and of the server
  process for http): spans live on disk, so it stays flat except for the memory backend.

The ``× memory`` column is the ratio to the memory backend measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tracerl.store import Store, connect
from tracerl.types import AttemptStatus, RolloutQuery, RolloutSpec, RolloutStatus, Span, SpanKind

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
TEXT_1K = "x" * 900


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backends", default="sqlite,postgres,http,memory", help="comma-separated backends")
    parser.add_argument("--rollouts", type=int, default=2000, help="lifecycles per client count and backend")
    parser.add_argument("--batch", type=int, default=50, help="rollouts per enqueue call")
    parser.add_argument("--clients", default="1,4", help="comma-separated numbers of concurrent client threads")
    parser.add_argument("--postgres-url", default=DEFAULT_PG, help="database for the postgres case (own schema)")


def make_spans(attempt_id: str) -> list[Span]:
    """The 4 spans of one lifecycle, ≈1 KB each."""
    return [
        Span(attempt_id, 0, SpanKind.LLM_CALL, name="chat", prompt_ids=list(range(1000, 1200)),
             response_ids=list(range(2000, 2100)), logprobs=[-0.25] * 100, attributes={"model": "bench"}),
        Span(attempt_id, 1, SpanKind.TOOL, name="calculator", attributes={"output": TEXT_1K}),
        Span(attempt_id, 2, SpanKind.MESSAGE, name="note", attributes={"text": TEXT_1K}),
        Span(attempt_id, 3, SpanKind.REWARD, name="final", attributes={"value": 1.0, "why": TEXT_1K}),
    ]  # fmt: skip


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of ``pid`` (this process by default), from /proc; 0 where /proc is missing."""
    try:
        with open(f"/proc/{pid or os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) used so far by ``pid`` (this process by default)."""
    if pid is None:
        return time.process_time()
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class RssProbe:
    """Tracks peak RSS growth of this process (and a server process) over a run."""

    def __init__(self, server_pid: int | None) -> None:
        self.pids = [None, server_pid] if server_pid else [None]
        self.start = [rss_bytes(p) for p in self.pids]
        self.peak = list(self.start)

    def sample(self) -> None:
        self.peak = [max(a, rss_bytes(p)) for a, p in zip(self.peak, self.pids, strict=True)]

    def growth_mb(self) -> float:
        return sum(b - a for a, b in zip(self.start, self.peak, strict=True)) / 2**20


def lifecycle(store: Store, n: int, batch: int, clients: int, probe: RssProbe) -> float:
    """Run ``n`` lifecycles split over ``clients`` threads; returns lifecycles per second."""
    done = [0] * clients
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            target = n // clients
            while done[i] < target:
                store.enqueue([RolloutSpec(task={"q": i, "n": done[i]}) for _ in range(min(batch, target - done[i]))])
                for _ in range(batch):
                    c = store.claim(f"bench-{i}", lease_s=600)
                    if c is None:
                        break
                    store.add_spans(make_spans(c.attempt.attempt_id))
                    store.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=1.0)
                    done[i] += 1
                if i == 0:
                    probe.sample()
        except BaseException as e:  # reported after the threads joined
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)] if clients > 1 else []
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not threads:
        client(0)
    elapsed = time.perf_counter() - start
    probe.sample()
    if errors:
        raise errors[0]
    return sum(done) / elapsed


def rate(fn: Callable[[], Any], seconds: float = 1.0) -> float:
    """Calls of ``fn`` per second over about ``seconds``."""
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


@contextmanager
def open_backend(kind: str, args: argparse.Namespace, folder: Path) -> Iterator[tuple[Store, int | None]]:
    """A fresh store of ``kind`` and the pid of its server process (http only)."""
    if kind == "memory":
        store = connect("memory://")
        yield store, None
        store.close()
    elif kind == "sqlite":
        store = connect(f"sqlite:///{folder / f'bench-{uuid.uuid4().hex[:6]}.db'}")
        yield store, None
        store.close()
    elif kind == "postgres":
        schema = f"tracerl_bench_{uuid.uuid4().hex[:8]}"
        base = args.postgres_url
        store = connect(f"{base}{'&' if '?' in base else '?'}schema={schema}")
        try:
            yield store, None
        finally:
            store.close()
            import psycopg
            from psycopg import sql

            with psycopg.connect(base.split("?")[0], autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    elif kind == "http":
        from tracerl.server.testing import start_server
        from tracerl.store.http import HttpStore

        server = start_server(f"sqlite:///{folder / f'server-{uuid.uuid4().hex[:6]}.db'}")
        try:
            store = HttpStore(server.url)
            pid = server.proc.pid if server.proc else None
            yield store, pid
            store.close()
        finally:
            server.stop()
    else:
        raise SystemExit(f"unknown backend {kind!r}; use memory, sqlite, postgres or http")


def bench_backend(kind: str, args: argparse.Namespace, folder: Path, clients: list[int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for k in clients:
        with open_backend(kind, args, folder) as (store, server_pid):
            lifecycle(store, min(200, args.rollouts), args.batch, k, RssProbe(None))  # warm-up
            gc.collect()
            probe = RssProbe(server_pid)
            row: dict[str, Any] = {"backend": kind, "clients": k, "batch": args.batch}
            cpu0 = cpu_seconds() + (cpu_seconds(server_pid) if server_pid else 0.0)
            row["lifecycle_per_s"] = lifecycle(store, args.rollouts, args.batch, k, probe)
            cpu1 = cpu_seconds() + (cpu_seconds(server_pid) if server_pid else 0.0)
            row["cpu_us_per_lifecycle"] = (cpu1 - cpu0) / args.rollouts * 1e6  # client + server process
            row["rss_growth_mb"] = probe.growth_mb()
            row["rss_growth_mb_per_1k"] = row["rss_growth_mb"] / args.rollouts * 1000
            if k == clients[0]:
                n = max(args.batch, 1000)
                t0 = time.perf_counter()
                for _ in range(n // args.batch):
                    store.enqueue([RolloutSpec(task={"q": 1}) for _ in range(args.batch)])
                row["enqueue_per_s"] = (n // args.batch) * args.batch / (time.perf_counter() - t0)
                q = RolloutQuery(status=[RolloutStatus.SUCCEEDED], limit=50, offset=100)
                row["queries_per_s"] = rate(lambda q=q: store.query_rollouts(q))
                some = store.query_rollouts(RolloutQuery(status=[RolloutStatus.SUCCEEDED], limit=1)).items[0]
                row["get_spans_per_s"] = rate(lambda rid=some.rollout_id: store.get_spans(rollout_id=rid))
            rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    clients = [int(c) for c in str(args.clients).split(",")]
    rows: list[dict[str, Any]] = []
    console = Console()
    with tempfile.TemporaryDirectory(prefix="tracerl-bench-") as tmp:
        for kind in backends:
            console.print(f"[dim]benchmarking {kind} …[/dim]")
            rows.extend(bench_backend(kind, args, Path(tmp), clients))
    base = {r["clients"]: r["lifecycle_per_s"] for r in rows if r["backend"] == "memory"}
    table = Table(title=f"store lifecycle: enqueue (batch {args.batch}) → claim → 4 spans ≈1 KB → finish")
    table.caption = (
        "life/s: lifecycles/s (wall); ×mem: ratio to memory; cpu µs: CPU per lifecycle of this process (+ the "
        "server for http; postgres' own CPU not counted), independent of other load; enq/s: enqueue-only; "
        "spans/s: get_spans calls/s"
    )
    for col in ("backend", "clients", "life/s", "×mem", "cpu µs", "enq/s", "query/s", "spans/s", "RSS+MB"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for r in rows:
        ratio = r["lifecycle_per_s"] / base[r["clients"]] if r["clients"] in base else None
        r["ratio_to_memory"] = ratio
        table.add_row(
            r["backend"],
            str(r["clients"]),
            f"{r['lifecycle_per_s']:,.0f}",
            "-" if ratio is None else f"{ratio:.2f}",
            f"{r['cpu_us_per_lifecycle']:,.0f}",
            f"{r['enqueue_per_s']:,.0f}" if "enqueue_per_s" in r else "",
            f"{r['queries_per_s']:,.0f}" if "queries_per_s" in r else "",
            f"{r['get_spans_per_s']:,.0f}" if "get_spans_per_s" in r else "",
            f"{r['rss_growth_mb']:.1f}",
        )
    console.print(table)
    return {"rollouts": args.rollouts, "batch": args.batch, "results": rows}
