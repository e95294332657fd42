"""GRPO through a real vLLM server on a GPU: two training steps on the tiny model, the new weights loaded
into the running server after each (``collective_rpc``), and the sampler/learner log-prob gap reported.
Skipped without CUDA (``gpu`` marker) or without vLLM installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

import tracerl
from tracerl.config import EngineConfig
from tracerl.tasks import toy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM (pip install vllm)"),
]


def test_two_grpo_steps_with_the_vllm_engine(tiny_model_dir: Path, tmp_path: Path) -> None:
    versions: list[int] = []

    def served(record: dict[str, Any], algorithm: Any) -> None:
        versions.append(record["weights_version"])

    engine = EngineConfig(kind="vllm", dtype="float32", max_batch_size=16,
                          vllm_args=["--gpu-memory-utilization", "0.2", "--enforce-eager"])  # fmt: skip
    trainer = tracerl.Trainer(
        agent=toy.digits_agent, algorithm=tracerl.GRPO(str(tiny_model_dir), group_size=4, lr=1e-3, seed=0),
        runners=4, engine=engine, run_dir=str(tmp_path / "run"), batch_size=2, max_steps=2, val_every=0,
        max_tokens=8, progress=False, callbacks=[served],
    )  # fmt: skip
    result = trainer.fit(toy.make_tasks("train", 8))
    assert result.steps == 2 and versions == [1, 2]
    for record in result.history:
        assert record["mismatch_tokens"] > 0
        assert record["mismatch_mean_abs"] < 0.01  # fp32 on both sides: the raw log-probs agree closely
    store = tracerl.connect(f"sqlite:///{tmp_path / 'run' / 'store.db'}")
    try:
        assert store.get_resource("resources").value["engine"]["kind"] == "vllm"
    finally:
        store.close()
