"""Runners against real stores (memory, sqlite file) with agents running in real worker processes.

The agents live in a module written to a temporary directory, imported by the worker processes by
``module:function`` exactly as a user's agent would be. None of these agents calls an LLM (see
``test_runner_gateway.py`` for the end-to-end path through the gateway).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tracerl
from postgres_schemas import fresh_schema
from tracerl.errors import ConfigError
from tracerl.runner import Runner, start_runners
from tracerl.store.base import Store
from tracerl.types import AttemptStatus, Mode, RolloutSpec, RolloutStatus, SpanKind

AGENTS = """
import asyncio
import os
import threading
import time

import tracerl
from tracerl import emit_error, emit_message, emit_reward


@tracerl.agent
def scored(task, llm):
    return task["score"]


@tracerl.agent
def stepwise(task, llm):
    for i, r in enumerate(task["steps"]):
        emit_reward(r, name=f"step{i}")
    emit_message("done", n=len(task["steps"]))
    return sum(task["steps"])


@tracerl.agent
async def async_agent(task, llm):
    async def part(i):
        await asyncio.sleep(0.01 * (3 - i))
        emit_message("part", i=i)

    await asyncio.gather(*(part(i) for i in range(3)))
    return 0.5


def threaded(task, llm):
    t = threading.Thread(target=emit_reward, args=(0.25,), kwargs={"name": "from_thread"})
    t.start()
    t.join()
    return None


def emits_final(task, llm):
    emit_reward(0.9, name="final")


def hangs_first(task, llm):
    # hangs on every attempt but the one named in the task
    marker = task["dir"] + "/attempts"
    with open(marker, "a") as f:
        f.write("x")
    if len(open(marker).read()) < task.get("succeed_on", 10**9):
        time.sleep(600)
    return 1.0


def chatty(task, llm):
    while True:
        emit_message("again")


def crashes(task, llm):
    emit_error("about to fail")
    raise ValueError(f"no answer for {task['q']!r}")


def exits_hard(task, llm):
    if task["die"]:
        os._exit(7)
    return 1.0


def returns_text(task, llm):
    return "great"


def tagged(task, llm):
    # two of these run at once; every span must land on its own rollout
    for i in range(20):
        emit_message("tick", tag=task["tag"], i=i)
        time.sleep(0.005)
    emit_reward(1.0, name="tagged")
    return float(task["tag"])


def describes_llm(task, llm):
    emit_message(
        "llm",
        base_url=llm.base_url,
        model=llm.model,
        sampling=llm.sampling,
        mode=llm.mode,
        resources=llm.resources,
        version=llm.resources_version,
        pid=os.getpid(),
    )
    return 1.0
