"""What the dashboard reads from a store and a runs folder, as plain JSON-ready dicts.

The store contract orders rollouts by creation only; the dashboard's table also sorts by reward, attempts,
duration, status and resources version, server-side, so a page of 50 out of 100,000 rollouts costs one
indexed ``COUNT`` and one ``ORDER BY … LIMIT`` in the database. For the SQL backends (sqlite, postgres)
:func:`rollout_table` runs that query through the backend's own read transaction (the table layout is the
one defined in ``store/schema.py``); for the others (memory, an HTTP store) it pages
through :meth:`~tracerl.store.Store.query_rollouts` with the same filters and sorts in Python — correct
everywhere, fast where it matters (a dashboard over a remote store should run next to its database).

Duration of a rollout is ``updated_at − created_at``: queue wait plus every attempt, up to its last change
(its end, once it is final).

Credit per call (:func:`call_credit`) is computed by :mod:`tracerl.algorithms.transitions` exactly as the
trainer computes it, over the rollout's group: ``G_t`` per call and ``A_t = (G_t − b) / d`` (see
:mod:`tracerl.credit`). The credit mode (``returns``, ``gamma``, ``advantage``) is the run's — read by
:func:`run_credit_mode` from the newest run's ``run_config.json`` that has one (the last stage that assigns
credit) — unless the viewer picks another on the page; without any, the trainer's defaults.

Runs are folders holding a ``metrics.jsonl`` (:mod:`tracerl.metrics`): the runs folder itself, or any folder
below it up to two levels deep.
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracerl.errors import InvalidInput, NotFound
from tracerl.metrics import CONFIG_FILE, METRICS_FILE, read_metrics
from tracerl.store.base import MAX_QUERY_LIMIT, Store, validate_id
from tracerl.types import Mode, Rollout, RolloutQuery, RolloutStatus, Span, SpanKind

_RETURNS = ("uniform", "discounted", "step", "total")  # tracerl.credit.RETURNS_MODES, without importing torch

SORT_KEYS = ("created", "reward", "attempts", "duration", "status", "version")
"""Columns the rollouts table sorts by; ``created`` is the store's own order."""
MAX_PAGE = 500
TASK_PREVIEW_CHARS = 120
MAX_VERSIONS = 100
"""Versions of one resource the resources page shows (the latest ones)."""
KNOWN_RESOURCES = ("resources", "prompts")
"""Resource names probed on stores that cannot list their resources (memory, HTTP)."""

_SQL_ORDER = {
    "created": "seq",
    "reward": "reward",
    "attempts": "attempts",
    "duration": "(updated_at - created_at)",
    "status": "status",
    "version": "resources_version",
}


@dataclass(slots=True)
class TableQuery:
    """One page of the rollouts table: filters (``None`` = any), sort column and direction, window."""

    status: RolloutStatus | None = None
    mode: Mode | None = None
    group_id: str | None = None
    resources_version: int | None = None
    sort: str = "created"
    descending: bool = True
    offset: int = 0
    limit: int = 50

    @classmethod
    def from_params(cls, params: dict[str, str]) -> TableQuery:
        """Parse URL query parameters (``status, mode, group, version, sort, dir, offset, limit``)."""
        def integer(name: str, default: int | None) -> int | None:
            raw = params.get(name, "")
            if raw == "":
                return default
            try:
                return int(raw)
            except ValueError:
                raise InvalidInput(f"{name}={raw!r} is not an integer") from None

        try:
            status = RolloutStatus(params["status"]) if params.get("status") else None
        except ValueError:
            raise InvalidInput(
                f"status={params['status']!r} is not one of {[s.value for s in RolloutStatus]}"
            ) from None
        try:
            mode = Mode(params["mode"]) if params.get("mode") else None
        except ValueError:
            raise InvalidInput(f"mode={params['mode']!r} is not one of {[m.value for m in Mode]}") from None
        sort = params.get("sort") or "created"
        if sort not in SORT_KEYS:
            raise InvalidInput(f"sort={sort!r} is not one of {list(SORT_KEYS)}")
        direction = params.get("dir") or "desc"
        if direction not in ("asc", "desc"):
            raise InvalidInput(f"dir={direction!r} must be 'asc' or 'desc'")
        group = params.get("group") or None
        if group is not None:
            validate_id(group, "group")
        offset = integer("offset", 0) or 0
        limit = integer("limit", 50) or 50
        if offset < 0 or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"offset must be ≥ 0 and limit in [1, {MAX_PAGE}], got {offset} and {limit}")
        return cls(status, mode, group, integer("version", None), sort, direction == "desc", offset, limit)


