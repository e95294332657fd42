"""Where SFT examples come from: transcripts rendered as the gateway renders them, and recorded rollouts.

* :func:`examples_from_transcripts`: OpenAI-format transcripts → one :class:`SFTExample` per assistant
  turn, through the gateway's message checks and :func:`tracerl.gateway.chat.render_turns`.
* :func:`examples_from_store` / :func:`batch_from_rollouts`: recorded LLM calls of rollouts whose final
  reward reaches a threshold. A call recorded with token ids is used as recorded (exactly what the model
  saw and wrote); a call recorded as text only (a frozen upstream) is rendered from its request messages
  and reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from tracerl.algorithms.base import JSON, json_list, json_object
from tracerl.algorithms.sft import SFTBatch, SFTExample
from tracerl.algorithms.transitions import read_records
from tracerl.errors import ConfigError, TracerlError
from tracerl.store.base import Store
from tracerl.types import Mode, RolloutQuery, RolloutStatus, SpanKind


def examples_from_transcripts(transcripts: str | Sequence[JSON], tokenizer: Any) -> list[SFTExample]:
    """Every assistant turn of every transcript as an example (see :func:`render_transcript`)."""
    if isinstance(transcripts, (str, Path)):
        from tracerl.train.data import read_jsonl

        transcripts = read_jsonl(transcripts, what="demonstration")
    out: list[SFTExample] = []
    for i, t in enumerate(transcripts):
        out.extend(render_transcript(t, tokenizer, where=f"demonstration {i}"))
    if not out:
        raise ConfigError("the demonstrations hold no assistant turn to learn from")
    return out


def render_transcript(transcript: JSON, tokenizer: Any, *, where: str = "transcript") -> list[SFTExample]:
    """The assistant turns of one ``{"messages": [...], "tools": [...]}`` transcript as examples."""
    from tracerl.gateway.chat import normalize_messages, normalize_tools, render_turns
    from tracerl.gateway.service import end_of_turn_ids

    if not isinstance(cast(object, transcript), dict) or "messages" not in transcript:
        raise ConfigError(f"{where} must be an object with 'messages' (and optionally 'tools'): {transcript!r:.200}")
    weights = assistant_weights(transcript["messages"], where)
    try:
        messages = normalize_messages(transcript["messages"])
        tools = normalize_tools(transcript.get("tools"))
        turns = render_turns(tokenizer, messages, tools, end_of_turn_ids(tokenizer))
    except TracerlError as e:
        raise ConfigError(f"{where}: {e}") from None
    return [SFTExample(p, r, where) for (p, r), w in zip(turns, weights, strict=True) if w]


def assistant_weights(messages: Any, where: str) -> list[int]:
    """The ``weight`` (1 by default, or 0: context only, not trained) of each assistant message, in order.

    As in OpenAI's fine-tuning format, ``"weight": 0`` on an assistant message keeps it in the prompt of
    later turns but trains no example on it (e.g. a worked example, or a reply trained on another call).
    """
    weights: list[int] = []
    for i, message in enumerate(json_list(messages)):
        m = json_object(message)
        if m.get("role") != "assistant":
            continue
        w: object = m.get("weight", 1)
        if isinstance(w, bool) or w not in (0, 1):
            raise ConfigError(f"{where}: messages[{i}].weight is {w!r}; it must be 0 (context only) or 1 (trained)")
        weights.append(int(w))
    return weights


def calls_of_rollout(store: Store, rollout_id: str, tokenizer: Any | None = None) -> list[SFTExample]:
    """The recorded LLM calls of a rollout's counted attempt as examples."""
    [trace] = store.get_traces([rollout_id])  # the spans of the counted attempt
    out: list[SFTExample] = []
    for s in trace.spans:
        if s.kind is not SpanKind.LLM_CALL:
            continue
        if s.prompt_ids and s.response_ids:
            out.append(SFTExample(list(s.prompt_ids), list(s.response_ids), rollout_id))
        elif tokenizer is not None:
            out.extend(_render_text_call(s.attributes, tokenizer, rollout_id))
    return out


def _render_text_call(attributes: JSON, tokenizer: Any, rollout_id: str) -> list[SFTExample]:
    """A call recorded as text (request messages + reply message) rendered into its last turn's tokens."""
    request = json_object(attributes.get("request"))
    choices = json_list(json_object(attributes.get("response")).get("choices"))
    message: object = json_object(choices[0]).get("message") if choices else None
    if not isinstance(request.get("messages"), list) or not isinstance(message, dict):
        return []
    transcript: JSON = {"messages": [*json_list(request["messages"]), message], "tools": request.get("tools")}
    return render_transcript(transcript, tokenizer, where=f"rollout {rollout_id}")[-1:]


def examples_from_store(url: str, min_reward: float, tokenizer: Any | None = None) -> list[SFTExample]:
    """The calls of every succeeded rollout of the store at ``url`` whose final reward is ≥ ``min_reward``."""
    from tracerl.store import connect

    store = connect(url)
    try:
        out: list[SFTExample] = []
        offset = 0
        while True:
            page = store.query_rollouts(RolloutQuery(status=[RolloutStatus.SUCCEEDED], limit=1000, offset=offset))
            for r in page.items:
                if r.reward is not None and r.reward >= min_reward and r.mode in (Mode.TRAIN, Mode.TEST, Mode.VAL):
                    out.extend(calls_of_rollout(store, r.rollout_id, tokenizer))
            offset += len(page.items)
            if not page.items or offset >= page.total:
                break
    finally:
        store.close()
    if not out:
        raise ConfigError(f"the store {url} has no recorded calls of rollouts with reward ≥ {min_reward}")
    return out


def batch_from_rollouts(store: Store, rollout_ids: Sequence[str], min_reward: float) -> SFTBatch:
    """Rejection sampling: the calls of the step's rollouts whose final reward is ≥ ``min_reward``."""
    examples: list[SFTExample] = []
    groups: dict[str, bool] = {}
    rewards: list[float] = []
    tokens = 0
    for record in read_records(store, rollout_ids):  # one store call for the step
        if isinstance(record, str):
            continue
        rid = record.rollout_id
        rewards.append(record.final_reward)
        tokens += sum(len(c.response_ids) for c in record.calls)
        good = record.final_reward >= min_reward
        groups[record.group_id] = groups.get(record.group_id, False) or good
        if good:
            examples.extend(SFTExample(c.prompt_ids, c.response_ids, rid) for c in record.calls)
    extra = {"kept_rollouts": float(len({e.source for e in examples}))}
    if rewards:
        extra["reward_mean"] = sum(rewards) / len(rewards)
    return SFTBatch(examples, groups=len(groups), informative_groups=sum(groups.values()), rollouts=len(rewards),
                    response_tokens=tokens, extra=extra)  # fmt: skip
