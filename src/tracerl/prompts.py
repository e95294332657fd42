"""Prompt substitution: the gateway serves an optimized system prompt (and demonstrations) with no agent change.

A versioned store resource named ``prompts`` holds, per original system prompt, a replacement text and
optional few-shot demonstration turns::

    store.put_resource("prompts", {
        "prompts": {
            prompt_key("You are a calculator."): {          # sha256 of the original system prompt's text
                "text": "You are a careful calculator. End with 'Answer: <n>'.",
                "demos": [{"role": "user", "content": "2+3"}, {"role": "assistant", "content": "Answer: 5"}],
            },
        },
        "candidate": {...},                                  # optional: what produced it (APO writes this)
    })

A rollout runs with a prompts version when its metadata says ``{"prompts_version": N}`` (``evaluate`` and
APO's candidate scoring set it), or else when its resources bundle (the ``resources`` resource at the
rollout's ``resources_version``, as the Trainer publishes it) holds ``"prompts_version": N``. On every chat
call of such a rollout the gateway looks at the first message; if it is a ``system`` (or ``developer``)
message whose text hashes to a key of that version, the message's text is replaced and the demonstrations
are inserted right after it, before the chat template is rendered — so the recorded ``prompt_ids`` are those
of the substituted prompt. A call whose first message has no match is served exactly as sent. Each recorded
span says what happened in its ``prompts`` attribute: ``{"version": N, "key": sha256 or None, "demos": k}``.

The text of a system message is its ``content`` string, or the concatenation of its ``text`` parts; the key
is ``sha256(text.encode("utf-8")).hexdigest()`` of that exact text (no trimming: a prompt that differs by
one space is another prompt).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

from tracerl.errors import ConfigError, NotFound
from tracerl.store.base import Store
from tracerl.types import Rollout

log = logging.getLogger(__name__)

#: the store resource holding prompt substitutions
PROMPTS_RESOURCE = "prompts"
#: the key of rollout metadata (or of the resources bundle) naming the prompts version to serve
PROMPTS_VERSION_KEY = "prompts_version"
#: the resources bundle the Trainer publishes (model, weights version, ... and the prompts version)
BUNDLE_RESOURCE = "resources"
SYSTEM_ROLES = ("system", "developer")
DEMO_ROLES = ("user", "assistant")


def prompt_key(text: str) -> str:
    """The key of a system prompt in a ``prompts`` resource: the sha256 hex digest of its UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def message_text(message: dict[str, Any]) -> str | None:
    """The text of a message: its ``content`` string or the joined ``text`` parts (None if it has neither)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if parts and all(isinstance(p, str) for p in parts):
            return "".join(parts)  # type: ignore[arg-type]
    return None


@dataclass(frozen=True)
class Replacement:
    """What one original system prompt becomes: a new text and demonstration turns inserted after it."""

    text: str
    demos: tuple[dict[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "demos": [dict(d) for d in self.demos]}


@dataclass(frozen=True)
class PromptTable:
    """One version of the ``prompts`` resource: replacements by :func:`prompt_key` of the original."""

    version: int
    replacements: dict[str, Replacement]

    @classmethod
    def from_value(cls, version: int, value: dict[str, Any]) -> PromptTable:
        """Parse and check a ``prompts`` resource value; :class:`ConfigError` names the bad part."""
        prompts = value.get("prompts")
        if not isinstance(prompts, dict):
            raise ConfigError(f"prompts resource v{version} must hold {{'prompts': {{sha256: {{'text': ...}}}}}}, "
                              f"got keys {sorted(value)}")
        out: dict[str, Replacement] = {}
        for key, entry in prompts.items():
            where = f"prompts resource v{version}, prompt {key[:12]}"
            if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
                raise ConfigError(f"{where}: each entry needs a 'text' string (the replacement system prompt)")
            out[key] = Replacement(entry["text"], check_demos(entry.get("demos") or [], where))
        return cls(version, out)


def check_demos(demos: Any, where: str) -> tuple[dict[str, str], ...]:
    """Demonstration turns as a tuple of ``{"role", "content"}`` dicts, alternating user → assistant."""
    if not isinstance(demos, list):
        raise ConfigError(f"{where}: 'demos' must be a list of {{'role', 'content'}} messages")
    out = []
    for i, d in enumerate(demos):
        role, content = (d.get("role"), d.get("content")) if isinstance(d, dict) else (None, None)
        if role != DEMO_ROLES[i % 2] or not isinstance(content, str):
            raise ConfigError(f"{where}: demos[{i}] must be {{'role': {DEMO_ROLES[i % 2]!r}, 'content': str}} "
                              f"(user and assistant turns alternate, starting with user), got {d!r}")
        out.append({"role": role, "content": content})
    if len(out) % 2:
        raise ConfigError(f"{where}: demos end with a user turn; every demonstration needs its assistant answer")
    return tuple(out)


def substitute(messages: list[dict[str, Any]], table: PromptTable) -> tuple[list[dict[str, Any]], str | None, int]:
    """``messages`` with the first (system) message replaced by its match in ``table`` and the demonstrations
    inserted after it; returns (messages, the matched key or None, number of demo turns inserted). An
    unmatched list is returned unchanged (the same object)."""
    if not messages or not isinstance(messages[0], dict) or messages[0].get("role") not in SYSTEM_ROLES:
        return messages, None, 0
    text = message_text(messages[0])
    key = prompt_key(text) if text is not None else None
    rep = table.replacements.get(key) if key is not None else None
    if rep is None:
        return messages, None, 0
    system = {**messages[0], "content": rep.text}
    return [system, *(dict(d) for d in rep.demos), *messages[1:]], key, len(rep.demos)


class PromptBook:
    """The prompts version of each rollout, read from the store once and cached (rollouts and resource
    versions never change). Thread-safe."""

    def __init__(self, store: Store, *, max_cached: int = 100_000) -> None:
        self.store = store
        self.max_cached = max_cached
        self._by_rollout: dict[str, PromptTable | None] = {}
        self._tables: dict[int, PromptTable] = {}
        self._lock = threading.Lock()

    def table(self, version: int) -> PromptTable:
        """Version ``version`` of the ``prompts`` resource; ``NotFound`` names it if there is none."""
        with self._lock:
            cached = self._tables.get(version)
        if cached is not None:
            return cached
        try:
            res = self.store.get_resource(PROMPTS_RESOURCE, version)
        except NotFound:
            raise NotFound(f"no version {version} of the {PROMPTS_RESOURCE!r} resource; publish it with "
                           f"store.put_resource({PROMPTS_RESOURCE!r}, ...) or name a version that exists") from None
        table = PromptTable.from_value(res.version, res.value)
        with self._lock:
            self._tables[version] = table
        return table

    def version_of(self, rollout: Rollout) -> int | None:
        """The prompts version ``rollout`` runs with: its metadata's, else its resources bundle's, else None."""
        v = rollout.metadata.get(PROMPTS_VERSION_KEY) if isinstance(rollout.metadata, dict) else None
        if v is None and rollout.resources_version is not None:
            try:
                bundle = self.store.get_resource(BUNDLE_RESOURCE, rollout.resources_version).value
            except NotFound:
                bundle = {}
            v = bundle.get(PROMPTS_VERSION_KEY)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"rollout {rollout.rollout_id}: {PROMPTS_VERSION_KEY} must be a version ≥ 1, got {v!r}")
        return v

    def for_rollout(self, rollout: Rollout) -> PromptTable | None:
        """The table ``rollout`` runs with (None: no substitution)."""
        rid = rollout.rollout_id
        with self._lock:
            if rid in self._by_rollout:
                return self._by_rollout[rid]
        version = self.version_of(rollout)
        table = self.table(version) if version is not None else None
        with self._lock:
            if len(self._by_rollout) >= self.max_cached:
                self._by_rollout.clear()
            self._by_rollout[rid] = table
        return table


def apply_to_body(body: Any, table: PromptTable | None) -> tuple[Any, dict[str, Any] | None]:
    """A chat request body as the model must see it, and the span's ``prompts`` attribute (None when the
    rollout runs with no prompts version). The client's body is not modified."""
    if table is None:
        return body, None
    info: dict[str, Any] = {"version": table.version, "key": None, "demos": 0}
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return body, info
    messages, key, demos = substitute(body["messages"], table)
    if key is None:
        return body, info
    new = copy.copy(body)
    new["messages"] = messages
    info.update(key=key, demos=demos)
    log.debug("prompts v%d: system prompt %s substituted (%d demo turns)", table.version, key[:12], demos)
    return new, info
