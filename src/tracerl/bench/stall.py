"""``tracerl bench stall``: light-client throughput of ``tracerl serve`` with and without one greedy client.

A ``tracerl serve`` on a fresh sqlite store holds ``--rollouts`` rollouts (≈1 KB tasks). ``--light`` client
processes each loop ``GET /api/v1/rollouts/{id}`` (a store call) on a kept-alive connection for
``--seconds``; the same phase runs again while one more process loops ``query(limit=10000)``, the two
alternating for ``--rounds`` (pooled). Reported:
light requests/s and p99 latency in both phases, and the ratio with/without (1.0: the greedy client costs
the light ones nothing; the machine's cores are shared by all, so some cost is expected on 2 cores). Before
the phases, :data:`WARM_S` seconds of heavy reads warm the server up.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import tempfile
import time
from multiprocessing.synchronize import Event
from typing import Any

from tracerl.server.testing import start_server

WARM_S = 3.0
"""Heavy reads before the phases (the server starts its heavy-reads process on the first one)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--light", type=int, default=8, help="light client processes")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--rollouts", type=int, default=10_000, help="rollouts in the store (the greedy page)")
    parser.add_argument("--rounds", type=int, default=2, help="alone/beside phase pairs, interleaved and pooled")


def _light(port: int, rid: str, seconds: float, out: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    lat: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        conn.request("GET", f"/api/v1/rollouts/{rid}")
        resp = conn.getresponse()
        resp.read()
        lat.append(time.perf_counter() - t0)
    out.put(lat)


def _greedy(port: int, stop: Event, out: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body, n = json.dumps({"limit": 10_000}), 0
    while not stop.is_set():
        conn.request("POST", "/api/v1/rollouts/query", body, {"content-type": "application/json"})
        conn.getresponse().read()
        n += 1
    out.put(n)


def _phase(port: int, rid: str, args: argparse.Namespace, greedy: bool) -> dict[str, Any]:
    """One phase: ``args.light`` light clients for ``args.seconds``, beside a greedy client if ``greedy``."""
    ctx = mp.get_context("fork")
    out, stop = ctx.Queue(), ctx.Event()
    hog = ctx.Process(target=_greedy, args=(port, stop, out)) if greedy else None
    if hog is not None:
        hog.start()
        time.sleep(0.5)
    procs = [ctx.Process(target=_light, args=(port, rid, args.seconds, out)) for _ in range(args.light)]
    for p in procs:
        p.start()
    lat = sorted(x for _ in procs for x in out.get(timeout=args.seconds + 120))
    for p in procs:
        p.join()
    pages = 0
    if hog is not None:
        stop.set()
        pages = out.get(timeout=120)
        hog.join()
    return {"req_per_s": len(lat) / args.seconds, "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
            "greedy_pages": pages, "latencies": lat}  # fmt: skip


def _pooled(phases: list[dict[str, Any]]) -> dict[str, Any]:
    lat = sorted(x for p in phases for x in p["latencies"])
    return {"req_per_s": sum(p["req_per_s"] for p in phases) / len(phases),
            "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))], "greedy_pages": sum(p["greedy_pages"] for p in phases),
            "rounds": [round(p["req_per_s"]) for p in phases]}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console

    console = Console()
    with tempfile.TemporaryDirectory() as tmp, start_server(f"sqlite:///{tmp}/store.db") as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        for i in range(0, args.rollouts, 1000):
            specs = [{"task": {"text": "x" * 1000}} for _ in range(min(1000, args.rollouts - i))]
            conn.request("POST", "/api/v1/rollouts", json.dumps({"specs": specs}), {"content-type": "application/json"})
            conn.getresponse().read()
        conn.request("POST", "/api/v1/rollouts/query", json.dumps({"limit": 1}), {"content-type": "application/json"})
        rid = json.loads(conn.getresponse().read())["items"][0]["rollout_id"]
        warm_until = time.monotonic() + WARM_S  # the server's first heavy reads start its heavy-reads process
        while time.monotonic() < warm_until:
            conn.request("POST", "/api/v1/rollouts/query", '{"limit": 1000}', {"content-type": "application/json"})
            conn.getresponse().read()
        phases: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for _ in range(args.rounds):  # interleaved, so a change in the machine's load hits both alike
            for greedy in (False, True):
                phases[greedy].append(_phase(server.port, rid, args, greedy=greedy))
        alone, shared = _pooled(phases[False]), _pooled(phases[True])
    ratio = shared["req_per_s"] / alone["req_per_s"]
    console.print(
        f"{args.light} light clients: {alone['req_per_s']:,.0f} req/s (p99 {alone['p99_ms']:.1f} ms) alone, "
        f"{shared['req_per_s']:,.0f} req/s (p99 {shared['p99_ms']:.1f} ms) beside one greedy client "
        f"({shared['greedy_pages']:.0f} pages of 10,000), {args.rounds} rounds: ratio {ratio:.2f}"
    )
    return {"light": args.light, "alone": alone, "with_greedy": shared, "ratio": ratio}
