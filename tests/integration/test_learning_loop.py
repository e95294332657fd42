"""The whole learning loop on CPU: store → runner processes → gateway → credit → GRPO → new weights served.

The tiny random model learns the toy task of :mod:`tracerl.tasks.toy` (reply with digits only; reward = the
digit share of the reply) through ``tracerl.Trainer`` exactly as a user would run it: an agent written with
the plain ``openai`` client in 4 runner processes, a sqlite store in the run folder, the gateway and the hf
engine in-process. The sampled reward starts near 0 (≈ 10 digit tokens out of 1,024) and ends near 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import tracerl
from tracerl.store import connect
from tracerl.tasks import toy
from tracerl.types import Mode, RolloutQuery, SpanKind


def test_tiny_model_learns_the_toy_task_through_the_full_path(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    trainer = tracerl.Trainer(
        agent=toy.digits_agent,
        algorithm=tracerl.GRPO(model=str(tiny_model_dir), group_size=8, lr=1e-3, seed=0),
        runners=4,
        run_dir=str(run_dir),
        batch_size=2,
        epochs=2,
        max_steps=40,
        val_every=20,
        max_tokens=8,
        seed=0,
        progress=False,
    )
    result = trainer.fit(toy.make_tasks("train", 64), val_tasks=toy.make_tasks("val", 16))

    assert result.steps == 40 and result.stopped_by == "max_steps"
    rewards = [h["reward_mean"] for h in result.history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.1, f"the random model should start near 0, got {rewards[:5]}"
    assert last > 0.8, f"sampled reward should end near 1, got {rewards[-5:]} (whole curve {rewards})"
    assert result.val_before is not None and result.val_before < 0.2
    assert result.val_after is not None and result.val_after > 0.8

    # what a user finds in the run folder
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 41))
    assert [r["step"] for r in records if r["kind"] == "val"] == [0, 20, 40]
    assert all(r["rollout_s"] > 0 and r["tokens_per_s"] > 0 for r in records if r["kind"] == "train")
    assert result.plot_path.stat().st_size > 10_000
    assert (run_dir / "final" / "config.json").exists()
    reloaded = tracerl.evaluate(toy.digits_agent, toy.make_tasks("val", 4), model=str(run_dir / "final"), runners=1)
    assert reloaded.mean_reward > 0.8  # the saved weights are the trained ones

    # every step's calls were sampled by the weights of the previous update, and the store says so
    store = connect(f"sqlite:///{run_dir / 'store.db'}")
    try:
        train = store.query_rollouts(RolloutQuery(mode=Mode.TRAIN, limit=10_000)).items
        assert len(train) == 40 * 2 * 8 and all(r.status.value == "succeeded" for r in train)
        versions = []
        for r in train:
            calls = [s for s in store.get_spans(rollout_id=r.rollout_id) if s.kind is SpanKind.LLM_CALL]
            [call] = calls
            assert call.response_ids and len(call.logprobs or []) == len(call.response_ids)
            served = call.attributes["weights_version"]
            published = store.get_resource("resources", r.resources_version).value["weights_version"]
            assert served == published  # the rollout ran with the weights its resources version names
            versions.append(served)
        assert versions == sorted(versions) and versions[-1] >= 30  # new weights were served as training went
    finally:
        store.close()
