"""``tracerl bench claims``: claims per second on a shared postgres store with N claiming processes, and
double claims counted.

The queue is filled with ``--rollouts`` rollouts first (not timed). Then N processes (``--processes``, a
comma-separated list; each opens its own store, as runners on many machines would) wait on one barrier and
claim until the queue is empty, each claim with :meth:`Store.claim` (one transaction per rollout) or, in the
``claim_many`` mode, :meth:`Store.claim_many` of ``--batch`` rollouts per transaction. Every claimed
rollout id is reported back; the parent counts

* claims/s = claims / (time from the barrier to the last process done),
* double claims = claims − distinct rollouts claimed (must be 0), and rollouts left unclaimed (must be 0).

The ``× claim`` column is the ratio of each mode to one-at-a-time ``claim`` at the same process count, in the
same run. On a shared 2-core machine the processes and the database compete for the same cores, so the
absolute rates say more about the machine than the store; compare ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
import uuid
from multiprocessing.synchronize import Barrier
from typing import Any

from tracerl.store import connect
from tracerl.types import RolloutSpec

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--postgres-url", default=DEFAULT_PG, help="database to use (a fresh schema per case)")
    parser.add_argument("--processes", default="16,64", help="comma-separated numbers of claiming processes")
    parser.add_argument("--rollouts", type=int, default=4000, help="rollouts in the queue per case")
    parser.add_argument("--batch", type=int, default=16, help="rollouts per claim_many call")
    parser.add_argument("--modes", default="claim,claim_many", help="comma-separated: claim, claim_many")


def _claimer(url: str, mode: str, batch: int, barrier: Barrier, out: Any) -> None:
    """One claiming process: claim until the queue is empty; send back (claimed ids, start, end)."""
    store = connect(url)
    worker = f"bench-{uuid.uuid4().hex[:8]}"
    ids: list[str] = []
    barrier.wait()
    start = time.perf_counter()
    while True:
        if mode == "claim":
            c = store.claim(worker, lease_s=3600)
            got = [c] if c is not None else []
        else:
            got = store.claim_many(worker, batch, lease_s=3600)
        if not got:
            break
        ids.extend(c.rollout.rollout_id for c in got)
    end = time.perf_counter()
    store.close()
    out.put((ids, start, end))


def run_case(base_url: str, processes: int, rollouts: int, mode: str, batch: int) -> dict[str, Any]:
    """One (processes, mode) case on a fresh schema."""
    schema = f"bench_claims_{uuid.uuid4().hex[:10]}"
    url = f"{base_url}{'&' if '?' in base_url else '?'}schema={schema}"
    with connect(url) as store:
        for i in range(0, rollouts, 500):
            store.enqueue([RolloutSpec(task={"i": j}) for j in range(i, min(rollouts, i + 500))])
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(url, mode, batch, barrier, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    claimed = [rid for ids, _, _ in results for rid in ids]
    elapsed = max(end for _, _, end in results) - min(start for _, start, _ in results)
    _drop_schema(base_url, schema)
    return {
        "processes": processes,
        "mode": mode,
        "batch": batch if mode == "claim_many" else 1,
        "claims": len(claimed),
        "claims_per_s": len(claimed) / elapsed,
        "double_claims": len(claimed) - len(set(claimed)),
        "unclaimed": rollouts - len(set(claimed)),
        "seconds": elapsed,
    }


def _drop_schema(base_url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    from tracerl.store.postgres import parse_url

    conninfo, _ = parse_url(base_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("claim", "claim_many"):
            raise SystemExit(f"unknown mode {m!r}; use claim and/or claim_many")
    cases: list[dict[str, Any]] = []
    for n in [int(x) for x in args.processes.split(",")]:
        for mode in modes:
            console.print(f"benchmarking {mode} with {n} processes …")
            cases.append(run_case(args.postgres_url, n, args.rollouts, mode, args.batch))
    table = Table(title=f"postgres claims: {args.rollouts} queued rollouts, N claiming processes")
    for col in ("processes", "mode", "claims/s", "× claim", "double", "unclaimed"):
        table.add_column(col, justify="right")
    base = {c["processes"]: c["claims_per_s"] for c in cases if c["mode"] == "claim"}
    for c in cases:
        ratio = c["claims_per_s"] / base[c["processes"]] if c["processes"] in base else float("nan")
        mode = c["mode"] if c["mode"] == "claim" else f"claim_many({c['batch']})"
        table.add_row(str(c["processes"]), mode, f"{c['claims_per_s']:,.0f}", f"{ratio:.2f}",
                      str(c["double_claims"]), str(c["unclaimed"]))  # fmt: skip
    console.print(table)
    return {"rollouts": args.rollouts, "cases": cases}