"""


@pytest.fixture
def agents_dir(agent_module: Callable[[str, str], Path]) -> Path:
    return agent_module("runner_test_agents", AGENTS)


@pytest.fixture(params=["memory", "sqlite"])
def store_and_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Store | str]]:
    """The store the test reads, and what the runner is given (the object for memory, a URL for sqlite)."""
    if request.param == "memory":
        store = tracerl.connect("memory://")
        yield store, store
    else:
        url = f"sqlite:///{tmp_path}/runner.db"
        store = tracerl.connect(url)
        yield store, url
        store.close()


def run_one(
    store: Store, target: Store | str, agent: str, task: dict, *, max_attempts: int = 1, **options: object
) -> str:
    """Run one rollout of ``agent`` to its end with a fresh runner; returns its id."""
    [r] = store.enqueue([RolloutSpec(task=task, max_attempts=max_attempts)])
    with Runner(agent, target, "http://127.0.0.1:9", claim_wait_s=0.1, **options):  # type: ignore[arg-type]
        [done] = store.wait([r.rollout_id], timeout_s=60)
    assert done.status.is_final
    return r.rollout_id


def test_returned_reward_is_recorded(agents_dir: Path, store_and_target: tuple[Store, Store | str]) -> None:
    store, target = store_and_target
    rid = run_one(store, target, "runner_test_agents:scored", {"score": 0.75})
    r = store.get_rollout(rid)
    assert r.status is RolloutStatus.SUCCEEDED and r.reward == 0.75
    [final] = store.get_spans(rollout_id=rid)
    assert (final.kind, final.name, final.attributes) == (SpanKind.REWARD, "final", {"value": 0.75})


def test_intermediate_rewards_are_recorded_in_order(
    agents_dir: Path, store_and_target: tuple[Store, Store | str]
) -> None:
    store, target = store_and_target
    rid = run_one(store, target, "runner_test_agents:stepwise", {"steps": [0.1, 0.2, 0.3]})
    spans = store.get_spans(rollout_id=rid)
    assert [(s.kind.value, s.name) for s in spans] == [
        ("reward", "step0"),
        ("reward", "step1"),
        ("reward", "step2"),
        ("message", "message"),
        ("reward", "final"),
    ]
    rewards = [s.attributes["value"] for s in spans if s.kind is SpanKind.REWARD]
    assert rewards == pytest.approx([0.1, 0.2, 0.3, 0.6])
    assert store.get_rollout(rid).reward == pytest.approx(0.6)


def test_async_agent_and_its_tasks_are_traced(agents_dir: Path, store_and_target: tuple[Store, Store | str]) -> None:
    store, target = store_and_target
    rid = run_one(store, target, "runner_test_agents:async_agent", {})
    spans = store.get_spans(rollout_id=rid)
    assert sorted(s.attributes["i"] for s in spans if s.kind is SpanKind.MESSAGE) == [0, 1, 2]
    assert [s.attributes["i"] for s in spans if s.kind is SpanKind.MESSAGE] == [2, 1, 0]  # emitted in that order
    assert store.get_rollout(rid).reward == 0.5


def test_plain_threads_and_final_reward_emitted_instead_of_returned(
    agents_dir: Path, store_and_target: tuple[Store, Store | str]
) -> None:
    store, target = store_and_target
    rid = run_one(store, target, "runner_test_agents:threaded", {})
    [span] = store.get_spans(rollout_id=rid)
    assert (span.name, span.attributes) == ("from_thread", {"value": 0.25})
    r = store.get_rollout(rid)
    assert r.status is RolloutStatus.SUCCEEDED and r.reward is None  # intermediate rewards are not final
    rid = run_one(store, target, "runner_test_agents:emits_final", {})
    assert store.get_rollout(rid).reward == 0.9


def test_crashing_agent_records_the_exception_and_fails(
    agents_dir: Path, store_and_target: tuple[Store, Store | str]
) -> None:
    store, target = store_and_target
    rid = run_one(store, target, "runner_test_agents:crashes", {"q": "2+2"}, max_attempts=2)
    r = store.get_rollout(rid)
    assert r.status is RolloutStatus.FAILED and r.error == "ValueError: no answer for '2+2'"
    attempts = store.get_attempts(rid)
    assert [a.status for a in attempts] == [AttemptStatus.FAILED, AttemptStatus.FAILED]
    spans = store.get_spans(attempt_id=attempts[0].attempt_id)
    assert [s.name for s in spans] == ["error", "ValueError"]  # the handled one, then the one that escaped
    assert spans[1].attributes["message"] == "no answer for '2+2'"
    assert "in crashes" in spans[1].attributes["traceback"]


def test_hung_agent_is_killed_at_its_timeout_retried_then_failed(
    agents_dir: Path, store_and_target: tuple[Store, Store | str]
) -> None:
    store, target = store_and_target
    task = {"dir": str(agents_dir)}
    rid = run_one(store, target, "runner_test_agents:hangs_first", task, max_attempts=2, timeout_s=0.5)
    r = store.get_rollout(rid)
    assert r.status is RolloutStatus.FAILED and "timeout" in (r.error or "")
    attempts = store.get_attempts(rid)
    assert [a.status for a in attempts] == [AttemptStatus.TIMEOUT, AttemptStatus.TIMEOUT]
    for a in attempts:
        [span] = store.get_spans(attempt_id=a.attempt_id)
        assert span.kind is SpanKind.ERROR and span.name == "timeout"
    assert (agents_dir / "attempts").read_text() == "xx"


def test_agent_emitting_without_pause_still_times_out(agents_dir: Path) -> None:
    store = tracerl.connect("memory://")
    rid = run_one(store, store, "runner_test_agents:chatty", {}, timeout_s=0.5)
    [attempt] = store.get_attempts(rid)
    assert attempt.status is AttemptStatus.TIMEOUT
    spans = store.get_spans(rollout_id=rid)
    assert len(spans) > 10 and spans[-1].name == "timeout"  # what it emitted was kept, the timeout comes last


def test_timed_out_attempt_is_retried_and_can_succeed(
    agents_dir: Path, store_and_target: tuple[Store, Store | str]
) -> None:
    store, target = store_and_target
    task = {"dir": str(agents_dir), "succeed_on": 2}
    rid = run_one(store, target, "runner_test_agents:hangs_first", task, max_attempts=3, timeout_s=0.5)
    r = store.get_rollout(rid)
    assert r.status is RolloutStatus.SUCCEEDED and r.reward == 1.0
    assert [a.status for a in store.get_attempts(rid)] == [AttemptStatus.TIMEOUT, AttemptStatus.SUCCEEDED]


def test_worker_process_that_dies_fails_the_attempt_and_is_replaced(
    agents_dir: Path, store_and_target: tuple[Store, Store | str]
) -> None:
    store, target = store_and_target
    dies, ok = store.enqueue([RolloutSpec(task={"die": True}, max_attempts=1), RolloutSpec(task={"die": False})])
    with Runner("runner_test_agents:exits_hard", target, claim_wait_s=0.1):
        [r, r_ok] = store.wait([dies.rollout_id, ok.rollout_id], timeout_s=60)
    assert r.status is RolloutStatus.FAILED and "code 7" in (r.error or "")
    [span] = store.get_spans(rollout_id=dies.rollout_id)
    assert span.name == "worker_died"
    assert r_ok.status is RolloutStatus.SUCCEEDED and r_ok.reward == 1.0  # a new worker process took over


def test_non_number_return_fails_the_attempt(agents_dir: Path, store_and_target: tuple[Store, Store | str]) -> None:
    store, target = store_and_target
    rid = run_one(store, target, "runner_test_agents:returns_text", {})
    r = store.get_rollout(rid)
    assert r.status is RolloutStatus.FAILED
    assert "return value (its reward) must be a finite number, got 'great'" in (r.error or "")


def test_concurrent_rollouts_never_mix_spans(agents_dir: Path, store_and_target: tuple[Store, Store | str]) -> None:
    store, target = store_and_target
    rollouts = store.enqueue([RolloutSpec(task={"tag": i}) for i in range(6)])
    with start_runners("runner_test_agents:tagged", target, n_workers=2, claim_wait_s=0.1) as runner:
        done = store.wait([r.rollout_id for r in rollouts], timeout_s=60)
        assert len(done) == 6
    assert runner.stats.succeeded == 6
    workers = {a.worker_id for r in rollouts for a in store.get_attempts(r.rollout_id)}
    assert len(workers) == 1  # claimed by the runner (in batches) for its workers
    for i, r in enumerate(rollouts):
        spans = store.get_spans(rollout_id=r.rollout_id)
        ticks = [s for s in spans if s.kind is SpanKind.MESSAGE]
        assert {s.attributes["tag"] for s in ticks} == {i}
        assert [s.attributes["i"] for s in ticks] == list(range(20))
        assert store.get_rollout(r.rollout_id).reward == float(i)


def test_llm_handle_carries_gateway_url_model_sampling_and_resources(
    agents_dir: Path, store_and_target: tuple[Store, Store | str]
) -> None:
    store, target = store_and_target
    store.put_resource("resources", {"model": "tiny-v1", "prompt_template": "Q: {q}"})
    store.put_resource(
        "resources", {"model": "tiny-v2", "prompt_template": "Question: {q}", "sampling": {"top_p": 0.9}}
    )
    train, val = store.enqueue(
        [RolloutSpec(task={}, mode=Mode.TRAIN), RolloutSpec(task={}, mode=Mode.VAL, resources_version=1)]
    )
    options = {"model": "fallback", "sampling": {"temperature": 0.8, "max_tokens": 32}, "claim_wait_s": 0.1}
    with Runner("runner_test_agents:describes_llm", target, "http://127.0.0.1:8123", **options):  # type: ignore[arg-type]
        store.wait([train.rollout_id, val.rollout_id], timeout_s=60)
    [t_msg, _] = store.get_spans(rollout_id=train.rollout_id)
    [t_attempt] = store.get_attempts(train.rollout_id)
    assert t_msg.attributes["base_url"] == f"http://127.0.0.1:8123/r/{train.rollout_id}/{t_attempt.attempt_id}/v1"
    assert t_msg.attributes["model"] == "tiny-v2"  # the latest resources bundle wins over the runner's default
    assert t_msg.attributes["sampling"] == {"temperature": 0.8, "top_p": 0.9, "max_tokens": 32}
    assert (t_msg.attributes["mode"], t_msg.attributes["version"]) == ("train", 2)
    assert t_msg.attributes["resources"]["prompt_template"] == "Question: {q}"
    [v_msg, _] = store.get_spans(rollout_id=val.rollout_id)
    assert (v_msg.attributes["model"], v_msg.attributes["version"]) == ("tiny-v1", 1)  # pinned version
    assert v_msg.attributes["sampling"]["temperature"] == 0.0  # evaluation decodes greedily


def test_worker_process_is_reused_across_rollouts(agents_dir: Path) -> None:
    store = tracerl.connect("memory://")
    rollouts = store.enqueue([RolloutSpec(task={}) for _ in range(5)])
    with Runner("runner_test_agents:describes_llm", store, "http://h:1", claim_wait_s=0.1):
        store.wait([r.rollout_id for r in rollouts], timeout_s=60)
    pids = {store.get_spans(rollout_id=r.rollout_id)[0].attributes["pid"] for r in rollouts}
    assert len(pids) == 1


def test_bad_agent_reference_fails_at_start(agents_dir: Path) -> None:
    store = tracerl.connect("memory://")
    with pytest.raises(ConfigError, match="cannot load agent runner_test_agents:no_such_agent"):
        Runner("runner_test_agents:no_such_agent", store).start()
    with pytest.raises(ConfigError, match=r"cannot load agent not_a_module_abc:fn.*No module named"):
        Runner("not_a_module_abc:fn", store).start()
    with pytest.raises(ConfigError, match="n_workers must be an integer"):
        Runner("runner_test_agents:scored", store, n_workers=0)
    with pytest.raises(ConfigError, match="must start with http"):
        Runner("runner_test_agents:scored", store, "localhost:8000")


def test_agent_defined_in_the_script_being_run(tmp_path: Path) -> None:
    script = tmp_path / "train_script.py"
    script.write_text(
        textwrap.dedent(
            """
            import tracerl
            from tracerl.runner import start_runners
            from tracerl.types import RolloutSpec

            @tracerl.agent
            def local_agent(task, llm):
                return task["x"] * 2

            if __name__ == "__main__":  # the worker process loads this file without running this block
                store = tracerl.connect("memory://")
                [r] = store.enqueue([RolloutSpec(task={"x": 0.25})])
                with start_runners(local_agent, store, claim_wait_s=0.1):
                    [done] = store.wait([r.rollout_id], timeout_s=60)
                print("REWARD", done.reward)
            """
        )
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "REWARD 0.5" in out.stdout




@pytest.fixture(params=["postgres", "http"])
def shared_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL other processes can reach: a fresh postgres schema, or a real ``tracerl serve``."""
    if request.param == "postgres":
        with fresh_schema("tracerl_runner") as (url, _):
            yield url
    else:
        from tracerl.server.testing import start_server

        with start_server(f"sqlite:///{tmp_path / 'served.db'}") as server:
            yield server.url


