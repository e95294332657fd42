"""``tracerl bench prefix``: the hf engine on agent-shaped traffic with its prefix cache on and off.

An agent framework sends the same head on every call: its system prompt and the tool schemas, then, on the
next call of a rollout, the whole earlier conversation. The workload here has that shape: ``tasks`` tasks,
each sampled ``group`` times (GRPO's group), every rollout two calls, rendered by the gateway's own
:func:`~tracerl.gateway.chat.render_chat` with one calculator tool —

1. ``[system, user: question]`` → the model's reply (sampled, ``new_tokens`` tokens);
2. ``[system, user, assistant: reply, user: "Result: 42. Answer now."]`` → the final reply.

All rollouts of a round run concurrently (as runner processes do), the first calls together, then the
second calls together. Two engines serve the same model in this process, one with the prefix cache
(``prefix_cache_tokens`` default) and one without (0), alternating round by round so noise hits both alike.
Reported per side: rollouts/s and prompt tokens prefilled per rollout; the result is the ratio

    speed-up = rollouts/s (cache on) / rollouts/s (cache off)   (median over rounds)

and the share of prompt tokens the cache served. The completions of both sides are compared: greedy
decoding must give the same tokens (``same_completions``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

SYSTEM = (
    "You are a careful math assistant working inside an agent framework. You have one tool, calculator, "
    "that evaluates an arithmetic expression exactly. For every question: first call the calculator with the "
    "expression the question asks about, written with numbers, + - * / and parentheses only. When the tool "
    "result arrives, answer with exactly one line of the form 'Answer: <number>', using the tool's result "
    "and nothing else. Never compute a result in your head, never guess, and never add explanations, units "
    "or extra lines. If the tool reports an error, fix the expression and call it again. Keep every reply short."
)
TOOLS = [{
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression with + - * / // % ** and parentheses; returns the number.",
        "parameters": {"type": "object", "properties": {"expression": {
            "type": "string", "description": "The expression to evaluate, e.g. '(12 + 7) * 3'"}},
            "required": ["expression"]},
    },
}]  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="model name or folder (default: smollm2-135m)")
    parser.add_argument("--tasks", type=int, default=2, help="tasks per round (default: 2)")
    parser.add_argument("--group", type=int, default=8, help="rollouts per task (default: 8)")
    parser.add_argument("--new-tokens", type=int, default=24, help="tokens generated per call (default: 24)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side, alternating (default: 3)")


def measure_prefix_cache(model_name: str, tasks: int = 2, group: int = 8, new_tokens: int = 24,
                         rounds: int = 3) -> dict[str, Any]:  # fmt: skip
    """Rollouts/s and prefilled tokens with the prefix cache on and off (see the module docstring)."""
    from tracerl.engines.base import SamplingParams
    from tracerl.engines.hf import HFEngine, PrefixCache
    from tracerl.engines.models import load_model
    from tracerl.gateway.chat import render_chat

    model, tokenizer = load_model(model_name)
    batch = tasks * group
    engines = {
        "on": HFEngine(model, tokenizer, model_name, max_batch_size=batch),
        "off": HFEngine(model, tokenizer, model_name, max_batch_size=batch, prefix_cache_tokens=0),
    }
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0)

    def first_prompt(k: int) -> list[dict[str, Any]]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"What is {17 * k + 3} * {k + 4}?"}]

    async def one_round(engine: HFEngine, round_no: int) -> tuple[float, list[list[int]]]:
        questions = [first_prompt(round_no * tasks + t) for t in range(tasks) for _ in range(group)]
        t0 = time.perf_counter()
        p1 = [render_chat(tokenizer, q, TOOLS).ids for q in questions]
        first = await asyncio.gather(*(engine.generate(p, params) for p in p1))
        replies = [tokenizer.decode(c[0].token_ids, skip_special_tokens=True) for c in first]
        follow = [[*q, {"role": "assistant", "content": r}, {"role": "user", "content": "Result: 42. Answer now."}]
                  for q, r in zip(questions, replies, strict=True)]  # fmt: skip
        p2 = [render_chat(tokenizer, m, TOOLS).ids for m in follow]
        second = await asyncio.gather(*(engine.generate(p, params) for p in p2))
        seconds = time.perf_counter() - t0
        return seconds, [c[0].token_ids for c in first] + [c[0].token_ids for c in second]

    async def run_all() -> dict[str, Any]:
        for engine in engines.values():  # warm-up: thread start, allocator, kernels (a round of its own)
            await one_round(engine, rounds + 1)
            engine.prefix_cache = PrefixCache(engine.prefix_cache.max_tokens)  # empty, counters at 0
        rates: dict[str, list[float]] = {"on": [], "off": []}
        outputs: dict[str, list[list[int]]] = {"on": [], "off": []}
        for r in range(rounds):
            for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                seconds, out = await one_round(engines[name], r)
                rates[name].append(batch / seconds)
                outputs[name].extend(out)
        for engine in engines.values():
            await engine.aclose()
        return {"rates": rates, "same_completions": outputs["on"] == outputs["off"]}

    measured = asyncio.run(run_all())
    on, off = engines["on"].prefix_cache, engines["off"].prefix_cache
    rollouts = rounds * batch
    rate_on, rate_off = (statistics.median(measured["rates"][k]) for k in ("on", "off"))
    return {
        "model": model_name,
        "tasks": tasks,
        "group": group,
        "new_tokens": new_tokens,
        "rounds": rounds,
        "rollouts_per_s_cache_on": round(rate_on, 3),
        "rollouts_per_s_cache_off": round(rate_off, 3),
        "speed_up": round(rate_on / rate_off, 2),
        "prefilled_tokens_per_rollout_on": round(on.prefilled_tokens / rollouts, 1),
        "prefilled_tokens_per_rollout_off": round(off.prefilled_tokens / rollouts, 1),
        "reused_share": round(on.reused_tokens / max(1, on.reused_tokens + on.prefilled_tokens), 3),
        "same_completions": measured["same_completions"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[dim]prefix cache: {args.model}, {args.tasks} tasks × {args.group} rollouts × 2 calls, "
                  f"{args.rounds} rounds per side …[/dim]")  # fmt: skip
    result = measure_prefix_cache(args.model, args.tasks, args.group, args.new_tokens, args.rounds)
    table = Table(title="hf engine on agent-shaped traffic (system prompt + tool schema, 2 calls a rollout)")
    for col in ("prefix cache", "rollouts/s", "prompt tokens prefilled per rollout"):
        table.add_column(col, justify="left" if col == "prefix cache" else "right")
    for side in ("off", "on"):
        table.add_row(side, f"{result[f'rollouts_per_s_cache_{side}']:.3f}",
                      f"{result[f'prefilled_tokens_per_rollout_{side}']:.0f}")  # fmt: skip
    table.caption = (f"speed-up {result['speed_up']:.2f}×; the cache served {result['reused_share']:.0%} of the "
                     f"prompt tokens; same greedy completions: {result['same_completions']}")  # fmt: skip
    console.print(table)
    return result
