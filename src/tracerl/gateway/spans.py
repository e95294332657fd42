"""A served call as ``llm_call`` spans: one span per choice, with exactly what the engine saw and sampled.

Each span holds ``prompt_ids`` (the full rendered prompt: the store's codec stores only the part that does
not repeat the previous call's prompt + response), ``response_ids`` and ``logprobs`` as the engine returned
them, and these attributes:

==================  ============================================================================
``request``         the request body as the client sent it
``response``        the response JSON (non-streamed form, even for a streamed call) with only
                    this span's choice in ``choices``
``finish_reason``   ``stop``, ``length`` or ``tool_calls``
``model``           the served model name; ``weights_version`` the weights that sampled it
``latency_s``       request arrival to response ready (generation included)
``usage``           this choice's ``prompt_tokens``, ``completion_tokens``, ``total_tokens``
``call_id``         the response id (shared by the n spans of one call); ``choice_index``, ``n``
``endpoint``        ``chat.completions`` or ``completions``; ``stream`` whether it was streamed
``prefix_reused``   chat calls that continue a turn this gateway produced in the attempt: true when the
                    prompt starts with that call's prompt + response ids, false when the client changed
                    the turn and it was re-rendered (:mod:`tracerl.gateway.history`); absent otherwise.
                    With it, ``reused_prompt_tokens``: how many prompt ids came from the earlier call
==================  ============================================================================

A frozen upstream (no token ids) records the same attributes with ``prompt_ids = response_ids =
logprobs = None``.
"""

from __future__ import annotations

from typing import Any

from tracerl.gateway.recording import new_seqs
from tracerl.gateway.service import CallResult
from tracerl.types import Span, SpanKind


def build_spans(result: CallResult, *, rollout_id: str, attempt_id: str) -> list[Span]:
    """One ``llm_call`` span per choice of ``result``, each with a fresh seq (its identity)."""
    seqs = new_seqs(len(result.samples))
    response = result.response
    usage = response.get("usage") or {}
    spans = []
    for seq, sample in zip(seqs, result.samples, strict=True):
        c = sample.completion
        if c is not None and sample.prompt_ids is not None:
            prompt_tokens, completion_tokens = len(sample.prompt_ids), len(c.token_ids)
        else:  # frozen upstream: its own count (of all choices together when n > 1)
            prompt_tokens, completion_tokens = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        attributes: dict[str, Any] = {
            "request": result.request,
            "response": {**response, "choices": [sample.choice]},
            "finish_reason": sample.choice.get("finish_reason"),
            "model": response.get("model"),
            "weights_version": c.weights_version if c is not None else None,
            "latency_s": result.latency_s,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "call_id": response.get("id"),
            "choice_index": sample.index,
            "n": len(result.samples),
            "endpoint": result.endpoint,
            "stream": result.stream,
        }
        if result.prefix_reused is not None:
            attributes["prefix_reused"] = result.prefix_reused
            attributes["reused_prompt_tokens"] = result.reused_prompt_tokens
        spans.append(
            Span(
                attempt_id=attempt_id,
                seq=seq,
                kind=SpanKind.LLM_CALL,
                name=result.endpoint,
                rollout_id=rollout_id,
                start_time=result.started,
                end_time=result.started + result.latency_s,
                attributes=attributes,
                prompt_ids=list(sample.prompt_ids) if sample.prompt_ids is not None else None,
                response_ids=list(c.token_ids) if c is not None else None,
                logprobs=list(c.logprobs) if c is not None else None,
            )
        )
    return spans
