"""``tracerl export``: recorded transitions out of any store, as JSONL or Parquet, for other trainers.

One row per ``llm_call`` span of the chosen rollouts (by default the succeeded ones of every mode)::

    {"rollout_id", "attempt_id", "group_id", "mode", "seq", "position", "call_index", "prompt_ids",
     "response_ids", "logprobs", "finish_reason", "weights_version", "prefix_reused", "final_reward",
     "rewards": [{"name", "value", "seq", "position"}], "task"}

``seq`` is a span's identity; ``position`` its place among the attempt's spans, assigned by the store as they
were written (:mod:`tracerl.store.order`): order calls and rewards by ``position``.

``prefix_reused`` is true when the call's prompt starts with the prompt + response ids of the earlier call
of the attempt whose turn it continues (usually the previous one: the gateway fed the model's own turn
back), so the two can be trained as one sequence; false when the agent changed that turn; null when the call
continues no earlier call.

``rewards`` are the attempt's intermediate reward spans (the ``final`` one included when the runner wrote it),
so a consumer can do its own credit assignment. Only the attempt that finished the rollout is exported: the
spans of failed earlier attempts are not transitions of the final result.

    tracerl export --store sqlite:///runs/demo/store.db --out transitions.jsonl
    tracerl export --store postgresql://... --out t.parquet --mode train
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tracerl.errors import ConfigError
from tracerl.store import Store, connect
from tracerl.types import Mode, RolloutQuery, RolloutStatus, SpanKind

log = logging.getLogger(__name__)
PAGE = 500


def iter_transitions(
    store: Store, *, mode: Mode | None = None, statuses: list[RolloutStatus] | None = None
) -> Iterator[dict[str, Any]]:
    """Yield one dict per recorded LLM call of the matching rollouts (see the module docstring)."""
    query = RolloutQuery(status=statuses or [RolloutStatus.SUCCEEDED], mode=mode, limit=PAGE)
    while True:
        page = store.query_rollouts(query)
        for trace in store.get_traces([r.rollout_id for r in page.items]) if page.items else []:
            rollout, spans = trace.rollout, trace.spans  # the spans of the attempt that finished the rollout
            rewards = [
                {"name": s.name, "value": s.attributes.get("value"), "seq": s.seq, "position": s.position}
                for s in spans
                if s.kind is SpanKind.REWARD
            ]
            calls = [s for s in spans if s.kind is SpanKind.LLM_CALL]
            for index, s in enumerate(calls):
                yield {
                    "rollout_id": rollout.rollout_id,
                    "attempt_id": s.attempt_id,
                    "group_id": rollout.group_id,
                    "mode": rollout.mode.value,
                    "seq": s.seq,
                    "position": s.position,
                    "call_index": index,
                    "prompt_ids": s.prompt_ids,
                    "response_ids": s.response_ids,
                    "logprobs": s.logprobs,
                    "finish_reason": s.attributes.get("finish_reason"),
                    "weights_version": s.attributes.get("weights_version"),
                    "prefix_reused": s.attributes.get("prefix_reused"),
                    "final_reward": rollout.reward,
                    "rewards": rewards,
                    "task": rollout.task,
                }
        query.offset += len(page.items)
        if not page.items or query.offset >= page.total:
            return


def write_jsonl(rows: Iterator[dict[str, Any]], path: Path) -> int:
    n = 0
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
            n += 1
    return n


def write_parquet(rows: Iterator[dict[str, Any]], path: Path) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("writing Parquet needs pyarrow: pip install pyarrow (or export to .jsonl)") from None
    table_rows = [{**r, "rewards": json.dumps(r["rewards"]), "task": json.dumps(r["task"])} for r in rows]
    pq.write_table(pa.Table.from_pylist(table_rows), path)
    return len(table_rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="store URL (sqlite:///..., postgresql://..., http://...)")
    parser.add_argument("--out", required=True, type=Path, help="output file: .jsonl or .parquet")
    parser.add_argument("--mode", choices=[m.value for m in Mode], help="only rollouts of this mode")
    parser.add_argument(
        "--status",
        action="append",
        choices=[s.value for s in RolloutStatus],
        help="rollout statuses to include (repeatable; default: succeeded)",
    )


def main(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.suffix not in (".jsonl", ".parquet"):
        raise ConfigError(f"--out {str(out)!r} must end in .jsonl or .parquet")
    statuses = [RolloutStatus(s) for s in args.status] if args.status else None
    with connect(args.store, create=False) as store:  # a mistyped path must not become an empty store
        rows = iter_transitions(store, mode=Mode(args.mode) if args.mode else None, statuses=statuses)
        out.parent.mkdir(parents=True, exist_ok=True)
        n = write_jsonl(rows, out) if out.suffix == ".jsonl" else write_parquet(rows, out)
    print(f"wrote {n} transitions to {out}")
    return 0
