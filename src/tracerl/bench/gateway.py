"""``tracerl bench gateway``: what the gateway costs per call, and hf engine tokens/s through it.

**Overhead per call.** The servers run in a child process (as the gateway does beside agents running
elsewhere); this process is the client, sending sequential ``chat/completions`` requests (one user message,
``max_tokens`` 16) over one keep-alive HTTP connection, and timing each from send to full response.

* ``bare upstream``: a minimal ASGI app on the same uvicorn stack that returns a fixed, pre-encoded chat
  completion — the cost of HTTP alone, the baseline;
* ``gateway /v1``: the gateway in front of a *fixed engine* (a :class:`TokenEngine` that returns the same
  completion instantly), untracked: request parsing, chat-template rendering, decoding, response JSON;
* ``gateway tracked (memory | sqlite)``: the same on ``/r/{rollout}/{attempt}/v1``, adding the attempt
  check and writing the ``llm_call`` span before answering.

Scenarios are interleaved in rounds so that machine noise hits them alike. Reported: p50 and p99 latency
and ``added p50 = p50(scenario) − p50(bare upstream)`` (target ≤ 1 ms for the gateway's own work).

**Tokens/s.** Run 1: ``tracerl.bench.engine_throughput.measure_engine_vs_generate`` measures the hf engine
against transformers' batched ``model.generate`` (same model, batch and prompts, greedy, stop tokens off),
in this process. Run 2: a gateway serving the same model in a child process gets ``batch`` concurrent chat
requests with the same questions (``temperature`` 0, ``max_tokens = new_tokens``, ``ignore_eos``) per
round, ``tokens/s = Σ completion_tokens / wall time``; after each round the child runs the same batched
``model.generate`` on the same prompts, so both sides of the run-2 ratio share a process and a moment
(target ≥ 0.8×).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tracerl.engines.base import Completion, SamplingParams, TokenEngine
from tracerl.errors import ConfigError

FIXED_TEXT = "The answer is 42."
MESSAGES = [{"role": "user", "content": "What is 6 times 7? Answer with one number."}]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny-random", help="model for the tokenizer and throughput parts")
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per overhead scenario")
    parser.add_argument("--round", type=int, default=100, help="calls per scenario before switching scenario")
    parser.add_argument("--batch", type=int, default=8, help="concurrent requests in the tokens/s part")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per request (tokens/s)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the tokens/s part")
    parser.add_argument("--skip-throughput", action="store_true", help="only measure the per-call overhead")


class FixedEngine(TokenEngine):
    """A token engine that answers every prompt instantly with the same completion (for overhead)."""

    def __init__(self, tokenizer: Any, model_name: str, text: str = FIXED_TEXT) -> None:
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_context = 2048
        self._ids = [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]

    @property
    def weights_version(self) -> int:
        return 0

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[Completion]:
        ids = self._ids[: params.max_tokens]
        return [Completion(list(ids), [-0.1] * len(ids), "stop", 0) for _ in range(params.n)]

    def load_weights(self, state_dict: dict[str, Any], version: int) -> None:
        raise ConfigError("the fixed benchmark engine has no weights")


# -- child process: the servers ------------------------------------------------------------------------------


def _bare_app(payload: bytes) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def chat(request: Request) -> Response:
        await request.body()
        return Response(payload, media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def _attempt_url(store: Any, base: str) -> str:
    from tracerl.types import RolloutSpec

    store.enqueue([RolloutSpec(task={})])
    claim = store.claim("bench")
    return f"{base}/r/{claim.rollout.rollout_id}/{claim.attempt.attempt_id}/v1"


def _serve_overhead(model: str, tmp: str, conn: Connection) -> None:
    from tracerl.engines.models import load_model
    from tracerl.gateway import serve_in_thread, start_gateway
    from tracerl.store import connect

    _, tokenizer = load_model(model)
    engine = FixedEngine(tokenizer, model)
    memory, sqlite = connect("memory://"), connect(f"sqlite:///{Path(tmp) / 'bench.db'}")
    gw_mem, gw_sql = start_gateway(memory, engine), start_gateway(sqlite, engine)
    canned = asyncio.run(_one_response(gw_mem.url + "/v1"))
    bare = serve_in_thread(_bare_app(canned))
    conn.send(
        {
            "bare upstream": f"{bare.url}/v1",
            "gateway /v1 (untracked)": f"{gw_mem.url}/v1",
            "gateway tracked, memory store": _attempt_url(memory, gw_mem.url),
            "gateway tracked, sqlite store": _attempt_url(sqlite, gw_sql.url),
        }
    )
    conn.recv()  # wait for "stop"
    for server in (bare, gw_mem, gw_sql):
        server.stop()


async def _one_response(base_url: str) -> bytes:
    import httpx

    async with httpx.AsyncClient() as client:
        r = await client.post(f"{base_url}/chat/completions", json=_body())
        return r.content


def _serve_model(model: str, batch: int, new_tokens: int, conn: Connection) -> None:
    """Serve ``model`` through a gateway; on ``"generate"`` run the batched ``model.generate`` baseline here
    (same process, same prompts) and send back its tokens/s; stop on ``"stop"``."""
    import torch

    from tracerl.engines.hf import HFEngine
    from tracerl.engines.models import load_model
    from tracerl.gateway import start_gateway
    from tracerl.store import connect

    m, tokenizer = load_model(model)
    prompts = [_chat_ids(tokenizer, q) for q in _questions(batch)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # (B, W), left-padded
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def generate_rate() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = m.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)  # fmt: skip
        return int(out[:, width:].numel()) / (time.perf_counter() - t0)

    generate_rate()  # warm-up in this (main) thread, as measure_engine_vs_generate does before timing
    engine = HFEngine(m, tokenizer, model, max_batch_size=batch, stop_token_ids=[])
    store = connect("memory://")
    gateway = start_gateway(store, engine)
    conn.send({"url": _attempt_url(store, gateway.url)})
    while conn.recv() == "generate":
        conn.send(generate_rate())
    gateway.stop()


def _questions(batch: int) -> list[str]:
    from tracerl.bench.engine_throughput import _QUESTIONS

    return [_QUESTIONS[i % len(_QUESTIONS)] for i in range(batch)]


def _chat_ids(tokenizer: Any, question: str) -> list[int]:
    out = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)  # fmt: skip
    return list(out["input_ids"])


def _start(target: Any, *args: Any) -> tuple[Any, Connection, dict[str, str]]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    if not parent.poll(300):
        proc.kill()
        raise ConfigError("the benchmark servers did not start within 300 s")
    return proc, parent, parent.recv()


def _stop(proc: Any, conn: Connection) -> None:
    conn.send("stop")
    proc.join(30)
    if proc.is_alive():
        proc.kill()


# -- client side -----------------------------------------------------------------------------------------------


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": extra.pop("model", "tiny-random"), "messages": MESSAGES, "max_tokens": 16, **extra}


def _percentile(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_overhead(model: str, calls: int, round_size: int) -> list[dict[str, Any]]:
    """p50/p99 per scenario (see the module docstring), in milliseconds."""
    import httpx

    with tempfile.TemporaryDirectory(prefix="tracerl-bench-gw-") as tmp:
        proc, conn, urls = _start(_serve_overhead, model, tmp)
        try:
            clients = {name: httpx.Client(base_url=url, timeout=30) for name, url in urls.items()}
            payload = json.dumps(_body(model=model)).encode()
            headers = {"content-type": "application/json"}
            latencies: dict[str, list[float]] = {name: [] for name in urls}
            for client in clients.values():  # warm-up: connections, caches, first template render
                for _ in range(50):
                    client.post("/chat/completions", content=payload, headers=headers).raise_for_status()
            done = 0
            while done < calls:
                n = min(round_size, calls - done)
                for name, client in clients.items():
                    out = latencies[name]
                    for _ in range(n):
                        t0 = time.perf_counter()
                        r = client.post("/chat/completions", content=payload, headers=headers)
                        out.append(time.perf_counter() - t0)
                        if r.status_code != 200:
                            raise ConfigError(f"{name}: HTTP {r.status_code}: {r.text[:300]}")
                done += n
            for client in clients.values():
                client.close()
        finally:
            _stop(proc, conn)
    base = statistics.median(latencies["bare upstream"])
    return [
        {
            "scenario": name,
            "calls": len(xs),
            "p50_ms": round(statistics.median(xs) * 1e3, 3),
            "p99_ms": round(_percentile(xs, 0.99) * 1e3, 3),
            "added_p50_ms": round((statistics.median(xs) - base) * 1e3, 3),
        }
        for name, xs in latencies.items()
    ]


def measure_gateway_throughput(model: str, batch: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    """Tokens/s of ``batch`` concurrent chat requests through a gateway on the hf engine, alternating with
    batched ``model.generate`` on the same prompts in the gateway's process (module docstring)."""
    import httpx

    proc, conn, info = _start(_serve_model, model, batch, new_tokens)
    bodies = [
        {"model": model, "messages": [{"role": "user", "content": q}], "max_tokens": new_tokens,
         "temperature": 0, "ignore_eos": True}
        for q in _questions(batch)
    ]  # fmt: skip
    try:

        async def one_round(client: httpx.AsyncClient) -> int:
            answers = await asyncio.gather(*(client.post("/chat/completions", json=b) for b in bodies))
            for a in answers:
                a.raise_for_status()
            return sum(a.json()["usage"]["completion_tokens"] for a in answers)

        async def run() -> tuple[list[float], list[float]]:
            limits = httpx.Limits(max_connections=batch)
            async with httpx.AsyncClient(base_url=info["url"], timeout=600, limits=limits) as client:
                await one_round(client)  # warm-up
                gateway_rates, generate_rates = [], []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    tokens = await one_round(client)
                    gateway_rates.append(tokens / (time.perf_counter() - t0))
                    conn.send("generate")
                    generate_rates.append(conn.recv())
                return gateway_rates, generate_rates

        gateway_rates, generate_rates = asyncio.run(run())
    finally:
        _stop(proc, conn)
    gw, gen = statistics.median(gateway_rates), statistics.median(generate_rates)
    return {
        "gateway_tokens_per_s": round(gw, 1),
        "generate_same_process_tokens_per_s": round(gen, 1),
        "gateway_vs_generate": round(gw / gen, 3),
        "gateway_rates": [round(r, 1) for r in gateway_rates],
        "generate_rates": [round(r, 1) for r in generate_rates],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[dim]gateway overhead: {args.calls} calls per scenario …[/dim]")
    rows = measure_overhead(args.model, args.calls, args.round)
    table = Table(title="gateway overhead per chat call (fixed engine, sequential, keep-alive)")
    for col in ("scenario", "p50 ms", "p99 ms", "added p50 ms"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for r in rows:
        table.add_row(r["scenario"], f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['added_p50_ms']:+.3f}")
    console.print(table)
    results: dict[str, Any] = {"overhead": rows}
    if not args.skip_throughput:
        from tracerl.bench.engine_throughput import measure_engine_vs_generate

        console.print(f"[dim]tokens/s: {args.model}, batch {args.batch}, {args.new_tokens} new tokens …[/dim]")
        base = measure_engine_vs_generate(args.model, batch=args.batch, new_tokens=args.new_tokens,
                                          repeats=args.repeats)  # fmt: skip
        through = measure_gateway_throughput(args.model, args.batch, args.new_tokens, args.repeats)
        tput = {"engine_vs_generate": base, **through}
        t = Table(title=f"{args.model}: tokens/s at {args.batch} concurrent requests, {args.new_tokens} tokens each")
        for col in ("path", "tokens/s", "× generate"):
            t.add_column(col, justify="left" if col == "path" else "right")
        gen = base["generate_tokens_per_s"]
        t.add_row("model.generate (batched), run 1", f"{gen:,.1f}", "1.00")
        t.add_row("hf engine, run 1", f"{base['engine_tokens_per_s']:,.1f}", f"{base['ratio']:.2f}")
        gen2 = through["generate_same_process_tokens_per_s"]
        t.add_row("model.generate (batched), run 2", f"{gen2:,.1f}", "1.00")
        t.add_row("gateway → hf engine (HTTP), run 2", f"{through['gateway_tokens_per_s']:,.1f}",
                  f"{through['gateway_vs_generate']:.2f}")  # fmt: skip
        t.caption = "run 1: measure_engine_vs_generate (this process); run 2: the gateway's process, alternating"
        console.print(t)
        results["throughput"] = tput
    return results