def rollout_row(r: Rollout) -> dict[str, Any]:
    """A rollout as one table row (task shortened to a preview)."""
    task = json.dumps(r.task, ensure_ascii=False)
    return {
        "rollout_id": r.rollout_id,
        "status": r.status.value,
        "mode": r.mode.value,
        "group_id": r.group_id,
        "reward": r.reward,
        "attempts": r.attempts,
        "max_attempts": r.max_attempts,
        "resources_version": r.resources_version,
        "duration_s": r.updated_at - r.created_at,
        "created_at": r.created_at,
        "task": task if len(task) <= TASK_PREVIEW_CHARS else task[: TASK_PREVIEW_CHARS - 1] + "…",
        "error": r.error,
    }


def rollout_table(store: Store, q: TableQuery) -> dict[str, Any]:
    """``{"items": [row, ...], "total": n, "offset", "limit"}`` for one page of the table."""
    from tracerl.store.sql import SqlStore

    if isinstance(store, SqlStore):
        items, total = _sql_table(store, q)
    else:
        items, total = _generic_table(store, q)
    return {"items": [rollout_row(r) for r in items], "total": total, "offset": q.offset, "limit": q.limit}


def _sql_table(store: Any, q: TableQuery) -> tuple[list[Rollout], int]:
    from tracerl.store.sql_rows import row_rollout

    filters = {
        "status": q.status.value if q.status else None,
        "mode": q.mode.value if q.mode else None,
        "group_id": q.group_id,
        "resources_version": q.resources_version,
    }
    used = tuple(k for k, v in filters.items() if v is not None)
    params = [filters[k] for k in used]
    direction = "DESC" if q.descending else "ASC"
    order = f"{_SQL_ORDER[q.sort]} {direction} NULLS LAST" + ("" if q.sort == "created" else f", seq {direction}")
    count, page = store.q.sorted_rollouts(used, order)
    with store._read() as tx:  # the one query the store contract has no method for
        total_row = tx.one(count, params)
        rows = tx.all(page, [*params, q.limit, q.offset])
    return [row_rollout(row) for row in rows], int(total_row[0]) if total_row else 0


def sort_key(sort: str, r: Rollout) -> tuple[bool, Any]:
    """The Python sort key matching :data:`_SQL_ORDER` (``None`` values sort last in either direction)."""
    value: Any = {
        "created": None,
        "reward": r.reward,
        "attempts": r.attempts,
        "duration": r.updated_at - r.created_at,
        "status": r.status.value,
        "version": r.resources_version,
    }[sort]
    return (value is None, value)


def _generic_table(store: Store, q: TableQuery) -> tuple[list[Rollout], int]:
    everything: list[Rollout] = []
    offset = 0
    while True:
        page = store.query_rollouts(
            RolloutQuery(
                status=[q.status] if q.status else None, mode=q.mode, group_id=q.group_id,
                resources_version=q.resources_version, limit=MAX_QUERY_LIMIT, offset=offset,
            )
        )
        everything.extend(page.items)
        offset += len(page.items)
        if not page.items or offset >= page.total:
            break
    if q.descending:
        everything.reverse()  # newest first; the stable sorts below keep it as the tie-break
    if q.sort != "created":
        present = [r for r in everything if sort_key(q.sort, r)[1] is not None]
        missing = [r for r in everything if sort_key(q.sort, r)[1] is None]
        present.sort(key=lambda r: sort_key(q.sort, r)[1], reverse=q.descending)
        everything = present + missing
    return everything[q.offset : q.offset + q.limit], len(everything)


def rollout_counts(store: Store) -> dict[str, dict[str, int]]:
    """``{mode: {status: n}}`` over every rollout: one ``GROUP BY`` on SQL stores, else one counting query
    per pair."""
    from tracerl.store.sql import SqlStore

    out = {m.value: dict.fromkeys((s.value for s in RolloutStatus), 0) for m in Mode}
    if isinstance(store, SqlStore):
        with store._read() as tx:  # one scan instead of 15 counting queries
            for mode, status, n in tx.all(store.q.count_by_mode_status):
                out.setdefault(mode, {})[status] = int(n)
        return out
    for m in Mode:
        for s in RolloutStatus:
            out[m.value][s.value] = store.query_rollouts(RolloutQuery(status=[s], mode=m, limit=1)).total
    return out


# -- one rollout -----------------------------------------------------------------------------------


