"""Several trained models in one run: a three-role agent (planner, solver, critic) where the planner and the
solver are each trained as a model of their own (separate weights, optimizer and engine) and the critic is
served frozen.

Real pieces: three hf engines serving copies of the tiny model behind one gateway on loopback, the agent's
``openai`` client, a memory store, :class:`tracerl.train.roles.RoleModels` over two GRPO algorithms; then the
whole :class:`tracerl.Trainer` with runner processes, checkpoints, resume and the final folders.

The reward teaches each role its own thing: half of it is the share of even token ids in the planner's reply,
half the share of odd ones in the solver's (each about ½ for the random model). Credit is uniform (every call
of a rollout gets its reward), so each model also sees the other's part as noise; its own part is the signal.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from run_store import served_versions
from tracerl.algorithms.grpo import GRPO
from tracerl.engines.hf import HFEngine
from tracerl.engines.models import load_model
from tracerl.errors import ConfigError
from tracerl.gateway import start_gateway
from tracerl.store import connect
from tracerl.train.roles import RoleModels
from tracerl.types import AttemptStatus, RolloutSpec, SpanKind

TASKS = ["add two numbers", "name a colour"]
GROUP = 4
STEPS = 24  # 16 left a slow role at +0.03 once in CI; with 24, 20 local runs all ended at +0.45 or more
ROLES = ["planner", "solver", "critic"]


def three_role_agent(task: dict[str, Any], base_url: str) -> None:
    """The user's agent: a planner call, a solver call that reads the plan, a critic call (one model per role)."""
    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)

    def ask(model: str, text: str, temperature: float) -> str:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=4, temperature=temperature
        )
        return reply.choices[0].message.content or ""

    plan = ask("planner", f"Plan: {task['q']}", 1.0)
    answer = ask("solver", f"Do it: {plan}", 1.0)
    ask("critic", f"Judge: {answer}", 0.0)


def share(ids: list[int], parity: int) -> float:
    return sum(t % 2 == parity for t in ids) / max(1, len(ids))


def p_parity(model: Any, replies: list[tuple[list[int], list[int]]], parity: int) -> float:
    """Mean probability, over every position of each sampled reply, that the next token has the given parity.

    Teacher-forced on the replies the engines sampled (prompt ids, reply ids): the reward counts all the reply's
    tokens, so every position is measured, not only the first (8 first tokens alone were a noisy measure).
    """
    vocab = torch.arange(parity, int(model.config.vocab_size), 2)
    ps = []
    with torch.no_grad():
        for prompt, reply in replies:
            logits = model(torch.tensor([prompt + reply[:-1]])).logits[0, len(prompt) - 1 :]
            ps.append(logits.softmax(-1)[:, vocab].sum(-1).mean())
    return float(torch.stack(ps).mean())


def grpo(model_dir: Path, **options: Any) -> GRPO:
    return GRPO(model=str(model_dir), group_size=GROUP, lr=5e-3, bf16=False, device="cpu", **options)


