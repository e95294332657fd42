"""A scripted OpenAI-compatible critic on loopback: a stand-in for a paid API that cannot run here.

It answers the three requests of :class:`tracerl.algorithms.apo_critic.Critic` by rule, so a search's
outcome can be worked out by hand:

* a critique request gets ``"critique <n>"`` and costs ``CRITIQUE_TOKENS``;
* an edit request gets ``<prompt>base WORD</prompt>``, WORD the next of the script's words (the parent is
  ignored: each edit names exactly one new word), and costs ``EDIT_TOKENS``;
* a merge request gets the words of both prompts, each once, in order of first appearance, and costs
  ``MERGE_TOKENS``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request

from tracerl.gateway import serve_in_thread

CRITIQUE_TOKENS, EDIT_TOKENS, MERGE_TOKENS = 100, 50, 70


class Script:
    def __init__(self, words: list[str]) -> None:
        self.words = list(words)
        self.requests: list[str] = []
        self.critiques = 0

    def answer(self, user: str) -> tuple[str, int]:
        self.requests.append(user)
        prompts = re.findall(r"<prompt>\n(.*?)\n</prompt>", user, re.DOTALL)
        if "Write a short critique" in user:
            self.critiques += 1
            return f"critique {self.critiques}", CRITIQUE_TOKENS
        if "combines the strengths" in user:
            words: list[str] = []
            for p in prompts:
                words += [w for w in p.split() if w not in words]
            return f"<prompt>{' '.join(words)}</prompt>", MERGE_TOKENS
        return f"<prompt>base {self.words.pop(0)}</prompt>", EDIT_TOKENS


@contextmanager
def scripted_critic(words: list[str]) -> Iterator[tuple[str, Script]]:
    """Serve a :class:`Script`; yields (base URL ending in /v1, the script)."""
    script = Script(words)
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "critic", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        text, tokens = script.answer(body["messages"][-1]["content"])
        return {
            "id": "x", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": tokens - 10, "completion_tokens": 10, "total_tokens": tokens},
        }  # fmt: skip

    server = serve_in_thread(app)
    try:
        yield f"{server.url}/v1", script
    finally:
        server.stop()