def call_view(span: Span, tokenizer: Any = None) -> dict[str, Any]:
    """An ``llm_call`` span as the rollout page shows it: messages, reply, tool calls, tokens, log-probs."""
    a = span.attributes
    request = a.get("request") or {}
    choices = (a.get("response") or {}).get("choices") or [{}]
    message = choices[0].get("message") or {}
    text = message.get("content") if message else choices[0].get("text")
    usage = a.get("usage") or {}
    response_ids = span.response_ids or []
    tokens: list[str] | None = None
    if tokenizer is not None and response_ids:
        tokens = [tokenizer.decode([t]) for t in response_ids]
    return {
        "seq": span.seq,
        "model": a.get("model"),
        "weights_version": a.get("weights_version"),
        "finish_reason": a.get("finish_reason"),
        "latency_s": a.get("latency_s"),
        "messages": request.get("messages") or ([{"role": "prompt", "content": request["prompt"]}]
                                                 if "prompt" in request else []),
        "tools": [t.get("function", {}).get("name") for t in request.get("tools") or [] if isinstance(t, dict)],
        "reply": text,
        "tool_calls": message.get("tool_calls") or [],
        "prompt_tokens": usage.get("prompt_tokens", len(span.prompt_ids or [])),
        "completion_tokens": usage.get("completion_tokens", len(response_ids)),
        "response_ids": response_ids,
        "tokens": tokens,
        "logprobs": span.logprobs or [],
    }


def span_view(span: Span, tokenizer: Any = None) -> dict[str, Any]:
    """Any span for the span tree: common fields plus the call view for ``llm_call`` spans."""
    view: dict[str, Any] = {
        "seq": span.seq,
        "kind": SpanKind(span.kind).value,
        "name": span.name,
        "parent_seq": span.parent_seq,
        "start_time": span.start_time,
        "end_time": span.end_time,
    }
    if span.kind is SpanKind.LLM_CALL:
        view["call"] = call_view(span, tokenizer)
    else:
        view["attributes"] = span.attributes
    return view


def rollout_detail(
    store: Store,
    rollout_id: str,
    *,
    returns: str = "uniform",
    gamma: float = 1.0,
    advantage: str = "grpo",
    tokenizer: Any = None,
) -> dict[str, Any]:
    """A rollout with its attempts, every attempt's span tree, and the credit of its last attempt's calls."""
    validate_id(rollout_id, "rollout id")
    rollout = store.get_rollout(rollout_id)
    attempts = store.get_attempts(rollout_id)
    spans = store.get_spans(rollout_id=rollout_id)
    by_attempt: dict[str, list[dict[str, Any]]] = {a.attempt_id: [] for a in attempts}
    for s in spans:
        by_attempt.setdefault(s.attempt_id, []).append(span_view(s, tokenizer))
    now = time.time()
    return {
        "rollout": {**rollout_row(rollout), "task": rollout.task, "metadata": rollout.metadata},
        "attempts": [
            {**a.to_json(), "spans": by_attempt.get(a.attempt_id, []), "end": a.ended_at or now} for a in attempts
        ],
        "credit": call_credit(store, rollout, returns=returns, gamma=gamma, advantage=advantage),
    }


def call_credit(store: Store, rollout: Rollout, *, returns: str, gamma: float, advantage: str) -> dict[str, Any]:
    """Per-call return ``G_t`` and advantage ``A_t`` of ``rollout`` under a credit mode, computed over its
    group exactly as training does (:func:`tracerl.algorithms.transitions.assign_credit`).

    Returns ``{"mode", "calls": [{"seq", "return", "advantage"}], "note"}``; ``note`` says why a rollout
    has no credit (not finished, no reward, zero-variance group)."""
    if returns not in _RETURNS or advantage not in ("grpo", "rloo", "batch"):
        raise InvalidInput(
            f"credit mode returns={returns!r}, advantage={advantage!r}: returns must be one of "
            f"{', '.join(_RETURNS)} and advantage grpo, rloo or batch"
        )
    if not 0.0 < gamma <= 1.0:
        raise InvalidInput(f"gamma must be in (0, 1], got {gamma}")
    mode = {"returns": returns, "gamma": gamma, "advantage": advantage}
    from tracerl.algorithms.transitions import assign_credit, read_rollout

    own = read_rollout(store, rollout.rollout_id)
    if isinstance(own, str):
        return {"mode": mode, "calls": [], "note": f"no credit: {own.replace('_', ' ')}"}
    group = store.query_rollouts(RolloutQuery(group_id=rollout.group_id, limit=MAX_QUERY_LIMIT)).items
    others = [read_rollout(store, r.rollout_id) for r in group if r.rollout_id != rollout.rollout_id]
    records = [own, *(rec for rec in others if not isinstance(rec, str))]
    batch = assign_credit(records, returns=returns, advantage=advantage, gamma=gamma)  # type: ignore[arg-type]
    mine = [t for t in batch.transitions if t.rollout_id == rollout.rollout_id]
    seqs = [c.seq for c in sorted(own.calls, key=lambda c: c.seq)]
    if not mine:
        return {"mode": mode, "calls": [], "note": "no credit: its group has zero reward variance (skipped)"}
    calls = [{"seq": seqs[t.call_index], "return": t.ret, "advantage": t.advantage} for t in mine]
    return {"mode": mode, "calls": calls, "final_reward": own.final_reward, "group_size": len(records), "note": ""}


