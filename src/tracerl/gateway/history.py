"""Multi-turn token faithfulness: an assistant turn the gateway produced is fed back as its recorded tokens.

An agent sends its whole history on every call. Rendering the assistant turns of that history through the
chat template gives the tokens of the *canonical* text, which need not be the tokens the model sampled: a
model that wrote compact JSON in a tool call (``{"a":17}``) gets its call back parsed and re-serialised
(``{"a": 17}``). Trained on such a prompt the model would learn from a history it never wrote, and the
prompt of call k+1 would not extend the prompt and response of call k.

So :class:`TokenService <tracerl.gateway.service.TokenService>` remembers, per attempt, the calls it served
(:class:`TurnMemory`): hashes of the request's canonical messages and tools, the prompt ids the engine
saw, a fingerprint of the template's own render of that prompt, and per choice the response ids and the
assistant message returned to the client (as :func:`reply_key`). A new request of the same attempt whose
messages are a remembered call's messages followed by the assistant message that call returned gets, from
the template's render of the whole request (:func:`splice`)::

    template's render:  [call k's messages rendered] [call k's turn re-rendered, to end-of-turn] [the rest]
    prompt sent:        [prompt ids call k sent    ] [response ids call k sampled (+ end-of-turn)] [the rest]

The assistant message is compared as a client may echo it (:func:`reply_key`): the same content and the
same tool names and arguments as JSON values; call ids and JSON formatting are ignored. The rest (turn
separators such as the ``\\n`` after ``<|im_end|>``, later messages, the generation prompt) is the
template's own, and costs no extra render. The longest match wins, and since a remembered prompt was itself
spliced, a conversation of any length extends its first prompt token for token. A template that renders
earlier assistant turns differently once later turns follow (one that drops reasoning, say) is overridden
for the gateway's own turns: the model is shown what it wrote.

When the history continues a remembered call but the client changed the assistant turn (edited its text,
changed an argument), or the template renders the messages before that turn differently once it follows,
the request is rendered normally. Each call's span says which happened (``prefix_reused``: true / false,
absent when the request continues no remembered call; ``reused_prompt_tokens``), and
:attr:`TurnMemory.stats` counts the calls of each kind in this process.

Memory is bounded: attempts are kept in least-recently-used order, at most ``max_attempts`` of them holding
``max_tokens`` token ids in all, each for ``ttl_s`` seconds after its last call, and at most ``max_calls``
calls per attempt; an attempt is forgotten at once when the gateway learns it finished (a call refused with
409).
"""

from __future__ import annotations

import json
import logging
import time
from array import array
from collections import Counter, OrderedDict, deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracerl.gateway.chat import normalize_messages

log = logging.getLogger(__name__)

AttemptKey = tuple[str, str]  # (rollout id, attempt id)
ReplyKey = tuple[str, tuple[tuple[str, str], ...]]  # (content, ((tool name, canonical JSON arguments), ...))
Fingerprint = tuple[int, int]  # (length, hash) of a token id sequence


def fingerprint(ids: Sequence[int]) -> Fingerprint:
    """A token id sequence in two integers, to recognise it later without keeping it."""
    return len(ids), hash(array("i", ids).tobytes())