def test_two_roles_train_separate_models_and_each_learns_its_own_reward(tiny_model_dir: Path) -> None:
    models = {role: load_model(tiny_model_dir) for role in ROLES}
    critic_start = copy.deepcopy(models["critic"][0].state_dict())
    algo = RoleModels({"planner": grpo(tiny_model_dir), "solver": grpo(tiny_model_dir)})
    served = {role: copy.deepcopy(m) for role, (m, _) in models.items()}  # the engines' copies
    algo.setup({role: models[role] for role in ("planner", "solver")})
    tokenizer = models["planner"][1]
    engines = {role: HFEngine(served[role], tokenizer, role, max_batch_size=8) for role in ROLES}
    store = connect("memory://")
    gateway = start_gateway(store, engines)
    replies: dict[str, list[tuple[list[int], list[int]]]] = {"planner": [], "solver": []}  # of the last step
    shares: dict[str, list[float]] = {"planner": [], "solver": []}  # each role's part of the reward, per step
    try:
        torch.manual_seed(0)
        for step in range(STEPS):
            specs = [RolloutSpec(task={"q": q}, group_id=f"s{step}-{i}") for i, q in enumerate(TASKS)
                     for _ in range(GROUP)]  # fmt: skip
            ids = [r.rollout_id for r in store.enqueue(specs)]
            claims = [c for c in (store.claim("w") for _ in ids) if c is not None]
            with ThreadPoolExecutor(len(claims)) as pool:  # concurrent rollouts: the engines batch them
                list(pool.map(lambda c: three_role_agent(
                    c.rollout.task, gateway.base_url(c.rollout.rollout_id, c.attempt.attempt_id)), claims))
            for c in claims:
                calls = [s for s in store.get_spans(attempt_id=c.attempt.attempt_id) if s.kind is SpanKind.LLM_CALL]
                assert [s.attributes["model"] for s in calls] == ROLES
                parts = {"planner": share(list(calls[0].response_ids or []), 0),
                         "solver": share(list(calls[1].response_ids or []), 1)}  # fmt: skip
                for role, call in zip(("planner", "solver"), calls, strict=False):
                    replies[role] = [*replies[role][-len(claims) + 1 :],
                                     (list(call.prompt_ids or []), list(call.response_ids or []))]
                    shares[role].append(parts[role] / len(claims))
                store.finish(c.attempt.attempt_id, AttemptStatus.SUCCEEDED, reward=sum(parts.values()) / 2)
            if step == 0:
                with pytest.raises(ConfigError, match=r"'writer' has nothing to train.*model='writer'"):
                    RoleModels({"planner": grpo(tiny_model_dir), "writer": grpo(tiny_model_dir)}).make_batch(
                        store, [], ids)
            batch = algo.make_batch(store, [], ids)
            for role in ("planner", "solver"):  # each model trains on its own role's calls only
                assert {t.model for t in batch.batches[role].transitions} <= {role}
            result = algo.update(batch)
            for role in shares:
                shares[role][-len(claims) :] = [sum(shares[role][-len(claims) :])]  # this step's mean
            assert set(result.per_role) == {"planner", "solver"}
            if step == 0:  # each role's metrics under its name (a late step may skip: both parts near 1, no variance)
                assert {"planner/loss", "solver/loss"} <= set(result.metrics)
            for role, own in result.per_role.items():  # each model's weights go into its own engine only
                if own.weights is not None:
                    engines[role].load_weights(own.weights, own.weights_version)
    finally:
        gateway.stop()
        for engine in engines.values():
            asyncio.run(engine.aclose())
    # the frozen role's weights are the ones it started with; the two trained models moved apart, each
    # towards its own reward: on the last step's sampled replies, the start weights (the critic's, unchanged) vs each
    # trained model's chance of its own reward's parity
    assert all(torch.equal(critic_start[k], v) for k, v in served["critic"].state_dict().items())
    before = {"planner": p_parity(served["critic"], replies["planner"], 0),
              "solver": p_parity(served["critic"], replies["solver"], 1)}  # fmt: skip
    after = {"planner": p_parity(served["planner"], replies["planner"], 0),
             "solver": p_parity(served["solver"], replies["solver"], 1)}  # fmt: skip
    planner_w, solver_w = served["planner"].state_dict(), served["solver"].state_dict()
    assert any(not torch.equal(planner_w[k], critic_start[k]) for k in planner_w)
    assert any(not torch.equal(planner_w[k], solver_w[k]) for k in planner_w)
    for role in ("planner", "solver"):
        assert algo.algorithms[role].weights_version >= STEPS // 2
        assert after[role] > before[role] + 0.2, (role, before, after, shares)
        # and each role's own part of the sampled reward rose (first four steps vs last four: a step holds
        # 8 replies of 4 tokens, so one step's share is noisy, and the two models chase a moving target)
        assert sum(shares[role][-4:]) > sum(shares[role][:4]), (role, shares)


AGENTS = '''
from openai import OpenAI

import tracerl


@tracerl.agent
def plan_solve_judge(task, llm):
    client = OpenAI(base_url=llm.base_url, api_key=llm.api_key)

    def ask(model, text, **sampling):
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **sampling)
        return reply.choices[0].message.content or ""

    plan = ask("planner", task["question"], **llm.sampling)
    answer = ask("solver", plan or "?", **llm.sampling)
    ask("critic", answer or "?", max_tokens=2, temperature=0.0)
    text = (plan + answer).replace(" ", "")
    return sum(c.isalpha() for c in text) / max(1, len(text))
'''


