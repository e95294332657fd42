"""The data model shared by every part of tracerl: rollouts, attempts, spans and resources.

These are plain dataclasses with no behaviour beyond (de)serialisation to JSON-ready dicts, so the store
backends, the HTTP server, the gateway and the algorithms all speak the same language without importing
each other.

* A :class:`Rollout` is one task to run once (a "job"): task JSON, mode (train/val), group id (the same task
  sampled n times shares one group), status, the resources version it ran with and its final reward.
* An :class:`Attempt` is one try at a rollout by one worker, with a lease that heartbeats extend.
* A :class:`Span` is one event recorded during an attempt, keyed by ``(attempt_id, seq)`` so a retried
  write never duplicates. An ``llm_call`` span carries the exact prompt/response token ids and the
  log-probs of the sampled tokens.
* A :class:`Resource` is an immutable, versioned value (prompt template, checkpoint reference, ...).
"""

from __future__ import annotations

import enum
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

JSON = dict[str, Any]


class RolloutStatus(enum.StrEnum):
    """Where a rollout is in its life: ``queued → running → succeeded | failed | cancelled``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (RolloutStatus.SUCCEEDED, RolloutStatus.FAILED, RolloutStatus.CANCELLED)


class AttemptStatus(enum.StrEnum):
    """How an attempt ended (``running`` while it holds its lease).

    ``timeout``: the runner killed the agent because it overran the rollout's time limit.
    ``unresponsive``: the lease expired without a heartbeat (worker crashed or hung).
    """

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    UNRESPONSIVE = "unresponsive"
    CANCELLED = "cancelled"


class Mode(enum.StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


#: Rollout metadata key: how an evaluation rollout (mode ``val``/``test``) samples instead of decoding greedily,
#: ``{"sampling": {"temperature": 1.0, "top_p": 0.95}}`` (``tracerl.evaluate(samples=..., temperature=...)``
#: sets it for pass@k). Read by :meth:`Rollout.eval_sampling`: the runner hands it to the agent through
#: ``llm.sampling`` and the gateway serves a call that sets no ``temperature`` with it. Training rollouts ignore
#: it (they sample with the resources' settings).
SAMPLING_KEY = "sampling"
#: The settings :data:`SAMPLING_KEY` may hold.
EVAL_SAMPLING_FIELDS = ("temperature", "top_p")


class SpanKind(enum.StrEnum):
    LLM_CALL = "llm_call"
    REWARD = "reward"
    MESSAGE = "message"
    ERROR = "error"
    TOOL = "tool"
    CUSTOM = "custom"


@dataclass(slots=True)
class RolloutSpec:
    """What a caller enqueues; the store turns it into a :class:`Rollout`."""

    task: JSON
    mode: Mode = Mode.TRAIN
    group_id: str | None = None
    idempotency_key: str | None = None
    max_attempts: int = 3
    resources_version: int | None = None
    metadata: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        d = asdict(self)
        d["mode"] = Mode(self.mode).value
        return d

    @classmethod
    def from_json(cls, d: JSON) -> RolloutSpec:
        return cls(
            task=d["task"],
            mode=Mode(d.get("mode", "train")),
            group_id=d.get("group_id"),
            idempotency_key=d.get("idempotency_key"),
            max_attempts=int(d.get("max_attempts", 3)),
            resources_version=d.get("resources_version"),
            metadata=d.get("metadata") or {},
        )


@dataclass(slots=True)
class Rollout:
    rollout_id: str
    task: JSON
    mode: Mode
    group_id: str
    status: RolloutStatus
    max_attempts: int
    attempts: int = 0
    resources_version: int | None = None
    reward: float | None = None
    error: str | None = None
    idempotency_key: str | None = None
    metadata: JSON = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def to_json(self) -> JSON:
        d = asdict(self)
        d["mode"] = self.mode.value
        d["status"] = self.status.value
        return d

    @classmethod
    def from_json(cls, d: JSON) -> Rollout:
        return _from_json(cls, d, {"mode": Mode, "status": RolloutStatus})

    def eval_sampling(self) -> dict[str, float] | None:
        """How this rollout's calls sample: None for a training rollout (the resources' settings apply), else
        ``{"temperature": 0.0}`` (greedy) with the numeric settings of :data:`SAMPLING_KEY` in its metadata."""
        if self.mode is Mode.TRAIN:
            return None
        asked = self.metadata.get(SAMPLING_KEY)
        out = {"temperature": 0.0}
        if isinstance(asked, dict):
            out.update({k: float(v) for k, v in asked.items()
                        if k in EVAL_SAMPLING_FIELDS and isinstance(v, int | float) and not isinstance(v, bool)})
        return out


@dataclass(slots=True)
class Attempt:
    attempt_id: str
    rollout_id: str
    number: int
    worker_id: str
    status: AttemptStatus
    lease_expires_at: float
    heartbeat_at: float
    started_at: float
    ended_at: float | None = None
    error: str | None = None

    def to_json(self) -> JSON:
        d = asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_json(cls, d: JSON) -> Attempt:
        return _from_json(cls, d, {"status": AttemptStatus})


@dataclass(slots=True)
class Claim:
    """A claimed rollout: the rollout (now ``running``) and the new attempt that holds its lease."""

    rollout: Rollout
    attempt: Attempt

    def to_json(self) -> JSON:
        return {"rollout": self.rollout.to_json(), "attempt": self.attempt.to_json()}

    @classmethod
    def from_json(cls, d: JSON) -> Claim:
        return cls(rollout=Rollout.from_json(d["rollout"]), attempt=Attempt.from_json(d["attempt"]))


@dataclass(slots=True)
class Span:
    """One recorded event of an attempt. ``(attempt_id, seq)`` is its identity; writes are idempotent.

    ``seq`` is chosen by the writer (a random id, :func:`tracerl.store.order.new_seq`); ``position`` is the
    span's order within its attempt (0, 1, …), assigned by the store when the span is first written and
    ``None`` on a span that was not read from a store (see :mod:`tracerl.store.order`).

    For ``llm_call`` spans, ``prompt_ids``/``response_ids`` are the exact token ids sent to and sampled by
    the engine and ``logprobs`` the log-probabilities of the sampled tokens (``len == len(response_ids)``).
    Backends store the id lists packed (int32 arrays), and a prompt that extends the previous call's
    prompt+response of the same attempt is stored as a reference plus the new suffix.
    """

    attempt_id: str
    seq: int
    kind: SpanKind
    name: str = ""
    rollout_id: str = ""
    parent_seq: int | None = None
    start_time: float = field(default_factory=time.time)
    end_time: float | None = None
    attributes: JSON = field(default_factory=dict)
    prompt_ids: list[int] | None = None
    response_ids: list[int] | None = None
    logprobs: list[float] | None = None
    position: int | None = None

    def to_json(self) -> JSON:
        return {
            "attempt_id": self.attempt_id,
            "seq": self.seq,
            "position": self.position,
            "kind": SpanKind(self.kind).value,
            "name": self.name,
            "rollout_id": self.rollout_id,
            "parent_seq": self.parent_seq,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "attributes": self.attributes,
            "prompt_ids": self.prompt_ids,
            "response_ids": self.response_ids,
            "logprobs": self.logprobs,
        }

    @classmethod
    def from_json(cls, d: JSON) -> Span:
        return cls(
            attempt_id=d["attempt_id"],
            seq=d["seq"],
            kind=SpanKind(d["kind"]),
            name=d.get("name", ""),
            rollout_id=d.get("rollout_id", ""),
            parent_seq=d.get("parent_seq"),
            start_time=d.get("start_time") or time.time(),
            end_time=d.get("end_time"),
            attributes=d.get("attributes") or {},
            prompt_ids=d.get("prompt_ids"),
            response_ids=d.get("response_ids"),
            logprobs=d.get("logprobs"),
            position=d.get("position"),
        )


@dataclass(slots=True)
class RolloutTrace:
    """A rollout with its attempts (oldest first) and the spans, in store order, of the attempt whose result
    counts (:func:`tracerl.store.status.final_attempt`): what :meth:`Store.get_traces` returns per rollout."""

    rollout: Rollout
    attempts: list[Attempt]
    spans: list[Span]


@dataclass(slots=True)
class Resource:
    """An immutable versioned value. Versions of one name count 1, 2, 3, ... in write order."""

    name: str
    version: int
    value: JSON
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> JSON:
        return asdict(self)

    @classmethod
    def from_json(cls, d: JSON) -> Resource:
        return cls(name=d["name"], version=d["version"], value=d["value"], created_at=d["created_at"])


@dataclass(slots=True)
class RolloutQuery:
    """Filters for :meth:`Store.query_rollouts`. ``None`` means "any". Results are ordered by creation."""

    status: list[RolloutStatus] | None = None
    mode: Mode | None = None
    group_id: str | None = None
    resources_version: int | None = None
    created_after: float | None = None
    created_before: float | None = None
    rollout_ids: list[str] | None = None
    limit: int = 100
    offset: int = 0

    def to_json(self) -> JSON:
        return {
            "status": [RolloutStatus(s).value for s in self.status] if self.status else None,
            "mode": Mode(self.mode).value if self.mode else None,
            "group_id": self.group_id,
            "resources_version": self.resources_version,
            "created_after": self.created_after,
            "created_before": self.created_before,
            "rollout_ids": self.rollout_ids,
            "limit": self.limit,
            "offset": self.offset,
        }

    @classmethod
    def from_json(cls, d: JSON) -> RolloutQuery:
        return cls(
            status=[RolloutStatus(s) for s in d["status"]] if d.get("status") else None,
            mode=Mode(d["mode"]) if d.get("mode") else None,
            group_id=d.get("group_id"),
            resources_version=d.get("resources_version"),
            created_after=d.get("created_after"),
            created_before=d.get("created_before"),
            rollout_ids=d.get("rollout_ids"),
            limit=int(d.get("limit", 100)),
            offset=int(d.get("offset", 0)),
        )


@dataclass(slots=True)
class Page:
    """One page of query results; ``total`` counts every match, not just this page."""

    items: list[Rollout]
    total: int
    offset: int
    limit: int


_T = TypeVar("_T", bound="DataclassInstance")


def _from_json(cls: type[_T], d: JSON, enums: dict[str, type[enum.Enum]]) -> _T:
    """``cls`` from its wire dict, field by field from the dataclass itself: a field without a default must be
    present (KeyError names it); a missing field, or a ``None`` where the field has a default factory (``metadata``),
    takes the default; ``enums`` convert the named fields from their values."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        value = d.get(f.name, MISSING)
        if value is MISSING or (value is None and f.default_factory is not MISSING):
            if f.default is MISSING and f.default_factory is MISSING:
                raise KeyError(f.name)
            continue
        values[f.name] = enums[f.name](value) if f.name in enums else value
    return cls(**values)
