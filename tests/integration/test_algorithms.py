"""The Trainer drives any algorithm through the protocol: a minimal one written here, SFT whose tokens are
the gateway's, SFT → GRPO stages with resume, and dynamic sampling. All with the tiny model, real runners,
the real gateway and a sqlite store."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest

import tracerl
from tracerl.algorithms.base import StepResult
from tracerl.algorithms.sft_data import examples_from_transcripts
from tracerl.engines.models import load_model
from tracerl.errors import ConfigError
from tracerl.gateway import start_gateway
from tracerl.store import connect
from tracerl.store.base import Store
from tracerl.tasks import toy
from tracerl.types import RolloutQuery, RolloutSpec, SpanKind


class Batch:
    def __init__(self, rewards: list[float], groups: int) -> None:
        self.rewards, self.groups, self.informative_groups = rewards, groups, groups
        self.rollouts, self.response_tokens = len(rewards), 0

    def metrics(self) -> dict[str, float]:
        return {"best_reward": max(self.rewards)}


class BestReward:
    """A minimal algorithm: it trains nothing and publishes the best reward seen as a resource."""

    name = "best-reward"

    def __init__(self, model: str) -> None:
        self.model, self.group_size, self.seed, self.device, self.weights_version = model, 2, 0, "cpu", 0
        self.calls: list[str] = []
        self.best = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name}

    def setup(self, model: Any, tokenizer: Any) -> None:
        self.calls.append("setup")

    def items(self, train_tasks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        self.calls.append("items")
        return list(train_tasks)

    def make_batch(self, store: Store, items: Sequence[dict[str, Any]], rollout_ids: Sequence[str]) -> Batch:
        self.calls.append(f"make_batch:{len(items)}:{len(rollout_ids)}")
        rollouts = store.query_rollouts(RolloutQuery(rollout_ids=list(rollout_ids))).items
        return Batch([r.reward or 0.0 for r in rollouts], groups=len(items))

    def update(self, batch: Batch) -> StepResult:
        self.calls.append("update")
        self.best = max(self.best, *batch.rewards)
        return StepResult({"seen": float(batch.rollouts)}, 0, None, {"best": {"reward": self.best}})

    def engine_weights(self) -> None:
        return None

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "best.json").write_text(json.dumps(self.best))

    def load(self, folder: Path) -> None:
        self.best = json.loads((folder / "best.json").read_text())


def test_the_trainer_runs_an_algorithm_it_does_not_know(tiny_model_dir: Path, tmp_path: Path) -> None:
    algorithm = BestReward(str(tiny_model_dir))
    trainer = tracerl.Trainer(
        agent=toy.digits_agent, algorithm=algorithm, runners=2, run_dir=str(tmp_path / "run"), batch_size=2,
        max_steps=3, val_every=0, max_tokens=6, progress=False,
    )
    result = trainer.fit(toy.make_tasks("train", 8))
    assert algorithm.calls == ["setup", "items", *(["make_batch:2:4", "update"] * 3)]
    assert result.steps == 3 and result.final_model is None  # it trains no weights: nothing to save
    assert [h["seen"] for h in result.history] == [4.0, 4.0, 4.0]
    assert all(h["best_reward"] <= algorithm.best for h in result.history)
    store = connect(f"sqlite:///{tmp_path / 'run' / 'store.db'}")
    try:
        best = store.get_resource("best")
        assert best.version == 3 and best.value == {"reward": algorithm.best}
        assert json.loads((result.checkpoint / "best.json").read_text()) == algorithm.best  # type: ignore[operator]
    finally:
        store.close()


def test_sft_examples_are_exactly_the_tokens_the_gateway_records(tiny_model_dir: Path) -> None:
    from tracerl.engines.hf import HFEngine

    model, tokenizer = load_model(tiny_model_dir)
    add = {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 20, "b": 22}'}}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Use the tool."},
        {"role": "user", "content": "What is 20 + 22?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "assistant", "content": "Answer: 42"},
    ]
    examples = examples_from_transcripts([{"messages": messages, "tools": [add]}], tokenizer)
    assert len(examples) == 2

    store = connect("memory://")
    engine = HFEngine(model, tokenizer, "tiny-random", max_batch_size=2)
    gateway = start_gateway(store, engine, model_name="tiny-random")
    try:
        recorded = []
        for k in (2, 4):  # the history before each assistant turn, as an agent would send it
            [rollout] = store.enqueue([RolloutSpec(task={})])
            claim = store.claim("w")
            assert claim is not None
            client = openai.OpenAI(base_url=gateway.base_url(rollout.rollout_id, claim.attempt.attempt_id),
                                   api_key="x", max_retries=0)
            client.chat.completions.create(model="tiny-random", messages=messages[:k], tools=[add], max_tokens=1)
            [span] = [s for s in store.get_spans(attempt_id=claim.attempt.attempt_id) if s.kind is SpanKind.LLM_CALL]
            recorded.append(span.prompt_ids)
        assert [e.prompt_ids for e in examples] == recorded
        # the second prompt repeats the first turn exactly as SFT trains it
        assert recorded[1][: len(examples[0].prompt_ids) + len(examples[0].response_ids)] == (
            examples[0].prompt_ids + examples[0].response_ids
        )
    finally:
        gateway.stop()
        import asyncio

        asyncio.run(engine.aclose())


def _digit_demos(n: int) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": t["question"]}, {"role": "assistant", "content": "4217"}]}
            for t in toy.make_tasks("train", n)]


def _stages(model_dir: Path, grpo_steps: int) -> list[tracerl.Stage]:
    return [
        tracerl.Stage(tracerl.SFT(str(model_dir), demonstrations=_digit_demos(16), lr=3e-3, seed=0), epochs=3),
        tracerl.Stage(tracerl.GRPO(str(model_dir), group_size=4, lr=1e-3, seed=0), max_steps=grpo_steps),
    ]


def test_sft_then_grpo_in_one_run_and_resume_in_the_second_stage(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train, val = toy.make_tasks("train", 16), toy.make_tasks("val", 4)
    options: dict[str, Any] = dict(runners=2, run_dir=str(run_dir), batch_size=4, val_every=0, max_tokens=6,
                                   progress=False, seed=0)
    first = tracerl.Trainer(agent=toy.digits_agent, algorithm=_stages(tiny_model_dir, 2), **options).fit(
        train, val_tasks=val
    )
    assert [(s.name, s.steps) for s in first.stages] == [("sft", 12), ("grpo", 2)]  # 16 demos / 4 × 3 epochs
    assert first.val_before is not None and first.val_before < 0.3
    assert first.stages[0].val_after is not None and first.stages[0].val_after > 0.8  # SFT taught the digits
    assert (run_dir / "stages" / "1-sft" / "model.safetensors").exists()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["stage"] for r in train_records] == [1] * 12 + [2] * 2
    assert all("nll_per_token" in r for r in train_records[:12])
    assert all("zero_variance_groups" in r for r in train_records[12:])  # GRPO's credit batch
    assert first.plot_path.stat().st_size > 10_000

    second = tracerl.Trainer(agent=toy.digits_agent, algorithm=_stages(tiny_model_dir, 4), **options).fit(
        train, val_tasks=val
    )
    assert [h["step"] for h in second.history] == [15, 16]  # SFT was not redone; GRPO continued at its step 3
    assert [(s.name, s.steps) for s in second.stages] == [("grpo", 4)]
    assert second.val_after is not None and second.val_after > 0.8  # it resumed from the SFT weights


AGENT = '''
from openai import OpenAI
import tracerl


@tracerl.agent
def any_digit(task, llm):
    """Reward 1 when the reply holds a digit: rare for the random model, so most groups of 4 are all 0."""
    client = OpenAI(base_url=llm.base_url, api_key=llm.api_key)
    reply = client.chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": task["question"]}], **llm.sampling
    )
    return float(any(c.isdigit() for c in reply.choices[0].message.content or ""))
'''


def test_dynamic_sampling_fills_the_step_with_informative_groups_and_stops_at_its_cap(
    tiny_model_dir: Path, tmp_path: Path, agent_module: Callable[[str, str], Path]
) -> None:
    agent_module("ds_agent", AGENT)
    trainer = tracerl.Trainer(
        agent="ds_agent:any_digit", algorithm=tracerl.GRPO(str(tiny_model_dir), group_size=4, lr=1e-3, seed=0),
        runners=4, run_dir=str(tmp_path / "run"), batch_size=2, max_steps=4, val_every=0, max_tokens=4,
        progress=False, dynamic_sampling=True, max_sampled_groups=4.0,
    )
    result = trainer.fit(toy.make_tasks("train", 64))
    for h in result.history:
        assert h["sampled_groups"] <= 8  # the cap: 4 × batch_size
        assert h["used_groups"] >= 2 or h["sampled_groups"] >= 8  # full, or stopped at the cap
        assert h["generated_rollouts"] == 4 * h["sampled_groups"]
    assert sum(h["sampled_groups"] for h in result.history) > 4 * 2  # it did sample beyond batch_size



KIND_AGENT = '''
import random

from openai import OpenAI
import tracerl


@tracerl.agent
def by_kind(task, llm):
    """One LLM call, then a reward with variance within a group only on tasks marked ``informative``."""
    client = OpenAI(base_url=llm.base_url, api_key=llm.api_key)
    client.chat.completions.create(model=llm.model, messages=[{"role": "user", "content": task["id"]}], **llm.sampling)
    return random.random() if task["informative"] else 0.0
'''


def test_balance_by_makes_every_step_wait_for_each_kinds_informative_group(
    tiny_model_dir: Path, tmp_path: Path, agent_module: Callable[[str, str], Path]
) -> None:
    """Every "a" task is informative, one "b" task in four: without ``balance_by`` most steps would train on two "a"
    groups; with it, each step samples until a "b" group with variance is in (or the cap of 4 × 2 groups)."""
    agent_module("kind_agent", KIND_AGENT)
    tasks = [{"id": f"a{i}", "kind": "a", "informative": True} for i in range(16)]
    tasks += [{"id": f"b{i}", "kind": "b", "informative": i % 4 == 0} for i in range(16)]
    trainer = tracerl.Trainer(
        agent="kind_agent:by_kind", algorithm=tracerl.GRPO(str(tiny_model_dir), group_size=2, lr=1e-3, seed=0),
        runners=2, run_dir=str(tmp_path / "run"), batch_size=2, max_steps=3, val_every=0, max_tokens=2,
        progress=False, dynamic_sampling=True, max_sampled_groups=4.0, balance_by="kind",
    )
    result = trainer.fit(tasks)
    with connect(f"sqlite:///{tmp_path / 'run' / 'store.db'}") as store:
        rollouts = store.query_rollouts(RolloutQuery(limit=1000)).items
    versions = sorted({r.resources_version for r in rollouts})  # one per step: the weights before its update
    assert len(versions) == len(result.history) == 3
    for version, record in zip(versions, result.history, strict=True):
        groups = {r.task["id"]: r.task for r in rollouts if r.resources_version == version}
        assert len(groups) == record["sampled_groups"]
        kinds = [t["kind"] for t in groups.values()]
        assert abs(kinds.count("a") - kinds.count("b")) <= 1  # the order takes the kinds in turn
        informative_b = [t for t in groups.values() if t["kind"] == "b" and t["informative"]]
        assert informative_b or record["sampled_groups"] == 8
        assert record["used_groups"] >= 2
    with pytest.raises(ConfigError, match=r"balance_by = 'kinds'.*'informative', 'kind'"):
        tracerl.Trainer(agent="kind_agent:by_kind", algorithm=tracerl.GRPO(str(tiny_model_dir), group_size=2),
                        run_dir=str(tmp_path / "typo"), balance_by="kinds").fit(tasks)


def test_balance_trim_updates_on_as_many_informative_groups_of_each_kind_and_not_at_all_when_one_gave_none(
    tiny_model_dir: Path, tmp_path: Path, agent_module: Callable[[str, str], Path]
) -> None:
    """With ``balance_trim``, a step whose "a" groups all have variance and whose "b" groups have it one time in four
    trains on min(a, b) informative groups of each kind; when no "b" task is ever informative, no step updates
    the weights (the "a" signal alone would move what both kinds share)."""
    agent_module("kind_agent", KIND_AGENT)
    tasks = [{"id": f"a{i}", "kind": "a", "informative": True} for i in range(16)]
    mixed = tasks + [{"id": f"b{i}", "kind": "b", "informative": i % 4 == 0} for i in range(16)]
    silent = tasks + [{"id": f"b{i}", "kind": "b", "informative": False} for i in range(16)]
    for name, train in (("mixed", mixed), ("silent", silent)):
        run_dir = tmp_path / name
        result = tracerl.Trainer(
            agent="kind_agent:by_kind", algorithm=tracerl.GRPO(str(tiny_model_dir), group_size=2, lr=1e-3, seed=0),
            runners=2, run_dir=str(run_dir), batch_size=2, max_steps=3, val_every=0, max_tokens=2, progress=False,
            dynamic_sampling=True, max_sampled_groups=4.0, balance_by="kind", balance_trim=True,
        ).fit(train)
        with connect(f"sqlite:///{run_dir / 'store.db'}") as store:
            rollouts = store.query_rollouts(RolloutQuery(limit=1000)).items
        rollouts.sort(key=lambda r: r.created_at)  # each step's rollouts, in step order (a step without an
        assert len(result.history) == 3  # update publishes no new weights version to tell them apart by)
        for record in result.history:
            mine, rollouts = rollouts[: record["generated_rollouts"]], rollouts[record["generated_rollouts"] :]
            groups = {r.task["id"]: r.task for r in mine}
            assert len(groups) == record["sampled_groups"]
            found = {kind: sum(t["kind"] == kind and t["informative"] for t in groups.values()) for kind in "ab"}
            assert record["used_groups"] == 2 * min(found.values()), (found, record)
            assert record["trimmed_groups"] == sum(found.values()) - record["used_groups"]
        assert not rollouts
        if name == "silent":  # every step sampled "a" groups with variance, and none of them moved the weights
            assert all(h["trimmed_groups"] >= 1 and h["weights_version"] == 0 for h in result.history)
        else:
            assert result.history[-1]["weights_version"] >= 1
