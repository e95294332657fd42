"""OpenAI request bodies to tracerl's :class:`~tracerl.engines.base.SamplingParams`, checked field by field.

Honoured: ``model``, ``messages`` / ``prompt``, ``temperature``, ``top_p``, ``max_tokens`` /
``max_completion_tokens`` (the latter wins), ``stop``, ``seed``, ``n``, ``stream``, ``stream_options``
(``include_usage``), ``tools``, ``tool_choice``, ``logprobs`` (sampled-token log-probs are returned;
``top_logprobs`` lists stay empty).

Extension (as in vLLM): ``ignore_eos: true`` sends no stop token ids, so generation runs to ``max_tokens``
(benchmarks; an engine's own stop tokens still apply).

Ignored because they do not change what is sampled: ``user``, ``metadata``, ``store``,
``parallel_tool_calls``, ``service_tier``, ``top_logprobs``, ``reasoning_effort``, ``modalities``, and any
key this module does not know. Refused with a 400 naming the field because honouring them silently would
change the sampled distribution or the output contract: non-zero ``presence_penalty`` /
``frequency_penalty``, a non-empty ``logit_bias``, a ``response_format`` other than text, legacy
``functions`` / ``function_call``, and for completions ``echo``, ``suffix`` and ``best_of`` other than
``n``. ``tool_choice: "none"`` neither shows the tools to the model nor parses calls; ``"required"`` or a
named function is accepted but not enforced (nothing constrains decoding), which is logged once.

When neither ``max_tokens`` nor ``max_completion_tokens`` is given, a completion may use
``min(default_max_tokens, max_context - len(prompt))`` tokens. An explicit value with
``len(prompt) + max_tokens > max_context`` is refused (``context_length_exceeded``), as is a prompt that
leaves no room at all.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from tracerl.engines.base import SamplingParams
from tracerl.gateway.errors import GatewayError

log = logging.getLogger(__name__)

MAX_STOP = 16
_warned_tool_choice = False


@dataclass(slots=True)
class CommonRequest:
    """What chat and text completion requests share once parsed."""

    model: str
    params: SamplingParams
    max_tokens_given: bool
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GatewayError(f"'{key}' must be a number, got {value!r}", param=key)
    if value < lo or value > hi or (lo_open and value == lo):
        interval = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise GatewayError(f"'{key}' must be in {interval}, got {value!r}", param=key)
    return float(value)


def _int(body: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise GatewayError(f"'{key}' must be an integer, got {value!r}", param=key)
    if not lo <= value <= hi:
        raise GatewayError(f"'{key}' must be in [{lo}, {hi}], got {value}", param=key)
    return value


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP:
        raise GatewayError(f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them", param="stop")
    return stop


def _refuse_unsupported(body: dict[str, Any], *, chat: bool) -> None:
    for key in ("presence_penalty", "frequency_penalty"):
        value = body.get(key)
        if value not in (None, 0, 0.0):
            raise GatewayError(
                f"'{key}'={value!r} is not supported: penalties would change the sampled distribution that "
                "training relies on; leave it out or set it to 0",
                param=key,
            )
    if body.get("logit_bias"):
        raise GatewayError("'logit_bias' is not supported by the tracerl gateway; leave it out", param="logit_bias")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise GatewayError(
            f"'response_format'={fmt!r} is not supported (no constrained decoding); ask for JSON in the prompt "
            "and parse the text instead",
            param="response_format",
        )
    if chat and (body.get("functions") is not None or body.get("function_call") is not None):
        raise GatewayError("legacy 'functions'/'function_call' are not supported; use 'tools'", param="functions")


def parse_common(
    body: Any, *, model_name: str, chat: bool, default_max_tokens: int, stop_token_ids: list[int]
) -> CommonRequest:
    """Check the fields shared by both endpoints and build :class:`SamplingParams`.

    ``max_tokens`` is provisional when not given (``max_tokens_given=False``): :func:`fit_context`
    caps it once the prompt length is known.
    """
    if not isinstance(body, dict):
        raise GatewayError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(f"'model' is required; this gateway serves {model_name!r}", param="model")
    if model != model_name:
        raise GatewayError(
            f"model {model!r} is not served here; this gateway serves {model_name!r} (see GET /v1/models)",
            param="model",
            code="model_not_found",
        )
    _refuse_unsupported(body, chat=chat)
    max_tokens = _int(body, "max_completion_tokens", 1, 1 << 20) if chat else None
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1, 1 << 20)
    given = max_tokens is not None
    if max_tokens is None:
        max_tokens = default_max_tokens if chat else 16  # OpenAI's completions default
    n = _int(body, "n", 1, 64) or 1
    seed = _int(body, "seed", 0, (1 << 63) - 1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise GatewayError(f"'stream' must be true or false, got {stream!r}", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise GatewayError("'stream_options' must be an object such as {'include_usage': true}", param="stream_options")
    include_usage = bool(options.get("include_usage")) if options else False
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise GatewayError(f"'ignore_eos' must be true or false, got {ignore_eos!r}", param="ignore_eos")
    logprobs: Any = body.get("logprobs")
    if chat:
        if logprobs is not None and not isinstance(logprobs, bool):
            raise GatewayError(f"'logprobs' must be true or false, got {logprobs!r}", param="logprobs")
        _int(body, "top_logprobs", 0, 20)
    else:
        if isinstance(logprobs, bool):
            logprobs = None if logprobs is False else 1
        _int({"logprobs": logprobs}, "logprobs", 0, 5)
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        n=n,
        seed=seed,
        stop=_stop(body),
        stop_token_ids=[] if ignore_eos else list(stop_token_ids),
    )
    return CommonRequest(
        model=model,
        params=params,
        max_tokens_given=given,
        stream=stream,
        include_usage=include_usage,
        logprobs=logprobs is not None and logprobs is not False,
    )


def check_tool_choice(body: dict[str, Any], has_tools: bool) -> bool:
    """Whether tool calls should be parsed from the output (tools given and ``tool_choice`` is not none)."""
    global _warned_tool_choice
    choice = body.get("tool_choice")
    if choice is None or choice == "auto":
        return has_tools
    if choice == "none":
        return False
    if choice == "required" or (isinstance(choice, dict) and choice.get("type") == "function"):
        if not has_tools:
            raise GatewayError("'tool_choice' names a tool but no 'tools' were given", param="tool_choice")
        if not _warned_tool_choice:
            _warned_tool_choice = True
            log.warning("tool_choice=%r is not enforced by the gateway (no constrained decoding)", choice)
        return True
    raise GatewayError(
        f"'tool_choice' must be 'auto', 'none', 'required' or {{'type': 'function', ...}}, got {choice!r}",
        param="tool_choice",
    )


def check_completion_only(body: dict[str, Any], n: int) -> None:
    """Refuse the text-completion fields the gateway cannot honour."""
    if body.get("echo"):
        raise GatewayError("'echo' is not supported; the prompt is recorded in the store anyway", param="echo")
    if body.get("suffix"):
        raise GatewayError("'suffix' (insertion) is not supported", param="suffix")
    best_of = body.get("best_of")
    if best_of is not None and best_of != n:
        raise GatewayError(f"'best_of' must equal 'n' ({n}) or be left out, got {best_of!r}", param="best_of")


def fit_context(req: CommonRequest, prompt_len: int, max_context: int) -> None:
    """Cap or refuse ``max_tokens`` so that ``prompt_len + max_tokens <= max_context``."""
    room = max_context - prompt_len
    if room < 1:
        raise GatewayError(
            f"the prompt is {prompt_len} tokens but this model's context is {max_context} tokens; "
            "shorten the messages",
            param="messages",
            code="context_length_exceeded",
        )
    if req.max_tokens_given and req.params.max_tokens > room:
        raise GatewayError(
            f"the prompt ({prompt_len} tokens) plus max_tokens ({req.params.max_tokens}) exceeds this model's "
            f"context of {max_context} tokens; ask for at most {room} tokens or shorten the prompt",
            param="max_tokens",
            code="context_length_exceeded",
        )
    req.params.max_tokens = min(req.params.max_tokens, room)
