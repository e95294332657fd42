"""``tracerl runner`` as a real process: an agent module from a temporary directory, SIGTERM handling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tracerl
from tracerl.store.base import Store
from tracerl.types import AttemptStatus, RolloutSpec, RolloutStatus

AGENT = '''
import time
from pathlib import Path


def slow(task, llm):
    """Runs until the test creates the file ``release``."""
    d = Path(task["dir"])
    (d / ("started-" + task["name"])).touch()
    while not (d / "release").exists():
        time.sleep(0.02)
    return 1.0
'''


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[Path, str, Store]]:
    (tmp_path / "cli_agent.py").write_text(AGENT)
    url = f"sqlite:///{tmp_path}/cli.db"
    store = tracerl.connect(url)
    yield tmp_path, url, store
    store.close()


def start_cli(app_dir: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "tracerl", "runner", "--agent", "cli_agent:slow", "--store", url, "-n", "1", *extra]
    # run from the agent's directory, as a user would: the module is found in the working directory
    return subprocess.Popen(cmd, cwd=app_dir, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ""})


def wait_for(path: Path, proc: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"runner exited early: {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.02)


def read_until(proc: subprocess.Popen[str], text: str) -> str:
    assert proc.stderr is not None
    seen = ""
    for line in proc.stderr:
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"runner output ended without {text!r}:\n{seen}")


def test_sigterm_lets_the_running_rollout_finish_and_claims_no_more(app: tuple[Path, str, Store]) -> None:
    tmp, url, store = app
    first, second = store.enqueue(
        [RolloutSpec(task={"dir": str(tmp), "name": "a"}), RolloutSpec(task={"dir": str(tmp), "name": "b"})]
    )
    proc = start_cli(tmp, url)
    try:
        wait_for(tmp / "started-a", proc)
        proc.send_signal(signal.SIGTERM)
        read_until(proc, "stopping; no new claims")
        (tmp / "release").touch()
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    out = proc.stderr.read() if proc.stderr else ""
    assert "1 succeeded" in out
    done = store.get_rollout(first.rollout_id)
    assert done.status is RolloutStatus.SUCCEEDED and done.reward == 1.0
    untouched = store.get_rollout(second.rollout_id)
    assert untouched.status is RolloutStatus.QUEUED and untouched.attempts == 0
    assert not (tmp / "started-b").exists()


def test_sigterm_requeues_rollouts_still_running_after_the_grace_period(app: tuple[Path, str, Store]) -> None:
    tmp, url, store = app
    [r] = store.enqueue([RolloutSpec(task={"dir": str(tmp), "name": "a"}, max_attempts=3)])
    proc = start_cli(tmp, url, "--grace", "0.3")
    try:
        wait_for(tmp / "started-a", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    requeued = store.get_rollout(r.rollout_id)
    assert requeued.status is RolloutStatus.QUEUED and requeued.attempts == 1
    [attempt] = store.get_attempts(r.rollout_id)
    assert attempt.status is AttemptStatus.FAILED
    [span] = store.get_spans(attempt_id=attempt.attempt_id)
    assert span.name == "runner_stopped" and "grace period" in span.attributes["message"]


def test_cli_reports_an_agent_it_cannot_import(app: tuple[Path, str, Store]) -> None:
    tmp, url, _ = app
    cmd = [sys.executable, "-m", "tracerl", "runner", "--agent", "cli_agent:missing", "--store", url]
    done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot load agent cli_agent:missing" in done.stderr
