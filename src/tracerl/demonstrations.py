"""Gold demonstrations from an unchanged agent: run it against a scripted policy, keep what it sent.

A warm start (``tracerl.SFT``) trains on chat transcripts. For them to teach the served model anything, they
must hold exactly what the agent's framework sends — its system prompt, tool schemas, history layout,
retry messages — and, in the assistant turns, what a good model would answer. Writing those by hand for
LangChain, the Agents SDK or AutoGen means re-implementing each framework's message building. Instead::

    def gold(task, messages, tools):                       # what a good model would reply to this call
        if not any(m["role"] == "tool" for m in messages):
            return tracerl.tool_call("calculator", expression=task["expression"])
        return {"content": f"Answer: {task['answer']}"}

    demos = tracerl.record_demonstrations(math_agent, train_tasks, gold, model="smollm2-135m")
    tracerl.write_jsonl("runs/math/demos.jsonl", demos)

:func:`record_demonstrations` serves ``policy`` as an OpenAI-compatible chat endpoint on loopback (plain and
streamed replies, tool calls), runs the agent on each task with an :class:`~tracerl.agent.LLM` handle that
points at it, and keeps the calls of the runs whose reward is at least ``min_reward``. Each recorded call
becomes one transcript: the call's messages and tools as the framework sent them, then the policy's reply.
Earlier assistant turns in a call's history carry ``"weight": 0`` (OpenAI's fine-tuning convention), so
each reply is trained once, on the call where it was written; :mod:`tracerl.algorithms.sft_data` honours
the weights.

Nothing here loads a model: the policy is code, typically reading the train split's gold answers (gold SQL,
evidence, calculator expressions). Use only the train split, or the warm start leaks the held-out answers.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tracerl.agent import LLM
from tracerl.errors import ConfigError

__all__ = ["DemonstrationRun", "Policy", "record_demonstrations", "tool_call", "write_jsonl"]

JSON = dict[str, Any]
Policy = Callable[[JSON, list[JSON], list[JSON]], JSON]
"""``policy(task, messages, tools) -> assistant message`` (``{"content": ...}`` and/or ``{"tool_calls": [...]}``)."""

_ids = itertools.count()


def tool_call(name: str, /, **arguments: Any) -> JSON:
    """An assistant message that calls tool ``name`` with ``arguments`` (for a :data:`Policy` to return)."""
    return {"content": None, "tool_calls": [{"name": name, "arguments": arguments}]}


def write_jsonl(path: str | Path, records: Sequence[JSON]) -> Path:
    """Write ``records`` one JSON object per line (creating the folder); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return out


@dataclass
class DemonstrationRun:
    """What one task's scripted run gave: the agent's reward, the calls it made, and any error."""

    task: JSON
    reward: float | None
    calls: list[tuple[list[JSON], list[JSON], JSON]] = field(default_factory=list)
    error: str | None = None

    def transcripts(self) -> list[JSON]:
        """One transcript per call: its messages (earlier assistant turns weight 0), then the reply (weight 1)."""
        out: list[JSON] = []
        for messages, tools, reply in self.calls:
            history = [{**m, "weight": 0} if m.get("role") == "assistant" else m for m in messages]
            transcript: JSON = {"messages": [*history, {**reply, "weight": 1}]}
            if tools:
                transcript["tools"] = tools
            out.append(transcript)
        return out


