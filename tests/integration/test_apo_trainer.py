"""``tracerl.APO`` in the real Trainer with the tiny model: the unchanged agent, the gateway substituting
each candidate's prompt, candidates and the best prompt stored and exported; bad configs fail early.

The agent's reward is whether the gateway served it another prompt than the one it sent (the
``usage.prompt_tokens`` of its reply differs): only a substitution by the gateway can raise it, so the
reward rises exactly when the served prompt is the optimized one.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tracerl
from scripted_critic import CRITIQUE_TOKENS, EDIT_TOKENS, scripted_critic
from tracerl.errors import ConfigError
from tracerl.prompts import PROMPTS_RESOURCE, prompt_key
from tracerl.store import connect
from tracerl.types import Mode, RolloutQuery, SpanKind

SYSTEM = "Answer with one number."

AGENTS = '''
from openai import OpenAI

import tracerl

SYSTEM = "Answer with one number."


@tracerl.agent
def asks(task, llm):
    client = OpenAI(base_url=llm.base_url, api_key=llm.api_key)
    reply = client.chat.completions.create(
        model=llm.model, max_tokens=3,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": task["question"]}],
    )
    return 1.0 if reply.usage.prompt_tokens != task["sent_tokens"] else 0.0


@tracerl.agent
def reads_prompts(task, llm):
    prompts = llm.resources.get("prompts") or {}
    entry = (prompts.get("prompts") or {}).get(task["key"]) or {}
    return 1.0 if entry.get("text") == task["expected"] else 0.0
'''


@pytest.fixture
def agents(agent_module: Callable[[str, str], Path]) -> str:
    agent_module("apo_test_agents", AGENTS)
    return "apo_test_agents"


def tasks(tokenizer: Any, names: list[str]) -> list[dict[str, Any]]:
    out = []
    for q in names:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        out.append({"question": q, "sent_tokens": len(ids if isinstance(ids, list) else ids["input_ids"])})
    return out


def test_demo_search_in_the_trainer(tiny_model_dir: Path, tiny_model: tuple[Any, Any], agents: str,
                                    tmp_path: Path) -> None:  # fmt: skip
    tok = tiny_model[1]
    apo = tracerl.APO(str(tiny_model_dir), SYSTEM, strategy="demos", demo_min_reward=0.0, num_candidates=2,
                      max_demos=1, val_tasks=tasks(tok, ["1+1", "2+2", "3+3"]), max_rollouts=40)  # fmt: skip
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    trainer = tracerl.Trainer(agent=f"{agents}:asks", algorithm=apo, store=store_url, runners=2, batch_size=2,
                              run_dir=str(tmp_path / "run"), epochs=2, max_tokens=3, progress=False)  # fmt: skip
    result = trainer.fit(tasks(tok, ["4+4", "5+5"]), val_tasks=tasks(tok, ["6+6", "7+7"]))

    assert result.val_before == 0.0 and result.val_after == 1.0  # the held-out tasks got the demonstration
    found = json.loads((tmp_path / "run" / "apo_candidates.json").read_text())
    cands = found["candidates"]
    assert cands[0]["text"] == SYSTEM and cands[0]["scores"] == {"0": 0.0, "1": 0.0, "2": 0.0}
    assert len(cands) == 1 + 2 * 2 and all(c["parents"] == ["c0"] and len(c["demos"]) == 2 for c in cands[1:])
    assert all(c["scores"] == {"0": 1.0, "1": 1.0, "2": 1.0} for c in cands[1:])
    # 2 steps × 2 train rollouts, the seed and 4 candidates on 3 validation tasks
    assert found["rollouts_used"] == 4 + 5 * 3 and found["best"] == "c1"
    best = json.loads((tmp_path / "run" / "best_prompt.json").read_text())
    assert best["text"] == SYSTEM and best["demos"] == cands[1]["demos"]
    assert best["resource"]["prompts"] == {prompt_key(SYSTEM): {"text": SYSTEM, "demos": cands[1]["demos"]}}

    with connect(store_url) as store:
        bundle = store.get_resource("resources").value
        served = store.get_resource(PROMPTS_RESOURCE, bundle["prompts_version"]).value
        assert served["prompts"] == best["resource"]["prompts"] and served["candidate"]["parents"] == ["c0"]
        scored = store.get_resource(PROMPTS_RESOURCE, cands[2]["prompts_version"]).value  # each candidate ran as one
        assert scored["candidate"]["id"] == "c2"
        last_val = store.query_rollouts(RolloutQuery(mode=Mode.VAL, limit=10_000)).items[-1]
        [call] = [s for s in store.get_spans(rollout_id=last_val.rollout_id) if s.kind is SpanKind.LLM_CALL]
        assert call.attributes["prompts"] == {"version": bundle["prompts_version"], "key": prompt_key(SYSTEM),
                                              "demos": 2}  # fmt: skip

    # the exported prompt, run by evaluate; agents that read their prompts get them from llm.resources
    rerun = tracerl.evaluate(f"{agents}:asks", tasks(tok, ["8+8"]), model=str(tiny_model_dir), runners=1,
                             prompts=best["resource"], max_tokens=3)  # fmt: skip
    assert rerun.mean_reward == 1.0
    reads = tracerl.evaluate(f"{agents}:reads_prompts", [{"key": prompt_key(SYSTEM), "expected": SYSTEM}],
                             model=str(tiny_model_dir), runners=1, prompts=best["resource"])  # fmt: skip
    assert reads.mean_reward == 1.0


def test_bad_configs_fail_before_any_rollout(tiny_model_dir: Path, agents: str, tmp_path: Path) -> None:
    model = str(tiny_model_dir)
    with pytest.raises(ConfigError, match="beam_width must be an integer ≥ 1, got 0"):
        tracerl.APO(model, SYSTEM, beam_width=0)
    with pytest.raises(ConfigError, match="val_tasks is empty"):
        tracerl.APO(model, SYSTEM, val_tasks=[])
    with pytest.raises(ConfigError, match="needs prompt"):
        tracerl.APO(model, "")
    store_url = f"sqlite:///{tmp_path / 'store.db'}"

    def fit(apo: Any, train: list[dict[str, Any]]) -> None:
        trainer = tracerl.Trainer(agent=f"{agents}:asks", algorithm=apo, store=store_url, runners=1,
                                  run_dir=str(tmp_path / "run"), max_steps=1, progress=False)  # fmt: skip
        trainer.fit(train, val_tasks=[{"question": "1", "sent_tokens": 1}])

    dead = tracerl.APO(model, SYSTEM, critic={"url": "http://127.0.0.1:9/v1", "model": "gpt"})
    with pytest.raises(ConfigError, match=r"critic at http://127\.0\.0\.1:9/v1 does not answer"):
        fit(dead, [{"question": "1", "sent_tokens": 1}] * 4)
    with pytest.raises(ConfigError, match="cannot split validation tasks off 1 train task"):
        fit(tracerl.APO(model, SYSTEM, strategy="demos"), [{"question": "1", "sent_tokens": 1}])
    with connect(store_url) as store:
        assert store.query_rollouts(RolloutQuery(limit=10)).items == []
    # a prompt the agent never sends is found out on the first step's rollouts, before any candidate is scored
    other = tracerl.APO(model, "You are a poet.", strategy="demos", val_tasks=[{"question": "2", "sent_tokens": 1}])
    with pytest.raises(ConfigError, match="none of the agent's 2 rollouts sent the system prompt given as APO"):
        fit(other, [{"question": "1", "sent_tokens": 1}] * 2)
    with pytest.raises(ConfigError, match="unknown prompts_version 7"):
        tracerl.evaluate(f"{agents}:asks", [{"question": "1", "sent_tokens": 1}], model=model, prompts_version=7)


def test_beam_search_from_a_run_config_with_a_remote_critic(tiny_model_dir: Path, tiny_model: tuple[Any, Any],
                                                            agents: str, tmp_path: Path) -> None:  # fmt: skip
    """``tracerl train run.toml`` with ``name = "apo"``: the critic is an OpenAI-compatible server on loopback."""
    from tracerl.train.cli import main

    tok = tiny_model[1]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks(tok, ["4+4", "5+5"])))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks(tok, ["6+6", "7+7"])))
    apo_val = ", ".join(f"{{question = {t['question']!r}, sent_tokens = {t['sent_tokens']}}}"
                        for t in tasks(tok, ["1+1", "2+2"]))  # fmt: skip
    with scripted_critic(["alpha", "beta"]) as (url, script):
        config = f"""
