"""The README's cluster recipe with a token: ``tracerl serve --token`` plus a ``tracerl runner`` (a real
process, token from ``TRACERL_TOKEN`` or ``--token``) runs rollouts end to end; every client reads the
variable; the token never shows in the runner's output."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tracerl
from tracerl.errors import ConfigError, Unauthorized
from tracerl.server.testing import ServerProcess, start_server
from tracerl.store.http import HttpStore
from tracerl.types import RolloutQuery, RolloutSpec, RolloutStatus

pytestmark = pytest.mark.timeout(180)

TOKEN = "s3cret-token-4711"
AGENT = f'''
def check(task, llm):
    """Reward 1 when the agent got the server's token as its gateway API key (the gateway sits behind it)."""
    return 1.0 if llm.api_key == {TOKEN!r} else 0.5
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with start_server(f"sqlite:///{tmp_path_factory.mktemp('token') / 'store.db'}", token=TOKEN) as s:
        yield s


def run_runner(app_dir: Path, url: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    """``tracerl runner`` from the agent's folder; stopped by SIGTERM once the queue drained (see below)."""
    src = str(Path(tracerl.__file__).resolve().parents[1])  # the tracerl under test, not an installed one
    cmd = [sys.executable, "-m", "tracerl", "runner", "--agent", "token_agent:check", "--store", url, "-n", "1",
           "--grace", "5", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=app_dir, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**env, "PYTHONPATH": src})  # fmt: skip
    store = HttpStore(url, token=TOKEN)
    try:
        ids = [r.rollout_id for r in store.query_rollouts(RolloutQuery(limit=100)).items]
        store.wait(ids, timeout_s=90)
    finally:
        proc.terminate()
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.parametrize("how", ["env", "flag"])
def test_runner_with_the_token_runs_rollouts_against_a_token_server(
    server: ServerProcess, tmp_path: Path, how: str
) -> None:
    (tmp_path / "token_agent.py").write_text(AGENT)
    store = HttpStore(server.url, token=TOKEN)
    [r] = store.enqueue([RolloutSpec(task={"q": how})])
    env = {k: v for k, v in os.environ.items() if k != "TRACERL_TOKEN"}
    if how == "env":
        done = run_runner(tmp_path, server.url, {**env, "TRACERL_TOKEN": TOKEN})
    else:
        done = run_runner(tmp_path, server.url, env, "--token", TOKEN)
    got = store.get_rollout(r.rollout_id)
    assert got.status is RolloutStatus.SUCCEEDED, (got, done.stderr[-3000:])
    assert got.reward == 1.0  # the agent's gateway API key defaulted to the token
    assert TOKEN not in done.stderr + done.stdout


def test_without_the_token_the_store_says_so(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRACERL_TOKEN", raising=False)
    with pytest.raises(Unauthorized, match="no bearer token"):
        HttpStore(server.url).get_rollout("ro-x")


def test_every_client_reads_the_token_from_the_environment(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACERL_TOKEN", TOKEN)
    for store in (HttpStore(server.url), tracerl.connect(server.url)):
        [r] = store.enqueue([RolloutSpec(task={"q": "env"})])
        assert store.get_rollout(r.rollout_id).rollout_id == r.rollout_id
        store.cancel(r.rollout_id)
        assert TOKEN not in repr(store)
    with pytest.raises(Unauthorized, match="wrong"):  # an explicit token wins over the variable
        HttpStore(server.url, token="other").get_rollout("ro-x")


def test_trainer_and_evaluate_take_the_token_as_an_argument(
    server: ServerProcess, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``TRACERL_TOKEN`` set, ``token=`` alone lets the Trainer and ``evaluate`` use a token server:
    the trainer's store and every runner worker send it."""
    from tracerl.tasks import toy

    monkeypatch.delenv("TRACERL_TOKEN", raising=False)
    tasks = toy.make_tasks("train", 4)
    with pytest.raises(Unauthorized):  # without the token the server refuses the trainer's store
        tracerl.Trainer(
            agent=toy.digits_agent, algorithm=tracerl.GRPO(str(tiny_model_dir), group_size=2, lr=1e-3),
            store=server.url, runners=1, run_dir=str(tmp_path / "no-token"), batch_size=2, max_steps=1,
            val_every=0, max_tokens=4, progress=False,
        ).fit(tasks)  # fmt: skip
    result = tracerl.Trainer(
        agent=toy.digits_agent, algorithm=tracerl.GRPO(str(tiny_model_dir), group_size=2, lr=1e-3),
        store=server.url, runners=2, run_dir=str(tmp_path / "run"), batch_size=2, max_steps=1,
        val_every=0, max_tokens=4, progress=False, token=TOKEN,
    ).fit(tasks)  # fmt: skip
    assert result.steps == 1 and result.history[0]["generated_rollouts"] == 4
    evaluated = tracerl.evaluate(toy.digits_agent, tasks[:2], model=str(tiny_model_dir), store=server.url,
                                 runners=1, max_tokens=4, token=TOKEN)  # fmt: skip
    assert len(evaluated) == 2 and all(r.status == "succeeded" for r in evaluated)


def test_a_token_for_a_store_that_takes_none_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a token is for http:// stores"):
        tracerl.connect(f"sqlite:///{tmp_path / 's.db'}", token=TOKEN)