def record_demonstrations(
    agent: Callable[..., Any],
    tasks: Sequence[JSON],
    policy: Policy,
    *,
    model: str = "gold",
    min_reward: float = 1.0,
    runs: list[DemonstrationRun] | None = None,
) -> list[JSON]:
    """Transcripts of ``agent`` answering ``tasks`` with ``policy``'s replies, from runs scoring ≥ ``min_reward``.

    ``model`` is the name the agent sends (it only reaches the policy's endpoint). Pass a list as ``runs``
    to get every task's :class:`DemonstrationRun` too (rewards, calls, errors), e.g. to report how many
    tasks the gold policy solves. Raises :class:`ConfigError` when no run reaches ``min_reward``: the
    policy or the agent is wrong, and SFT on nothing would hide it.
    """
    if not tasks:
        raise ConfigError("record_demonstrations needs at least one task")
    from tracerl.tracing import TracingWarning

    fn = getattr(agent, "__wrapped__", agent)
    done: list[DemonstrationRun] = [] if runs is None else runs
    with _scripted_endpoint(policy, tasks) as (url, calls), warnings.catch_warnings():
        warnings.simplefilter("ignore", TracingWarning)  # emit_reward outside a run: nothing to record here
        for i, task in enumerate(tasks):
            rollout_id = f"demo-{i}"
            llm = LLM(gateway_url=url, rollout_id=rollout_id, attempt_id="a", model=model, mode="train")
            run = DemonstrationRun(task=task, reward=None)
            try:
                value = fn(task, llm)
                if inspect.isawaitable(value):
                    value = asyncio.run(_await(value))
                run.reward = None if value is None else float(value)
            except Exception as e:  # the agent's own failure on a gold reply is worth reporting, not raising
                run.error = f"{type(e).__name__}: {e}"
            run.calls = calls.pop(rollout_id, [])
            done.append(run)
    kept = [t for r in done if r.reward is not None and r.reward >= min_reward for t in r.transcripts()]
    if not kept:
        errors = [r.error for r in done if r.error][:3]
        raise ConfigError(
            f"no scripted run reached min_reward={min_reward} on {len(tasks)} tasks "
            f"(rewards {[r.reward for r in done][:8]}, errors {errors}): check the policy against the agent"
        )
    return kept


async def _await(value: Any) -> Any:
    return await value


@contextmanager
def _scripted_endpoint(
    policy: Policy, tasks: Sequence[JSON]
) -> Iterator[tuple[str, dict[str, list[tuple[list[JSON], list[JSON], JSON]]]]]:
    """An OpenAI-compatible ``/r/{rollout}/{attempt}/v1/chat/completions`` on 127.0.0.1 answering with ``policy``."""
    calls: dict[str, list[tuple[list[JSON], list[JSON], JSON]]] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            parts = self.path.strip("/").split("/")
            if len(parts) < 5 or parts[0] != "r" or not self.path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}; only chat completions are scripted"}})
                return
            rollout_id = parts[1]
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            messages, tools = body.get("messages") or [], body.get("tools") or []
            try:
                task = tasks[int(rollout_id.removeprefix("demo-"))]
                reply = _assistant_message(policy(task, messages, tools))
            except Exception as e:
                self._send(500, {"error": {"message": f"the policy failed: {type(e).__name__}: {e}"}})
                return
            with lock:
                calls.setdefault(rollout_id, []).append((messages, tools, reply))
            if body.get("stream"):
                self._stream(body.get("model", "gold"), reply)
            else:
                self._send(200, _completion(body.get("model", "gold"), reply))

        def _send(self, status: int, payload: JSON) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, model: str, reply: JSON) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for chunk in _chunks(model, reply):
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="tracerl-scripted-policy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()


def _assistant_message(raw: JSON) -> JSON:
    """The policy's reply as an OpenAI assistant message (``tool_calls`` with ids and JSON-string arguments)."""
    if not isinstance(raw, dict) or not (raw.get("content") or raw.get("tool_calls")):
        raise ConfigError(f"a policy must return {{'content': str}} or tool_call(...), got {raw!r:.200}")
    message: JSON = {"role": "assistant", "content": raw.get("content")}
    if raw.get("tool_calls"):
        message["tool_calls"] = [
            {
                "id": f"call_{next(_ids)}",
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}))},
            }
            for c in raw["tool_calls"]
        ]
    return message


def _completion(model: str, message: JSON) -> JSON:
    return {
        "id": f"chatcmpl-demo-{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish(message), "logprobs": None}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def _chunks(model: str, message: JSON) -> list[JSON]:
    base = {"id": f"chatcmpl-demo-{next(_ids)}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}
    delta: JSON = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]
    return [
        {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish(message)}]},
    ]


def _finish(message: JSON) -> str:
    return "tool_calls" if message.get("tool_calls") else "stop"