agent = "{agents}:asks"
train_tasks = "{tmp_path / 'train.jsonl'}"
val_tasks = "{tmp_path / 'val.jsonl'}"
[store]
url = "sqlite:///{tmp_path / 'store.db'}"
[trainer]
run_dir = "{tmp_path / 'run'}"
batch_size = 2
epochs = 2
max_tokens = 3
progress = false
[runners]
n = 2
[algorithm]
name = "apo"
model = "{tiny_model_dir}"
prompt = "{SYSTEM}"
strategy = "beam"
beam_width = 1
branch_factor = 1
val_batch = 2
max_critic_tokens = {CRITIQUE_TOKENS + EDIT_TOKENS + 1}
val_tasks = [{apo_val}]
[algorithm.critic]
url = "{url}"
model = "critic"
"""
        (tmp_path / "run.toml").write_text(config)
        assert main(argparse.Namespace(config=str(tmp_path / "run.toml"), no_resume=True, max_steps=None)) == 0
        assert script.critiques == 2  # step 2 spends the rest of the budget on a critique, then stops
    found = json.loads((tmp_path / "run" / "apo_candidates.json").read_text())
    assert [c["text"] for c in found["candidates"]] == [SYSTEM, "base alpha"]
    assert found["beam"] == ["c1"] and found["stopped"] == "max_critic_tokens"
    assert found["critic_tokens_used"] == 2 * CRITIQUE_TOKENS + EDIT_TOKENS
    c1 = found["candidates"][1]
    assert c1["parents"] == ["c0"] and c1["critique"] == "critique 1" and c1["scores"] == {"0": 1.0, "1": 1.0}
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [m["val_reward"] for m in metrics if m.get("kind") == "val"]
    assert vals[0] == 0.0 and vals[-1] == 1.0  # held-out: the agent's own prompt, then the edited one


def test_gepa_with_the_served_model_as_critic(tiny_model_dir: Path, tiny_model: tuple[Any, Any], agents: str,
                                              tmp_path: Path) -> None:  # fmt: skip
    """``critic url = "local"``: critique and edit come from the model the Trainer serves (unrecorded /v1)."""
    tok = tiny_model[1]
    apo = tracerl.APO(str(tiny_model_dir), SYSTEM, strategy="gepa", critic={"max_tokens": 12, "temperature": 0.0},
                      val_tasks=tasks(tok, ["1+1", "2+2"]), val_batch=2)  # fmt: skip
    trainer = tracerl.Trainer(agent=f"{agents}:asks", algorithm=apo, runners=2, batch_size=2, max_tokens=3,
                              store=f"sqlite:///{tmp_path / 'store.db'}", run_dir=str(tmp_path / "run"),
                              progress=False)  # fmt: skip
    trainer.fit(tasks(tok, ["4+4", "5+5"]))
    found = json.loads((tmp_path / "run" / "apo_candidates.json").read_text())
    child = found["candidates"][1]
    assert child["origin"] == "mutation" and child["parents"] == ["c0"] and child["critique"]
    assert child["status"] in ("scored", "rejected") and child["text"]
    assert found["critic_tokens_used"] > 0  # the served model's usage, counted
    with connect(f"sqlite:///{tmp_path / 'store.db'}") as store:  # the critic's calls were not recorded
        calls = [s for r in store.query_rollouts(RolloutQuery(limit=100)).items
                 for s in store.get_spans(rollout_id=r.rollout_id) if s.kind is SpanKind.LLM_CALL]  # fmt: skip
        assert len(calls) == 2 + 2 + 2  # feedback, the seed and the child on the 2 validation tasks