def test_runner_against_postgres_and_http_stores(agents_dir: Path, shared_store_url: str) -> None:
    store = tracerl.connect(shared_store_url)
    try:
        rollouts = store.enqueue([RolloutSpec(task={"tag": i}) for i in range(4)])
        with start_runners("runner_test_agents:tagged", shared_store_url, n_workers=2, claim_wait_s=0.2):
            done = store.wait([r.rollout_id for r in rollouts], timeout_s=120)
        assert [r.reward for r in done] == [0.0, 1.0, 2.0, 3.0]
        for i, r in enumerate(rollouts):
            ticks = [s for s in store.get_spans(rollout_id=r.rollout_id) if s.kind is SpanKind.MESSAGE]
            assert [(s.attributes["tag"], s.attributes["i"]) for s in ticks] == [(i, k) for k in range(20)]
        rid = run_one(store, shared_store_url, "runner_test_agents:crashes", {"q": "x"})
        assert store.get_rollout(rid).error == "ValueError: no answer for 'x'"
    finally:
        store.close()


def test_cancelled_rollout_is_abandoned_and_the_worker_moves_on(agents_dir: Path, tmp_path: Path) -> None:
    store = tracerl.connect("memory://")
    (tmp_path / "other").mkdir()
    [hung] = store.enqueue([RolloutSpec(task={"dir": str(agents_dir)})])
    with Runner("runner_test_agents:hangs_first", store, lease_s=0.6, claim_wait_s=0.1) as runner:
        while not (agents_dir / "attempts").exists():  # the agent has started
            time.sleep(0.01)
        store.cancel(hung.rollout_id)
        [quick] = store.enqueue([RolloutSpec(task={"dir": str(tmp_path / "other"), "succeed_on": 1})])
        [done] = store.wait([quick.rollout_id], timeout_s=60)
    assert done.status is RolloutStatus.SUCCEEDED
    assert store.get_rollout(hung.rollout_id).status is RolloutStatus.CANCELLED
    assert runner.stats.lost == 1 and runner.stats.succeeded == 1


