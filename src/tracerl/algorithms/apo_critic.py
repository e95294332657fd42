"""The critic and editor of prompt optimization: any OpenAI-compatible chat endpoint, asked in plain words.

    critic = Critic(CriticConfig(url="https://api.openai.com/v1", model="gpt-4.1-mini"))   # key: OPENAI_API_KEY
    critic.check()                                   # the endpoint answers (else a ConfigError, before any rollout)
    critique = critic.critique(prompt, examples)     # what in the prompt makes the low-reward runs fail
    new_text = critic.edit(prompt, critique)         # the prompt rewritten after the critique
    merged = critic.merge(prompt_a, prompt_b)        # one prompt with the strengths of two

``url = "local"`` means the model the Trainer serves, through the gateway's unrecorded ``/v1`` routes (the
APO algorithm fills in the address when the run starts). Every call's tokens (``usage.total_tokens``, or
characters / 4 when the endpoint reports none) are counted in :attr:`Critic.tokens_used`, so APO can stop on
its critic-token budget. Replies to ``edit`` and ``merge`` are read between ``<prompt>`` and ``</prompt>``
(the whole reply when the tags are missing).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import httpx

from tracerl.algorithms.base import json_object
from tracerl.errors import ConfigError, TracerlError

log = logging.getLogger(__name__)

LOCAL = "local"
MAX_RUN_CHARS = 1500  # of one run's transcript shown to the critic
_PROMPT_TAGS = re.compile(r"<prompt>(.*?)</prompt>", re.DOTALL)


@dataclass
class CriticConfig:
    """Where the critic/editor model is.

    ``url``: an OpenAI-compatible base URL (``.../v1``) or ``"local"`` (the served model); ``model``: the
    model name to request (``None`` with ``local``: the served model); ``api_key_env``: the environment
    variable holding the key (read at call time, never stored); ``max_tokens`` and ``temperature`` of each
    critic call; ``timeout_s`` of each HTTP request.
    """

    url: str = LOCAL
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_tokens: int = 512
    temperature: float = 0.7
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.url != LOCAL and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"critic url {self.url!r} must be an http(s) OpenAI-compatible base URL (…/v1) or "
                              f"{LOCAL!r} for the served model")
        if self.url != LOCAL and not self.model:
            raise ConfigError(f"the critic at {self.url} needs model = '...' (the model name to request)")
        if not isinstance(cast(object, self.max_tokens), int) or self.max_tokens < 1:
            raise ConfigError(f"critic max_tokens must be an integer ≥ 1, got {self.max_tokens!r}")
        if self.timeout_s <= 0:
            raise ConfigError(f"critic timeout_s must be > 0, got {self.timeout_s!r}")


@dataclass(frozen=True)
class Run:
    """One scored run shown to the critic: its transcript as text and its reward."""

    transcript: str
    reward: float


class Critic:
    """Critique, edit and merge prompts with one chat model; counts the tokens it spends."""

    def __init__(self, config: CriticConfig, *, url: str | None = None, model: str | None = None) -> None:
        self.config = config
        self.url = (url or config.url).rstrip("/")
        self.model = model or config.model or ""
        self.tokens_used = 0
        self.calls = 0

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.config.api_key_env, "unused")
        return {"Authorization": f"Bearer {key}"}

    def check(self) -> None:
        """Raise :class:`ConfigError` unless ``GET {url}/models`` answers (cheap, no tokens spent)."""
        try:
            r = httpx.get(f"{self.url}/models", headers=self._headers(), timeout=min(self.config.timeout_s, 10.0))
        except httpx.HTTPError as e:
            raise ConfigError(f"the critic at {self.url} does not answer ({type(e).__name__}: {e}); start it, fix "
                              "[algorithm.critic] url, or use url = 'local' for the served model") from None
        if r.status_code in (401, 403):
            raise ConfigError(f"the critic at {self.url} refused the key from ${self.config.api_key_env} "
                              f"(HTTP {r.status_code}); set that variable to a valid key")
        if r.status_code >= 500:
            raise ConfigError(f"the critic at {self.url} fails (HTTP {r.status_code} on /models); try again later")

    def chat(self, system: str, user: str) -> str:
        """One chat completion; returns the reply text and adds its tokens to :attr:`tokens_used`."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
        }
        try:
            r = httpx.post(f"{self.url}/chat/completions", json=body, headers=self._headers(),
                           timeout=self.config.timeout_s)
            r.raise_for_status()
            data = r.json()
            text = data["choices"][0]["message"]["content"] or ""
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as e:
            raise TracerlError(f"the critic at {self.url} failed: {type(e).__name__}: {e}") from None
        spent = json_object(json_object(data).get("usage")).get("total_tokens")
        if not isinstance(spent, int):
            spent = (len(system) + len(user) + len(text)) // 4
        self.tokens_used += spent
        self.calls += 1
        return str(text)

    def critique(self, prompt: str, runs: Sequence[Run]) -> str:
        """What in ``prompt`` causes the low-reward ``runs`` and what should change."""
        shown = "\n\n".join(
            f"<run reward={r.reward:g}>\n{r.transcript[-MAX_RUN_CHARS:]}\n</run>" for r in runs
        )
        user = (
            f"An LLM agent ran with this system prompt:\n<prompt>\n{prompt}\n</prompt>\n\n"
            f"Here are {len(runs)} of its runs with their reward (higher is better):\n\n{shown}\n\n"
            "Write a short critique of the system prompt: what in it leads to the low-reward runs, and what "
            "should change so that the agent gets the highest reward. Do not rewrite the prompt yet."
        )
        return self.chat("You review the system prompts of LLM agents and say precisely how to improve them.", user)

    def edit(self, prompt: str, critique: str) -> str:
        """``prompt`` rewritten following ``critique``."""
        user = (
            f"System prompt:\n<prompt>\n{prompt}\n</prompt>\n\nCritique:\n{critique}\n\n"
            "Rewrite the system prompt so that it follows the critique. Keep what works. "
            "Reply with the new system prompt only, between <prompt> and </prompt>."
        )
        return extract_prompt(self.chat("You edit the system prompts of LLM agents.", user))

    def merge(self, a: str, b: str) -> str:
        """One prompt that combines ``a`` and ``b``, which each do better on different tasks."""
        user = (
            f"Two versions of a system prompt each give the agent a higher reward on different tasks.\n"
            f"Version A:\n<prompt>\n{a}\n</prompt>\n\nVersion B:\n<prompt>\n{b}\n</prompt>\n\n"
            "Write one system prompt that combines the strengths of both. "
            "Reply with the new system prompt only, between <prompt> and </prompt>."
        )
        return extract_prompt(self.chat("You edit the system prompts of LLM agents.", user))


def extract_prompt(reply: str) -> str:
    """The text between the last ``<prompt>``/``</prompt>`` pair of ``reply``, else the whole reply, stripped."""
    found = _PROMPT_TAGS.findall(reply)
    return (found[-1] if found else reply).strip()
