"""The agent worker process: imports the agent once, then runs one rollout at a time for its runner.

Started by :class:`tracerl.runner.process.AgentProcess` as ``python -m tracerl.runner.child FD`` (a fresh
interpreter, so the user's script is not re-executed and nothing of the runner is inherited), talking over
the socket ``FD`` with pickled tuples:

    runner → child   ("init", {"agent": AgentRef, "sys_path": [...]})    child → runner  ("ready", {...})
                                                                                        or ("fatal", text)
    runner → child   ("run", LLM, task)                                   child → runner  ("span", Span)*
                                                                                          ("done", result)
    runner → child   ("exit",)

``result`` is ``{"status": "succeeded", "reward": float | None}`` or ``{"status": "failed", "error": text}``.
Spans are sent as they are emitted (so none is lost if the runner kills this process at its timeout); the
runner batches the store writes. The process exits when the runner's socket closes or the runner dies.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from tracerl.agent import LLM, AgentRef, is_async_agent, load_agent
from tracerl.tracing import FINAL_REWARD, TraceContext, activate, check_reward, error_attributes
from tracerl.types import Span, SpanKind

Result = dict[str, Any]


def run_rollout(fn: Callable[..., Any], task: dict[str, Any], llm: LLM, sink: Callable[[Span], None]) -> Result:
    """Run ``fn(task, llm)`` under a trace context of the attempt; record the final reward or the error."""
    ctx = TraceContext(llm.rollout_id, llm.attempt_id, sink)
    with activate(ctx):
        try:
            value = asyncio.run(fn(task, llm)) if is_async_agent(fn) else fn(task, llm)
            if inspect.isawaitable(value):
                value = asyncio.run(_await(value))
            reward = None if value is None else check_reward(value, what="the agent's return value (its reward)")
        except BaseException as e:  # whatever the agent raised (even SystemExit) fails the attempt
            attrs = error_attributes(e)
            ctx.record(SpanKind.ERROR, attrs["type"], attrs)
            return {"status": "failed", "error": f"{attrs['type']}: {attrs['message']}"}
        if reward is None:
            return {"status": "succeeded", "reward": ctx.final_reward}
        ctx.record(SpanKind.REWARD, FINAL_REWARD, {"value": reward})
        return {"status": "succeeded", "reward": reward}


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _exit_with_parent(parent_pid: int) -> None:
    """Exit as soon as the runner is gone, even while an agent runs (no orphaned workers)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="tracerl-parent-watch", daemon=True).start()


def serve(conn: Connection) -> int:
    """The worker loop: handshake, then run rollouts until told to exit or the runner goes away."""
    _exit_with_parent(os.getppid())
    kind, init = conn.recv()
    if kind != "init":
        conn.send(("fatal", f"expected an init message first, got {kind!r}"))
        return 2
    for entry in reversed(init["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    ref: AgentRef = init["agent"]
    try:
        fn = load_agent(ref)
    except Exception as e:
        conn.send(("fatal", str(e)))
        return 1
    conn.send(("ready", {"pid": os.getpid(), "is_async": is_async_agent(fn)}))

    send_lock = threading.Lock()

    def sink(span: Span) -> None:
        """Send ``span`` to the runner and wait until it is stored (see :mod:`tracerl.store.order`)."""
        with send_lock:
            conn.send(("span", span))
            reply = conn.recv()
            if reply != ("ack",):
                raise RuntimeError(f"the runner answered a span with {reply!r} instead of an acknowledgement")

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return 0
        if msg[0] == "exit":
            return 0
        _, llm, task = msg
        result = run_rollout(fn, task, llm, sink)
        with send_lock:
            conn.send(("done", result))


def main() -> int:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: python -m tracerl.runner.child FD  (started by a tracerl runner)", file=sys.stderr)
        return 2
    return serve(Connection(int(sys.argv[1])))


if __name__ == "__main__":
    sys.exit(main())