def test_a_heartbeat_held_up_past_the_lease_loses_the_attempt_and_the_log_says_where_the_time_went(
    agents_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # another connection holds sqlite's write lock for longer than the lease, while the agent runs: the
    # worker's heartbeat waits for it (busy_timeout), lands too late, and the attempt is lost and retried
    db = tmp_path / "lease.db"
    store = tracerl.connect(f"sqlite:///{db}")
    [r] = store.enqueue([RolloutSpec(task={"dir": str(tmp_path), "succeed_on": 2}, max_attempts=2)])
    with (
        caplog.at_level(logging.WARNING, logger="tracerl.runner.worker"),
        Runner("runner_test_agents:hangs_first", f"sqlite:///{db}", lease_s=1.5, claim_wait_s=0.1) as runner,
    ):
        while not (tmp_path / "attempts").exists():  # the first attempt's agent has started
            time.sleep(0.01)
        other = sqlite3.connect(db, timeout=30, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        time.sleep(2.5)
        other.execute("COMMIT")
        other.close()
        [done] = store.wait([r.rollout_id], timeout_s=60)
    assert done.status is RolloutStatus.SUCCEEDED and done.attempts == 2
    assert runner.stats.lost == 1
    [lost] = [m for m in caplog.messages if "lost while running" in m]
    assert "past the 1.5 s lease" in lost, lost
    took = re.search(r"the store call took ([0-9.]+) s", lost)
    assert took is not None and float(took.group(1)) >= 1.0, lost  # the wait was in the store, not the worker
    store.close()


def test_runner_code_never_imports_torch() -> None:
    code = (
        "import sys, tracerl.runner, tracerl.runner.cli, tracerl.runner.child, tracerl.tracing; "
        "heavy = [m for m in ('torch', 'transformers', 'fastapi') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


SLOW_RESTART = """
import os
import time

_here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_here, "imports"), "a") as f:
    f.write("x")
if len(open(os.path.join(_here, "imports")).read()) > 1:  # every start after the first is slow
    time.sleep(3.0)
with open(os.path.join(_here, "ready_at"), "a") as f:
    f.write(f"{time.time()}\\n")


def dies_or_scores(task, llm):
    if task["die"]:
        os._exit(7)
    return 1.0
"""


def test_worker_claims_only_once_its_replacement_process_is_ready(agent_module: Callable[[str, str], Path]) -> None:
    """A worker process that died is replaced; the next rollout is claimed only when the new one is ready, so
    a 1 s lease never runs out while the agent (3 s to import) starts."""
    folder = agent_module("slow_restart_agent", SLOW_RESTART)
    store = tracerl.connect("memory://")
    dies, ok = store.enqueue([RolloutSpec(task={"die": True}, max_attempts=1), RolloutSpec(task={"die": False})])
    # prefetch=0: the subject is when a worker claims for itself (held claims are test_runner_prefetch.py's)
    with Runner("slow_restart_agent:dies_or_scores", store, lease_s=1.0, claim_wait_s=0.1, prefetch=0):
        [r_dies, r_ok] = store.wait([dies.rollout_id, ok.rollout_id], timeout_s=60)
    assert r_dies.status is RolloutStatus.FAILED
    assert r_ok.status is RolloutStatus.SUCCEEDED and r_ok.reward == 1.0, store.get_attempts(ok.rollout_id)
    attempts = store.get_attempts(ok.rollout_id)
    assert [a.status for a in attempts] == [AttemptStatus.SUCCEEDED]  # no lease ran out while the agent started
    replacement_ready_at = float((folder / "ready_at").read_text().split()[-1])
    assert attempts[0].started_at >= replacement_ready_at  # claimed after the new worker process was ready


BROKEN_RESTART = """
import os

_here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_here, "imports"), "a") as f:
    f.write("x")
if len(open(os.path.join(_here, "imports")).read()) > 1:
    raise ImportError("this module broke after the first start")


def dies(task, llm):
    os._exit(7)
"""


def test_worker_whose_process_cannot_restart_stops_without_claiming(agent_module: Callable[[str, str], Path]) -> None:
    """Replacements that fail to start are retried, then the worker ends with the error — rather than claiming
    rollouts only to fail them."""
    folder = agent_module("broken_restart_agent", BROKEN_RESTART)
    store = tracerl.connect("memory://")
    first, second = store.enqueue([RolloutSpec(task={}, max_attempts=1), RolloutSpec(task={})])
    runner = Runner("broken_restart_agent:dies", store, claim_wait_s=0.1).start()
    try:
        assert runner.wait(timeout_s=60), "the worker should have given up"
    finally:
        runner.stop()
    [error] = runner.errors
    assert isinstance(error, ConfigError) and "broke after the first start" in str(error)
    assert store.get_rollout(first.rollout_id).status is RolloutStatus.FAILED
    assert store.get_rollout(second.rollout_id).status is RolloutStatus.QUEUED  # left for a healthy runner
    assert (folder / "imports").read_text() == "xxxx"  # the first start, then three tries


HANGS_UP = """
import os
import sys
import time

os.close(int(sys.argv[1]))  # the socket to the runner: hang up without exiting
time.sleep(60)


def never_runs(task, llm):
    return 1.0
"""


def test_worker_that_hangs_up_without_exiting_is_killed_with_a_clear_error(
    tmp_path: Path, agent_module: Callable[[str, str], Path]
) -> None:
    agent_module("hangs_up_agent", HANGS_UP)
    runner = Runner("hangs_up_agent:never_runs", tracerl.connect("memory://"))
    with pytest.raises(ConfigError, match="closed its connection but had not exited 5s later, so it was killed"):
        runner.start()
