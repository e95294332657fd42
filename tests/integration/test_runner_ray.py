"""``tracerl runner --ray ADDRESS``: runner actors on a Ray cluster (a local head on loopback, started here)
run rollouts with per-actor concurrency; an actor killed mid-rollout is restarted by Ray while its rollouts
come back through lease expiry and succeed on a retry; SIGTERM stops the actors cleanly."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tracerl
from tracerl.store import connect
from tracerl.types import AttemptStatus, RolloutQuery, RolloutSpec, RolloutStatus

pytestmark = pytest.mark.timeout(240)
ray = pytest.importorskip("ray", reason="Ray runners need ray: pip install 'tracerl[ray]'")

AGENT = """
import time


def nap(task, llm):
    time.sleep(task["sleep"])
    return task["reward"]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray head on 127.0.0.1 with 4 CPUs in its own temp dir; stopped (its process group) afterwards."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="tray")  # short: Ray's unix socket paths must fit in 107 bytes
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address", "127.0.0.1",
           "--port", str(port), "--num-cpus", "4", "--include-dashboard", "false", "--temp-dir", temp,
           "--object-store-memory", str(100 * 2**20), "--disable-usage-stats", "--block",
           # Ray's fixed default (52365) can collide with a port it hands another component: pick free ones
           "--dashboard-agent-listen-port", str(_free_port()), "--metrics-export-port", str(_free_port())]  # fmt: skip
    head = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert head.poll() is None, (head.stdout.read() if head.stdout else b"").decode()[-3000:]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ray_runner_actors_run_retry_and_stop_cleanly(ray_head: str, tmp_path: Path) -> None:
    (tmp_path / "ray_agent.py").write_text(AGENT)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = connect(url)
    specs = [RolloutSpec(task={"sleep": 2.0, "reward": float(i % 2)}) for i in range(8)]
    ids = [r.rollout_id for r in store.enqueue(specs)]
    src = str(Path(tracerl.__file__).resolve().parents[1])
    cmd = [sys.executable, "-m", "tracerl", "runner", "--ray", ray_head, "--actors", "2", "-n", "2",
           "--agent", "ray_agent:nap", "--store", url, "--app-dir", str(tmp_path), "--lease", "5", "--grace", "10",
           "--actor-cpus", "1", "--prefetch", "0"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "runner.log"
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        # per-actor concurrency: 4 rollouts run at once, two on each actor
        deadline = time.monotonic() + 90
        running: list[str] = []
        while time.monotonic() < deadline and len(running) < 4:
            assert proc.poll() is None, log.read_text()[-3000:]
            running = [a.worker_id for rid in ids for a in store.get_attempts(rid) if a.status is AttemptStatus.RUNNING]
            time.sleep(0.1)
        assert len(running) == 4, (running, log.read_text()[-3000:])
        actors = {re.search(r"-(\d+)-a(\d)$", w).group(2) for w in running}  # type: ignore[union-attr]
        assert actors == {"0", "1"}
        # kill actor 0's process while it runs two rollouts (as a lost node would)
        pid0 = int(next(re.search(r"-(\d+)-a0$", w).group(1) for w in running if w.endswith("-a0")))  # type: ignore[union-attr]
        victims = [rid for rid in ids if any(a.status is AttemptStatus.RUNNING and a.worker_id.endswith(f"-{pid0}-a0")
                                             for a in store.get_attempts(rid))]  # fmt: skip
        os.kill(pid0, signal.SIGKILL)
        done = store.wait(ids, timeout_s=90)
        assert [r.status for r in done] == [RolloutStatus.SUCCEEDED] * 8, log.read_text()[-3000:]
        assert [r.reward for r in done] == [float(i % 2) for i in range(8)]
        assert len(victims) == 2
        for rid in victims:
            attempts = store.get_attempts(rid)
            assert attempts[0].status is AttemptStatus.UNRESPONSIVE and f"-{pid0}-" in attempts[0].worker_id
            assert attempts[-1].status is AttemptStatus.SUCCEEDED
        workers = {a.worker_id for rid in ids for a in store.get_attempts(rid)}
        pids = {int(re.search(r"-(\d+)-a\d$", w).group(1)) for w in workers}  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        store.close()
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"tracerl runner stopped: \d+ succeeded, 0 failed, 0 timed out", out), out[-3000:]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "a runner actor process outlived the shutdown"


def test_trainer_runs_its_rollouts_on_ray_actors(ray_head: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    """``Trainer(runners=RunnerConfig(n=2, ray=ADDRESS))``: a training step whose rollouts ran in a Ray actor."""
    from tracerl.config import RunnerConfig
    from tracerl.tasks import toy

    url = f"sqlite:///{tmp_path / 'store.db'}"
    result = tracerl.Trainer(
        agent=toy.digits_agent, algorithm=tracerl.GRPO(str(tiny_model_dir), group_size=2, lr=1e-3), store=url,
        runners=RunnerConfig(n=2, ray=ray_head), run_dir=str(tmp_path / "run"), batch_size=2, max_steps=1,
        val_every=0, max_tokens=4, progress=False,
    ).fit(toy.make_tasks("train", 4))  # fmt: skip
    assert result.steps == 1 and result.history[0]["generated_rollouts"] == 4
    assert result.history[0]["failed_rollouts"] == 0
    with connect(url) as store:
        ids = [r.rollout_id for r in store.query_rollouts(RolloutQuery(limit=10)).items]
        workers = {a.worker_id for rid in ids for a in store.get_attempts(rid)}
    assert workers and all(re.search(r"-\d+-a0$", w) for w in workers), workers
    assert not ray.is_initialized()  # the trainer disconnected from Ray when the run ended
