"""Where a CUDA GPU exists: the learner trains on it and the engine follows it by default, so new weights
never cross devices; a short run learns as on the CPU. Skipped (by the ``gpu`` marker) on machines without
CUDA, such as this project's CI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tracerl
from tracerl.tasks import toy

pytestmark = pytest.mark.gpu


def test_engine_follows_the_learner_onto_the_gpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []

    def devices(record: dict[str, Any], algorithm: Any) -> None:
        weights = algorithm.engine_weights()
        seen.append((algorithm.device, str(next(iter(weights.values())).device)))

    trainer = tracerl.Trainer(
        agent=toy.digits_agent, algorithm=tracerl.GRPO(str(tiny_model_dir), group_size=8, lr=1e-3, seed=0),
        runners=4, run_dir=str(tmp_path / "run"), batch_size=2, max_steps=30, val_every=0, max_tokens=8,
        progress=False, callbacks=[devices],
    )
    result = trainer.fit(toy.make_tasks("train", 64))
    assert all(learner.startswith("cuda") and weights.startswith("cuda") for learner, weights in seen)
    store = tracerl.connect(f"sqlite:///{tmp_path / 'run' / 'store.db'}")
    try:
        assert store.get_resource("resources").value["engine"]["device"].startswith("cuda")
    finally:
        store.close()
    rewards = [h["reward_mean"] for h in result.history]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.3