# -- resources -------------------------------------------------------------------------------------


def resource_names(store: Store) -> list[str]:
    """Names of the stored resources, sorted (all of them on SQL and memory stores; on an HTTP store, whose
    API cannot list names, those of :data:`KNOWN_RESOURCES` that exist)."""
    from tracerl.store.memory import MemoryStore
    from tracerl.store.sql import SqlStore

    if isinstance(store, SqlStore):
        with store._read() as tx:  # listing names is not part of the contract
            return [row[0] for row in tx.all(store.q.resource_names)]
    if isinstance(store, MemoryStore):
        return sorted(store._resources)
    names = []
    for name in KNOWN_RESOURCES:
        try:
            store.get_resource(name)
        except NotFound:
            continue
        names.append(name)
    return sorted(names)


def resource_history(store: Store, name: str) -> dict[str, Any]:
    """The last :data:`MAX_VERSIONS` versions of ``name``, each with its unified diff against the one before."""
    latest = store.get_resource(name)
    first = max(1, latest.version - MAX_VERSIONS + 1)
    versions = [store.get_resource(name, v) for v in range(first, latest.version)] + [latest]
    out: list[dict[str, Any]] = []
    previous = "" if first == 1 else json.dumps(store.get_resource(name, first - 1).value, indent=2, sort_keys=True,
                                                 ensure_ascii=False)
    for r in versions:
        text = json.dumps(r.value, indent=2, sort_keys=True, ensure_ascii=False)
        out.append({"version": r.version, "created_at": r.created_at, "value": r.value,
                    "diff": text_diff(previous, text, r.version)})
        previous = text
    return {"name": name, "versions": out}


def text_diff(old: str, new: str, version: int) -> list[str]:
    """Unified diff lines of ``old`` → ``new`` (version ``version − 1`` → ``version``), without the headers."""
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), f"v{version - 1}", f"v{version}", lineterm="", n=2
    )
    return [line for line in lines if not line.startswith(("---", "+++"))]


# -- runs ------------------------------------------------------------------------------------------


def find_runs(runs_dir: Path | None) -> list[dict[str, Any]]:
    """Run folders under ``runs_dir`` (itself, or up to two levels below) that hold a metrics file."""
    if runs_dir is None or not runs_dir.is_dir():
        return []
    found = [runs_dir / METRICS_FILE] if (runs_dir / METRICS_FILE).is_file() else []
    found += sorted(runs_dir.glob(f"*/{METRICS_FILE}")) + sorted(runs_dir.glob(f"*/*/{METRICS_FILE}"))
    runs = []
    for path in found:
        rel = path.parent.relative_to(runs_dir).as_posix()
        stat = path.stat()
        runs.append({"name": rel if rel != "." else runs_dir.name, "path": rel, "updated_at": stat.st_mtime,
                     "bytes": stat.st_size})
    return runs


def run_credit_mode(runs_dir: Path | None) -> dict[str, Any]:
    """``{"returns", "gamma", "advantage", "source"}`` of the newest run whose ``run_config.json`` names a
    credit mode (its last stage that has one); the defaults ``uniform``, 1.0, ``grpo`` otherwise."""
    newest = sorted(find_runs(runs_dir), key=lambda r: r["updated_at"], reverse=True)
    for run in newest:
        assert runs_dir is not None
        path = runs_dir / run["path"] / CONFIG_FILE
        try:
            stages = json.loads(path.read_text(encoding="utf-8")).get("stages") or []
        except (OSError, ValueError, AttributeError):
            continue
        for stage in reversed(stages):
            if isinstance(stage, dict) and "returns" in stage:
                return {"returns": stage["returns"], "gamma": float(stage.get("gamma", 1.0)),
                        "advantage": stage.get("advantage", "grpo"), "source": f"run {run['name']}"}
    return {"returns": "uniform", "gamma": 1.0, "advantage": "grpo", "source": "defaults (no run names one)"}


def run_metrics(runs_dir: Path | None, path: str) -> dict[str, Any]:
    """The records of one run's ``metrics.jsonl``; ``path`` is a run's ``path`` from :func:`find_runs`."""
    known = {r["path"]: r for r in find_runs(runs_dir)}
    if runs_dir is None or path not in known:  # only listed runs: a path cannot walk out of the runs folder
        raise NotFound(f"no run {path!r}; runs are {sorted(known) or 'none (start tracerl serve with --runs DIR)'}")
    return {**known[path], "records": read_metrics(runs_dir / path / METRICS_FILE)}
