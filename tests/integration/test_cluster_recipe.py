"""The cluster recipe of docs/cluster.md on one machine: a Trainer that starts no runners
(``runners.n = 0``) and serves its gateway on a fixed port, and a separate ``tracerl runner --config FILE``
process that runs every rollout of the training step through that gateway."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import tracerl
from tracerl.config import EngineConfig, RunnerConfig
from tracerl.store import connect
from tracerl.tasks import toy
from tracerl.types import RolloutQuery

pytestmark = pytest.mark.timeout(180)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_trainer_without_runners_trains_on_rollouts_run_by_a_runner_process(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    port = _free_port()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = tmp_path / "runner.toml"
    config.write_text(f'[runner]\nagent = "tracerl.tasks.toy:digits_agent"\nstore = "{url}"\n'
                      f'gateway = "http://127.0.0.1:{port}"\nworkers = 2\nlease = 10\ngrace = 5\n')  # fmt: skip
    src = str(Path(tracerl.__file__).resolve().parents[1])
    log = tmp_path / "runner.log"
    runner = subprocess.Popen(
        [sys.executable, "-m", "tracerl", "runner", "--config", str(config)], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        result = tracerl.Trainer(
            agent=toy.digits_agent, algorithm=tracerl.GRPO(str(tiny_model_dir), group_size=2, lr=1e-3), store=url,
            runners=RunnerConfig(n=0), engine=EngineConfig(port=port), run_dir=str(tmp_path / "run"), batch_size=2,
            max_steps=1, val_every=0, max_tokens=4, progress=False, rollout_timeout_s=120,
        ).fit(toy.make_tasks("train", 4))  # fmt: skip
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=60)
    out = log.read_text()
    assert runner.returncode == 0, out[-3000:]
    assert result.steps == 1 and result.history[0]["generated_rollouts"] == 4, out[-3000:]
    assert result.history[0]["failed_rollouts"] == 0
    with connect(url) as store:
        rollouts = store.query_rollouts(RolloutQuery(limit=10)).items
        workers = {a.worker_id for r in rollouts for a in store.get_attempts(r.rollout_id)}
    assert workers == {f"{socket.gethostname()}-{runner.pid}"}, workers  # every rollout ran in that process
