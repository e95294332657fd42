"""Serving one OpenAI call with a token engine: render, generate, parse, and describe what to record.

:class:`TokenService` turns a request body into (a) the OpenAI response the client gets and (b) one
:class:`Sample` per choice holding exactly what the engine saw and produced. It never touches the store:
:mod:`tracerl.gateway.app` decides whether a call is recorded (tracked URL) and writes the spans.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tracerl.engines.base import Completion, TokenEngine
from tracerl.gateway.chat import normalize_messages, normalize_tools, render_chat
from tracerl.gateway.errors import GatewayError
from tracerl.gateway.history import AttemptKey, Call, TurnMemory, splice
from tracerl.gateway.protocol import (
    CommonRequest,
    check_completion_only,
    check_tool_choice,
    fit_context,
    parse_common,
)
from tracerl.gateway.streaming import token_pieces
from tracerl.gateway.toolcalls import PARSERS, ParsedOutput, tool_format_for

log = logging.getLogger(__name__)

# end-of-turn markers of common chat templates, used as stop tokens when the tokenizer has them
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>")

DEFAULT_MAX_TOKENS = 1024


@dataclass(slots=True)
class Sample:
    """One choice as the engine produced it: what a span records."""

    index: int
    prompt_ids: list[int] | None  # None for a frozen upstream (text only)
    completion: Completion | None
    choice: dict[str, Any]


@dataclass(slots=True)
class CallResult:
    """A served call: the OpenAI response, its samples, and how the client wants it delivered."""

    endpoint: str
    request: dict[str, Any]
    response: dict[str, Any]
    samples: list[Sample]
    stream: bool
    include_usage: bool
    pieces: list[Any] = field(default_factory=list)  # per choice: token text pieces (None: one delta)
    raw_events: list[dict[str, Any]] | None = None  # a frozen upstream's streamed events, replayed as they came
    started: float = 0.0
    latency_s: float = 0.0
    # multi-turn reuse (:mod:`tracerl.gateway.history`): None when the request continues no remembered call
    prefix_reused: bool | None = None
    reused_prompt_tokens: int = 0


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn: the tokenizer's EOS plus known end-of-turn tokens it has."""
    ids: set[int] = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    unk = getattr(tokenizer, "unk_token_id", None)
    vocab = tokenizer.get_vocab()
    for tok in END_OF_TURN_TOKENS:
        tid = vocab.get(tok)
        if isinstance(tid, int) and tid != unk:
            ids.add(tid)
    return sorted(ids)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class TokenService:
    """Chat and text completions on a :class:`TokenEngine`, token in and token out."""

    def __init__(self, engine: TokenEngine, *, model_name: str, default_max_tokens: int = DEFAULT_MAX_TOKENS):
        self.engine = engine
        self.model_name = model_name
        self.tokenizer = engine.tokenizer
        self.default_max_tokens = default_max_tokens
        self.stop_token_ids = end_of_turn_ids(self.tokenizer)
        family = f"{model_name} {getattr(self.tokenizer, 'name_or_path', '')}"
        self.native_tool_format = tool_format_for(family)
        self.turns = TurnMemory()

    async def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": self.model_name, "object": "model", "created": 0, "owned_by": "tracerl"}],
        }

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _token_logprobs(self, c: Completion) -> list[dict[str, Any]]:
        out = []
        for tid, lp in zip(c.token_ids, c.logprobs, strict=True):
            tok = self.tokenizer.decode([tid])
            out.append({"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": []})
        return out

    def _parse(self, body: dict[str, Any], *, chat: bool) -> CommonRequest:
        return parse_common(
            body,
            model_name=self.model_name,
            chat=chat,
            default_max_tokens=self.default_max_tokens,
            stop_token_ids=self.stop_token_ids if chat else [i for i in [self.tokenizer.eos_token_id] if i is not None],
        )

    def forget(self, attempt: AttemptKey) -> None:
        """Forget the turns served to ``attempt`` (it finished)."""
        self.turns.forget(attempt)

    def _prompt_ids(
        self, attempt: AttemptKey | None, messages: list[dict[str, Any]], tools: list[dict[str, Any]], full: list[int]
    ) -> tuple[list[int], bool | None, int]:
        """The prompt for ``messages`` (canonical render ``full``), reusing the recorded tokens of a turn this
        gateway produced earlier in ``attempt``; with whether it did (None: nothing to reuse) and how many."""
        if attempt is None:
            return full, None, 0
        match, changed = self.turns.match(attempt, messages, tools)
        if match is None and not changed:
            return full, None, 0
        ids = splice(full, match, self.stop_token_ids) if match is not None else None
        if match is not None and ids is None:
            outcome = "template"
            log.info("attempt %s: the chat template renders the history before a turn this gateway produced "
                     "differently now; prompt rendered as a whole", attempt[1])
        elif changed:
            outcome = "changed"
            log.info("attempt %s: the agent changed a turn this gateway produced; that turn is re-rendered",
                     attempt[1])
        else:
            outcome = "reused"
        self.turns.stats[outcome] += 1
        if ids is None or match is None:
            return full, False, 0
        return ids, outcome == "reused", len(match.call.prompt_ids) + len(match.response_ids)

    async def chat(self, body: Any, attempt: AttemptKey | None = None) -> CallResult:
        """Serve a chat completion; ``attempt`` (rollout id, attempt id) of a tracked call lets the prompt reuse
        the recorded tokens of the turns served to it before (:mod:`tracerl.gateway.history`)."""
        started = time.time()
        req = self._parse(body, chat=True)
        messages = normalize_messages(body.get("messages"))
        tools = normalize_tools(body.get("tools"))
        parse_tools = check_tool_choice(body, bool(tools))
        if body.get("tool_choice") == "none":
            tools = []
        rendered = render_chat(self.tokenizer, messages, tools)
        prompt_ids, reused, reused_tokens = self._prompt_ids(attempt, messages, tools, rendered.ids)
        fit_context(req, len(prompt_ids), self.engine.max_context)
        completions = await self.engine.generate(prompt_ids, req.params)
        parser = PARSERS[self.native_tool_format if rendered.tools_in_template else "hermes"]

        created = int(started)
        choices, samples, pieces = [], [], []
        for i, c in enumerate(completions):
            text = self._decode(c.token_ids)
            parsed = parser(text) if parse_tools else ParsedOutput(content=text, tool_calls=[])
            message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
            finish: str = c.finish_reason
            if parsed.tool_calls:
                message["tool_calls"] = [t.to_openai() for t in parsed.tool_calls]
                finish = "tool_calls"
            choice = {
                "index": i,
                "message": message,
                "logprobs": {"content": self._token_logprobs(c)} if req.logprobs else None,
                "finish_reason": finish,
            }
            choices.append(choice)
            samples.append(Sample(index=i, prompt_ids=prompt_ids, completion=c, choice=choice))
            if req.stream:
                pieces.append(None if parsed.tool_calls else token_pieces(self.tokenizer, c.token_ids, text))
        response = {
            "id": _new_id("chatcmpl"),
            "object": "chat.completion",
            "created": created,
            "model": self.model_name,
            "system_fingerprint": f"tracerl-w{completions[0].weights_version}" if completions else None,
            "choices": choices,
            "usage": _usage(len(prompt_ids), completions),
        }
        if attempt is not None:
            replies = [(c.token_ids, choice["message"]) for c, choice in zip(completions, choices, strict=True)]
            self.turns.remember(attempt, Call.of(messages, tools, prompt_ids, rendered.ids, replies))
        return CallResult(
            endpoint="chat.completions",
            request=body,
            response=response,
            samples=samples,
            stream=req.stream,
            include_usage=req.include_usage,
            pieces=pieces,
            started=started,
            latency_s=time.time() - started,
            prefix_reused=reused,
            reused_prompt_tokens=reused_tokens,
        )

    def _prompts(self, prompt: Any) -> list[list[int]]:
        """Token ids of each prompt: a string, a list of ids, or a list of either."""
        if isinstance(prompt, str):
            return [self.tokenizer(prompt)["input_ids"]]
        if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
            return [self._check_ids(prompt, "prompt")]
        if isinstance(prompt, list) and prompt:
            out = []
            for j, p in enumerate(prompt):
                if isinstance(p, str):
                    out.append(self.tokenizer(p)["input_ids"])
                elif isinstance(p, list) and p and all(type(t) is int for t in p):
                    out.append(self._check_ids(p, f"prompt[{j}]"))
                else:
                    raise GatewayError(f"prompt[{j}] must be a string or a list of token ids", param=f"prompt[{j}]")
            return out
        raise GatewayError("'prompt' must be a string, a list of token ids, or a list of those", param="prompt")

    def _check_ids(self, ids: list[int], where: str) -> list[int]:
        vocab = len(self.tokenizer)
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            msg = f"{where} holds token id {bad}, outside this model's vocabulary [0, {vocab})"
            raise GatewayError(msg, param=where)
        return ids

    async def completion(self, body: Any) -> CallResult:
        started = time.time()
        req = self._parse(body, chat=False)
        check_completion_only(body, req.params.n)
        prompts = self._prompts(body.get("prompt"))
        for ids in prompts:
            fit_context(req, len(ids), self.engine.max_context)
        results = await asyncio.gather(*(self.engine.generate(ids, req.params) for ids in prompts))
        choices, samples, pieces = [], [], []
        for ids, completions in zip(prompts, results, strict=True):
            for c in completions:
                i = len(choices)
                text = self._decode(c.token_ids)
                logprobs = None
                if req.logprobs:
                    toks = [self.tokenizer.decode([t]) for t in c.token_ids]
                    offsets = list(itertools.accumulate((len(t) for t in toks[:-1]), initial=0))[: len(toks)]
                    logprobs = {"tokens": toks, "token_logprobs": c.logprobs, "top_logprobs": None,
                                "text_offset": offsets}
                choice = {"index": i, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason}
                choices.append(choice)
                samples.append(Sample(index=i, prompt_ids=ids, completion=c, choice=choice))
                if req.stream:
                    pieces.append(token_pieces(self.tokenizer, c.token_ids, text))
        flat = [c for cs in results for c in cs]
        response = {
            "id": _new_id("cmpl"),
            "object": "text_completion",
            "created": int(started),
            "model": self.model_name,
            "choices": choices,
            "usage": _usage(sum(len(ids) for ids in prompts), flat),
        }
        return CallResult(
            endpoint="completions",
            request=body,
            response=response,
            samples=samples,
            stream=req.stream,
            include_usage=req.include_usage,
            pieces=pieces,
            started=started,
            latency_s=time.time() - started,
        )


def _usage(prompt_tokens: int, completions: list[Completion]) -> dict[str, int]:
    completion_tokens = sum(len(c.token_ids) for c in completions)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
