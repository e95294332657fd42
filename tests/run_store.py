"""What a finished training run left in its sqlite store, read the way the roles tests check it."""

from __future__ import annotations

from pathlib import Path

from tracerl.store import connect
from tracerl.types import RolloutQuery, SpanKind


def served_versions(run_dir: Path) -> tuple[int, dict[str, set[int]]]:
    """The number of rollouts of the run in ``run_dir`` and, for each model name that answered one of their llm
    calls, the weights versions it served."""
    store = connect(f"sqlite:///{run_dir / 'store.db'}")
    try:
        rollouts = store.query_rollouts(RolloutQuery(limit=1000)).items
        calls = [s for r in rollouts for s in store.get_spans(rollout_id=r.rollout_id) if s.kind is SpanKind.LLM_CALL]
    finally:
        store.close()
    versions: dict[str, set[int]] = {}
    for s in calls:
        versions.setdefault(s.attributes["model"], set()).add(s.attributes["weights_version"])
    return len(rollouts), versions