def history_hashes(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> list[int]:
    """``hashes[k]`` identifies ``tools`` and ``messages[:k]`` (canonical), to recognise a request's history
    as a remembered call's without keeping the call's messages."""
    h = hash(json.dumps(tools, sort_keys=True, ensure_ascii=False))
    out = [h]
    for m in messages:
        h = hash((h, json.dumps(m, sort_keys=True, ensure_ascii=False)))
        out.append(h)
    return out


def reply_key(message: dict[str, Any]) -> ReplyKey:
    """What must stay the same for an echoed assistant message to be the turn the gateway returned.

    ``message`` is an OpenAI assistant message (arguments as JSON strings, as the client received them) or
    a canonical one (:func:`~tracerl.gateway.chat.normalize_messages`, arguments as objects). Missing content
    counts as ``""``; arguments are compared as JSON values (key order and spacing ignored); ids are ignored.
    """
    if message.get("content") is None or any(isinstance(c["function"]["arguments"], str)
                                             for c in message.get("tool_calls") or []):
        message = normalize_messages([message])[0]
    calls = tuple(
        (c["function"]["name"], json.dumps(c["function"]["arguments"], sort_keys=True, ensure_ascii=False))
        for c in message.get("tool_calls") or []
    )
    return message["content"], calls


@dataclass(slots=True)
class Call:
    """One served chat call as remembered: its request (as hashes), the prompt ids the engine saw (maybe
    spliced), a fingerprint of the template's render of the request, and per choice what the engine wrote."""

    turns: int  # messages in the request
    history: int  # history_hashes(messages, tools)[turns]
    prompt_ids: array[int]
    rendered: Fingerprint
    choices: list[tuple[array[int], ReplyKey]]  # (response ids, key of the returned assistant message)

    @classmethod
    def of(
        cls,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        prompt_ids: Sequence[int],
        rendered_ids: Sequence[int],
        choices: Sequence[tuple[Sequence[int], dict[str, Any]]],
    ) -> Call:
        """The call that sent ``prompt_ids`` for canonical ``messages`` and ``tools`` (rendered by the
        template as ``rendered_ids``) and returned, per choice, (response ids, assistant message)."""
        return cls(
            turns=len(messages),
            history=history_hashes(messages, tools)[-1],
            prompt_ids=array("i", prompt_ids),
            rendered=fingerprint(rendered_ids),
            choices=[(array("i", ids), reply_key(message)) for ids, message in choices],
        )

    @property
    def tokens(self) -> int:
        return len(self.prompt_ids) + sum(len(r) for r, _ in self.choices)


@dataclass(slots=True)
class Match:
    """The remembered call a request continues, and which of its choices the request's history holds."""

    call: Call
    response_ids: array[int]


@dataclass(slots=True)
class _Attempt:
    calls: deque[Call]
    last_used: float


@dataclass
class TurnMemory:
    """The calls served per attempt, to feed a gateway-produced turn back as its tokens (module docstring)."""

    max_attempts: int = 10_000
    max_tokens: int = 20_000_000
    max_calls: int = 16
    ttl_s: float = 3600.0
    #: calls that continued a remembered call, by outcome: ``reused`` (spliced), ``changed`` (the agent changed
    #: the turn), ``template`` (the template renders the history before it differently now)
    stats: Counter[str] = field(default_factory=Counter)
    _attempts: OrderedDict[AttemptKey, _Attempt] = field(default_factory=OrderedDict, init=False, repr=False)
    _tokens: int = field(default=0, init=False)

    def remember(self, key: AttemptKey, call: Call) -> None:
        """Keep ``call`` as the newest call of attempt ``key``."""
        self._expire()
        entry = self._attempts.get(key)
        if entry is None:
            entry = self._attempts[key] = _Attempt(deque(), time.monotonic())
        entry.calls.append(call)
        self._tokens += call.tokens
        if len(entry.calls) > self.max_calls:
            self._tokens -= entry.calls.popleft().tokens
        self._touch(key, entry)
        while self._attempts and (len(self._attempts) > self.max_attempts or self._tokens > self.max_tokens):
            oldest = next(iter(self._attempts.values()))
            self._tokens -= oldest.calls.popleft().tokens
            if not oldest.calls:
                self._attempts.popitem(last=False)

    def forget(self, key: AttemptKey) -> None:
        """Drop everything remembered of attempt ``key`` (it finished)."""
        entry = self._attempts.pop(key, None)
        if entry is not None:
            self._tokens -= sum(c.tokens for c in entry.calls)

    def match(
        self, key: AttemptKey, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> tuple[Match | None, bool]:
        """The remembered call with the longest messages that ``messages`` continue with the assistant turn
        that call returned, and whether the request continues a remembered call whose assistant turn the
        client changed (longer than the match, if any)."""
        self._expire()
        entry = self._attempts.get(key)
        if entry is None:
            return None, False
        self._touch(key, entry)
        best: Match | None = None
        longest_continued = -1
        hashes = history_hashes(messages, tools)
        for call in entry.calls:
            k = call.turns
            if len(messages) <= k or messages[k]["role"] != "assistant" or hashes[k] != call.history:
                continue
            longest_continued = max(longest_continued, k)
            if best is not None and k <= best.call.turns:
                continue
            echoed = reply_key(messages[k])
            response = next((r for r, reply in call.choices if reply == echoed), None)
            if response is not None:
                best = Match(call, response)
        changed = longest_continued >= 0 and (best is None or longest_continued > best.call.turns)
        return best, changed

    @property
    def tokens(self) -> int:
        """Token ids held now, over all attempts."""
        return self._tokens

    def _touch(self, key: AttemptKey, entry: _Attempt) -> None:
        entry.last_used = time.monotonic()
        self._attempts.move_to_end(key)

    def _expire(self) -> None:
        deadline = time.monotonic() - self.ttl_s
        while self._attempts:
            key, entry = next(iter(self._attempts.items()))
            if entry.last_used >= deadline:
                break
            self.forget(key)


def splice(full_ids: Sequence[int], match: Match, end_of_turn: Collection[int]) -> list[int] | None:
    """Prompt ids for a request that reuse the tokens of the remembered turn ``match`` (module docstring).

    ``full_ids`` is the template's render of the request with the generation prompt. Returns ``None`` when it
    does not start with the render of the remembered call's messages, or the turn after them has no
    end-of-turn token (then the request is rendered normally).
    """
    start, digest = match.call.rendered
    if len(full_ids) <= start or fingerprint(full_ids[:start]) != (start, digest):
        log.debug("the template renders the history before the reused turn differently now; not spliced")
        return None
    end = next((i for i in range(start, len(full_ids)) if full_ids[i] in end_of_turn), None)
    if end is None:
        return None
    response = list(match.response_ids)
    if not response or response[-1] not in end_of_turn:
        response.append(full_ids[end])  # stopped by length or a stop string: close the turn as the template does
    return [*match.call.prompt_ids, *response, *full_ids[end + 1 :]]
