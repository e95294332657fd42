"""The ``vllm`` engine's supervision and weight hand-over, against a stand-in server on loopback.

A real vLLM cannot run in CI here (it is not in the CPU install, and its CPU build takes minutes to start
on 2 cores), so these tests start ``tests/fake_vllm_server.py`` — installed as
``vllm.entrypoints.openai.api_server`` on the server's ``PYTHONPATH`` — through the engine's real command
line, HTTP client, process supervision and worker extension (:mod:`tracerl.engines.vllm_worker` is loaded
into the fake worker). What only a real vLLM shows (its log-probs, its weight loading) is covered by
``test_vllm_gpu.py`` and the measured CPU run in docs/engines.md.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tracerl.engines.base import SamplingParams
from tracerl.engines.models import load_model
from tracerl.engines.vllm import VLLMEngine
from tracerl.errors import InvalidInput, ServerError

FAKE = Path(__file__).parents[1] / "fake_vllm_server.py"


@pytest.fixture
def fake_vllm(tmp_path: Path) -> Path:
    """A folder that makes ``python -m vllm.entrypoints.openai.api_server`` start the fake server."""
    root = tmp_path / "fakepkg"
    pkg = root / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for folder in (root / "vllm", root / "vllm" / "entrypoints", pkg):
        (folder / "__init__.py").write_text("")
    shutil.copy(FAKE, pkg / "api_server.py")
    return root


def start(fake_vllm: Path, model_dir: Path, tmp_path: Path, **options: Any) -> VLLMEngine:
    _, tokenizer = load_model(model_dir)
    env = {"PYTHONPATH": str(fake_vllm), "FAKE_VLLM_LOG": str(tmp_path / "requests.jsonl"), **options.pop("env", {})}
    return VLLMEngine(model_dir, tokenizer, "tiny-random", python=sys.executable, env=env,
                      work_dir=tmp_path / "work", ready_timeout_s=60, max_context=256, **options)  # fmt: skip


@pytest.fixture
def engine(fake_vllm: Path, tiny_model_dir: Path, tmp_path: Path) -> Iterator[VLLMEngine]:
    eng = start(fake_vllm, tiny_model_dir, tmp_path)
    yield eng
    asyncio.run(eng.aclose())


def requests(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]


GREEDY = SamplingParams(max_tokens=4, temperature=0.0)


def test_token_ids_in_and_out(engine: VLLMEngine, tmp_path: Path) -> None:
    [c] = asyncio.run(engine.generate([5, 6, 7], GREEDY))
    assert c.token_ids == [8, 9, 10, 11] and c.finish_reason == "length" and c.weights_version == 0
    assert c.logprobs == pytest.approx([-0.1, -0.2, -0.3, -0.4])
    sent = requests(tmp_path)[-1]["body"]
    assert sent["prompt"] == [5, 6, 7] and sent["model"] == "tiny-random"
    assert set(engine.stop_token_ids) <= set(sent["stop_token_ids"])  # eos / <|im_end|> end a turn on vLLM too


def test_n_seeded_completions_differ_and_repeat(engine: VLLMEngine) -> None:
    params = SamplingParams(max_tokens=6, temperature=1.0, n=3, seed=7)
    first = asyncio.run(engine.generate([5, 6], params))
    again = asyncio.run(engine.generate([5, 6], params))
    assert len({tuple(c.token_ids) for c in first}) == 3
    assert [c.token_ids for c in first] == [c.token_ids for c in again]


def test_stop_token_is_kept(engine: VLLMEngine) -> None:
    [c] = asyncio.run(engine.generate([5, 6, 7], SamplingParams(max_tokens=8, temperature=0.0, stop_token_ids=[10])))
    assert c.token_ids == [8, 9, 10] and c.finish_reason == "stop"


def test_refusals_before_and_from_the_server(engine: VLLMEngine) -> None:
    with pytest.raises(InvalidInput, match="not token ids"):
        asyncio.run(engine.generate([5, 10**6], GREEDY))
    with pytest.raises(InvalidInput, match="serves at most 256"):
        asyncio.run(engine.generate([5] * 300, GREEDY))
    with pytest.raises(InvalidInput, match="missing"):
        engine.load_weights({"model.embed_tokens.weight": None}, 1)


def test_rpc_weights_reach_the_worker_and_tag_completions(engine: VLLMEngine, tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:  # fmt: skip
    model, _ = load_model(tiny_model_dir)
    engine.load_weights(model.state_dict(), 1)
    [c] = asyncio.run(engine.generate([5, 6, 7], GREEDY))
    assert c.weights_version == 1 and c.token_ids == [9, 10, 11, 12]  # the fake model's output moved by one load
    paths = [r["path"] for r in requests(tmp_path)]
    assert paths[-3:] == ["/collective_rpc", "/reset_prefix_cache", "/v1/completions"]
    rpc = requests(tmp_path)[-3]["body"]
    assert rpc["method"] == "tracerl_load_weights" and Path(rpc["args"][0]).exists()
    assert engine.weights_version == 1 and engine.last_sync_s > 0


def test_restart_sync_serves_a_folder_with_the_new_weights(fake_vllm: Path, tiny_model_dir: Path,
                                                           tmp_path: Path) -> None:  # fmt: skip
    from safetensors.torch import load_file

    engine = start(fake_vllm, tiny_model_dir, tmp_path, weight_sync="restart")
    try:
        old_pid = engine.server.proc.pid if engine.server.proc else None
        model, _ = load_model(tiny_model_dir)
        state = {k: v + 1.0 for k, v in model.state_dict().items()}
        engine.load_weights(state, 3)
        [c] = asyncio.run(engine.generate([5], GREEDY))
        assert c.weights_version == 3
        assert engine.server.proc is not None and engine.server.proc.pid != old_pid
        served = load_file(str(tmp_path / "work" / "model-v3" / "model.safetensors"))
        key = "model.norm.weight"
        assert served[key].equal(state[key])
    finally:
        asyncio.run(engine.aclose())


def test_a_dead_server_is_restarted_with_the_latest_weights(fake_vllm: Path, tiny_model_dir: Path,
                                                            tmp_path: Path) -> None:  # fmt: skip
    engine = start(fake_vllm, tiny_model_dir, tmp_path, env={"FAKE_VLLM_CRASH_AFTER": "1"}, max_restarts=1)
    try:
        model, _ = load_model(tiny_model_dir)
        engine.load_weights(model.state_dict(), 1)
        asyncio.run(engine.generate([5], GREEDY))
        first_pid = engine.server.proc.pid if engine.server.proc else None
        [c] = asyncio.run(engine.generate([5, 6, 7], GREEDY))  # the server dies on this one, and comes back
        assert engine.server.proc is not None and engine.server.proc.pid != first_pid
        assert c.weights_version == 1 and c.token_ids == [9, 10, 11, 12]  # the new server got the weights again
        with pytest.raises(ServerError, match="did not answer"):  # dies again: max_restarts=1 is spent
            asyncio.run(engine.generate([5], GREEDY))
    finally:
        asyncio.run(engine.aclose())
    assert engine.server.proc is None


def test_a_swap_waits_for_requests_in_flight(fake_vllm: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """A completion started before load_weights finishes on the old weights; the swap waits for it, and a
    request sent during the swap is served by the new weights."""
    engine = start(fake_vllm, tiny_model_dir, tmp_path, env={"FAKE_VLLM_DELAY_S": "0.5"})
    model, _ = load_model(tiny_model_dir)
    state = model.state_dict()
    swapped_at: list[float] = []

    async def scenario() -> tuple[Any, Any, float]:
        early = asyncio.create_task(engine.generate([5], GREEDY))
        await asyncio.sleep(0.2)  # the early request is in flight now
        swap = threading.Thread(target=lambda: (engine.load_weights(state, 1), swapped_at.append(time.monotonic())))
        swap.start()
        await asyncio.sleep(0.05)
        late = await engine.generate([5], GREEDY)
        done_early = await early
        finished = time.monotonic()
        await asyncio.to_thread(swap.join)
        return done_early, late, finished

    try:
        early, late, _ = asyncio.run(scenario())
    finally:
        asyncio.run(engine.aclose())
    assert early[0].weights_version == 0 and late[0].weights_version == 1
    paths = [r["path"] for r in requests(tmp_path)]
    # the early completion, then the load, then the late completion: never a load while one is in flight
    assert paths == ["/v1/completions", "/collective_rpc", "/reset_prefix_cache", "/v1/completions"]


AGENT = '''
from openai import OpenAI
import tracerl


@tracerl.agent
def long_reply(task, llm):
    """Reward the length of the reply (the stand-in server samples random tokens: rewards vary in a group)."""
    client = OpenAI(base_url=llm.base_url, api_key=llm.api_key)
    reply = client.chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": task["question"]}], **llm.sampling
    )
    return min(1.0, len(reply.choices[0].message.content or "") / 40)
'''


def test_trainer_trains_through_the_vllm_engine(fake_vllm: Path, tiny_model_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The Trainer with EngineConfig(kind="vllm"): the gateway records the engine's ids and log-probs, each
    update's weights reach the server (collective_rpc), and the mismatch metrics are computed from them."""
    import os

    import tracerl
    from tracerl.config import EngineConfig

    (tmp_path / "vllm_agent.py").write_text(AGENT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake_vllm), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FAKE_VLLM_LOG", str(tmp_path / "requests.jsonl"))
    import vllm_agent  # type: ignore[import-not-found]

    trainer = tracerl.Trainer(
        agent=vllm_agent.long_reply, algorithm=tracerl.GRPO(str(tiny_model_dir), group_size=4, lr=1e-3, seed=0),
        runners=2, engine=EngineConfig(kind="vllm", vllm_python=sys.executable), run_dir=str(tmp_path / "run"),
        batch_size=2, max_steps=2, val_every=0, max_tokens=8, progress=False,
    )  # fmt: skip
    result = trainer.fit([{"question": f"q{i}"} for i in range(4)])
    assert result.steps == 2 and [h["weights_version"] for h in result.history] == [1, 2]
    assert all(h["mismatch_tokens"] > 0 for h in result.history)  # the fake's log-probs vs the learner's
    loads = [r for r in requests(tmp_path) if r["path"] == "/collective_rpc"]
    assert len(loads) == 2
    store = tracerl.connect(f"sqlite:///{tmp_path / 'run' / 'store.db'}")
    try:
        assert store.get_resource("resources").value["engine"]["kind"] == "vllm"
    finally:
        store.close()