def test_the_trainer_trains_two_models_serves_each_its_weights_and_resumes(
    tiny_model_dir: Path, tmp_path: Path, agent_module: Callable[[str, str], Path]
) -> None:
    import tracerl
    from tracerl.tasks import toy

    agent_module("roles_multi_agents", AGENTS)
    run_dir = tmp_path / "run"

    def fit(max_steps: int, resume: bool) -> Any:
        trainer = tracerl.Trainer(
            agent="roles_multi_agents:plan_solve_judge",
            algorithm={"planner": GRPO(model=str(tiny_model_dir), group_size=4, lr=1e-3),
                       "solver": GRPO(model=str(tiny_model_dir), group_size=4, lr=1e-3)},
            roles={"critic": str(tiny_model_dir)},
            runners=2, run_dir=str(run_dir), batch_size=1, max_tokens=6, val_every=0, seed=0, progress=False,
            max_steps=max_steps, checkpoint_every=1, resume=resume,
        )  # fmt: skip
        return trainer.fit(toy.make_tasks("train", 4))

    first = fit(1, resume=False)
    assert first.steps == 1
    result = fit(2, resume=True)  # continues from the checkpoint of step 1: both learners restored
    assert result.steps == 2
    record = result.history[-1]
    for role in ("planner", "solver"):
        assert record[f"{role}/transitions"] > 0 and record[f"{role}/loss"] is not None
    assert "critic/transitions" not in record and record["reward_mean"] is not None
    _, versions = served_versions(run_dir)
    # each trained model's engine served its own updates (step 2, after the resume, sampled with version 1
    # of each); the frozen critic's engine never received weights
    assert versions == {"planner": {0, 1}, "solver": {0, 1}, "critic": {0}}
    # the final weights: a Hugging Face folder per trained role, each changed from the start and from the other
    assert result.final_model == run_dir / "final"
    start = load_model(tiny_model_dir)[0].state_dict()
    planner = load_model(run_dir / "final" / "planner")[0].state_dict()
    solver = load_model(run_dir / "final" / "solver")[0].state_dict()
    assert any(not torch.equal(planner[k], start[k]) for k in start)
    assert any(not torch.equal(solver[k], start[k]) for k in start)
    assert any(not torch.equal(planner[k], solver[k]) for k in start)
    assert sorted(p.name for p in (run_dir / "checkpoints" / "step-000002").iterdir()) == [
        "planner", "solver", "trainer.json"
    ]


def test_bad_combinations_of_trained_roles_are_refused(tiny_model_dir: Path) -> None:
    import tracerl
    from tracerl.config import EngineConfig
    from tracerl.tasks import toy

    def trainer(algorithm: Any, roles: dict[str, str | None] | None = None, **options: Any) -> None:
        tracerl.Trainer(agent=toy.digits_agent, algorithm=algorithm, roles=roles, **options)

    g = str(tiny_model_dir)
    with pytest.raises(ConfigError, match="'solver' is trained by two algorithms"):
        trainer({"planner": GRPO(model=g, train_models=["planner", "solver"]), "solver": GRPO(model=g)})
    with pytest.raises(ConfigError, match="leaves out its own role 'planner'"):
        trainer({"planner": GRPO(model=g, train_models=["solver"])})
    with pytest.raises(ConfigError, match="cannot be a stage of a list"):
        trainer([tracerl.SFT(model=g, group_size=4), {"solver": GRPO(model=g)}])
    with pytest.raises(ConfigError, match="is a Stage"):
        trainer({"solver": tracerl.Stage(GRPO(model=g), max_steps=2)})
    with pytest.raises(ConfigError, match="has no train_models"):
        trainer({"solver": tracerl.SFT(model=g, group_size=4)})
    with pytest.raises(ConfigError, match="one group_size"):
        trainer({"planner": GRPO(model=g, group_size=4), "solver": GRPO(model=g, group_size=2)})
    with pytest.raises(ConfigError, match="same object"):
        same = GRPO(model=g)
        trainer({"planner": same, "solver": same})
    with pytest.raises(ConfigError, match="add 'critic' to the dict to train it"):
        trainer({"solver": GRPO(model=g)}, roles={"critic": None})
    with pytest.raises(ConfigError, match="also mapped in roles"):
        trainer({"solver": GRPO(model=g)}, roles={"solver": g})
    with pytest.raises(ConfigError, match="in-process hf engines"):
        trainer({"solver": GRPO(model=g)}, engine=EngineConfig(kind="vllm"))
    # an algorithm without train_models trains the calls of its key
    algo = GRPO(model=g)
    trainer({"solver": algo})
    assert algo.config.train_models == ["solver"]
