"""``tracerl.APO``: automatic prompt optimization behind the Algorithm protocol, with no change to the agent.

    apo = tracerl.APO(
        model="smollm2-135m",                        # the model the agent's calls are served by
        prompt="You are a calculator. ...",           # the agent's system prompt, exactly as it sends it
        strategy="demos",                            # "beam" | "gepa" | "demos" (see apo_search)
        critic={"url": "https://api.openai.com/v1", "model": "gpt-4.1-mini"},   # or "local" (default)
        max_rollouts=400, max_critic_tokens=200_000,
    )
    tracerl.Trainer(agent=my_agent, algorithm=apo, runners=4).fit(train_tasks, val_tasks=held_out)

How it runs in the Trainer (which names no algorithm): each step rolls the train tasks out ``group_size``
times with the current best prompt (feedback for the critic, and the pool of demonstrations);
:meth:`APO.make_batch` reads those scored rollouts from the store; :meth:`APO.update` runs one step of the
search (:mod:`tracerl.algorithms.apo_search`). Scoring a candidate publishes it as a version of the store's
``prompts`` resource — with its parents and critique under ``"candidate"`` — and runs the agent on the
validation tasks with rollout metadata ``{"prompts_version": N}``: the gateway substitutes the prompt
(:mod:`tracerl.prompts`), greedy. The update returns the best candidate as the ``prompts`` resource, which
the Trainer publishes and names in its resources bundle, so later rollouts (and the Trainer's held-out
validation) run with it. The Trainer hands APO a way to run rollouts by calling :meth:`APO.bind`.

Validation tasks for scoring: ``val_tasks``, else the first ``val_split`` of a seeded shuffle of the train
tasks (the rest are the train items) — keep the Trainer's ``val_tasks`` held out from both to report an
honest before/after. Artifacts in the run folder, rewritten each step: ``apo_candidates.json`` (every
candidate: text, demos, parents, critique, per-task scores, prompts version; budgets used; why it stopped)
and ``best_prompt.json`` (the best text and demos, and the ``prompts`` resource value that serves them:
``tracerl.evaluate(..., prompts=json.load(...)["resource"])``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tracerl.algorithms.apo_critic import LOCAL, Critic, CriticConfig, Run
from tracerl.algorithms.apo_search import (
    DEMO_SEARCHES,
    STRATEGIES,
    Candidate,
    Example,
    Scored,
    Search,
    SearchConfig,
)
from tracerl.algorithms.base import JSON, StepResult, json_list, json_object
from tracerl.errors import ConfigError
from tracerl.prompts import PROMPTS_RESOURCE, PROMPTS_VERSION_KEY, message_text, prompt_key

if TYPE_CHECKING:
    from tracerl.store.base import Store
    from tracerl.types import Rollout

log = logging.getLogger(__name__)
CANDIDATES_FILE = "apo_candidates.json"
BEST_FILE = "best_prompt.json"


@dataclass
class RolloutAccess:
    """What the Trainer gives an algorithm that runs rollouts of its own (:meth:`APO.bind`).

    ``run(tasks, metadata)``: one greedy validation rollout per task, each with its metadata, run to the end
    (in order); ``gateway_url``: the in-process gateway (its ``/v1`` serves the model, unrecorded)."""

    store: Store
    run: Callable[[list[JSON], list[JSON]], list[Rollout]]
    gateway_url: str
    model_name: str
    train_tasks: list[JSON]
    run_dir: Path


@dataclass
class APOBatch:
    """One step's scored train rollouts."""

    examples: list[Example]
    groups: int
    informative_groups: int
    rollouts: int
    response_tokens: int
    matched: int  # rollouts whose calls carried the prompt being optimized
    calling: int  # rollouts that made an LLM call at all

    def metrics(self) -> dict[str, float]:
        rewards = [e.run.reward for e in self.examples]
        return {"reward_mean": sum(rewards) / len(rewards)} if rewards else {}


def _int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"APO {name} must be an integer ≥ {minimum}, got {value!r}")


class APO:
    """Prompt optimization (see the module docstring); implements :class:`~tracerl.algorithms.base.Algorithm`."""

    name = "apo"

    def __init__(
        self,
        model: str,
        prompt: str,
        *,
        strategy: str = "beam",
        critic: CriticConfig | dict[str, Any] | None = None,
        val_tasks: Sequence[JSON] | None = None,
        val_split: float = 0.5,
        group_size: int = 1,
        beam_width: int = 2,
        branch_factor: int = 2,
        val_batch: int = 4,
        feedback_runs: int = 4,
        merge_every: int = 2,
        demo_search: str = "random",
        num_candidates: int = 4,
        max_demos: int = 2,
        demo_min_reward: float = 1.0,
        max_rollouts: int | None = None,
        max_critic_tokens: int | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(cast(object, prompt), str) or not prompt:
            raise ConfigError("APO needs prompt = the agent's system prompt exactly as the agent sends it (the "
                              "gateway finds it by the sha256 of that text); got an empty or missing prompt")
        if strategy not in STRATEGIES:
            raise ConfigError(f"APO strategy {strategy!r} is not one of {list(STRATEGIES)}")
        if demo_search not in DEMO_SEARCHES:
            raise ConfigError(f"APO demo_search {demo_search!r} is not one of {list(DEMO_SEARCHES)}")
        for name, value, low in (("beam_width", beam_width, 1), ("branch_factor", branch_factor, 1),
                                 ("val_batch", val_batch, 1), ("feedback_runs", feedback_runs, 1),
                                 ("merge_every", merge_every, 1), ("num_candidates", num_candidates, 1),
                                 ("max_demos", max_demos, 1), ("group_size", group_size, 1)):  # fmt: skip
            _int(name, value, low)
        for name, cap in (("max_rollouts", max_rollouts), ("max_critic_tokens", max_critic_tokens)):
            if cap is not None:
                _int(name, cap, 1)
        if val_tasks is not None and len(val_tasks) == 0:
            raise ConfigError("APO val_tasks is empty: candidates are scored on validation tasks; give some, or "
                              "leave val_tasks out to split them off the train tasks (val_split)")
        if not 0 < val_split < 1:
            raise ConfigError(f"APO val_split must be in (0, 1), got {val_split!r}")
        if isinstance(critic, dict):
            unknown = sorted(set(critic) - {f.name for f in dataclasses.fields(CriticConfig)})
            if unknown:
                raise ConfigError(f"unknown APO critic key(s) {unknown}; the keys are url, model, api_key_env, "
                                  "max_tokens, temperature, timeout_s")
        self.critic_config = critic if isinstance(critic, CriticConfig) else CriticConfig(**(critic or {}))
        self._model, self.prompt, self.key = model, prompt, prompt_key(prompt)
        self.val_tasks = list(val_tasks) if val_tasks is not None else None
        self.val_split, self._group_size, self._seed = val_split, group_size, seed
        self.search_config = SearchConfig(
            strategy=strategy, beam_width=beam_width, branch_factor=branch_factor, val_batch=val_batch,
            feedback_runs=feedback_runs, merge_every=merge_every, demo_search=demo_search,
            num_candidates=num_candidates, max_demos=max_demos, demo_min_reward=demo_min_reward,
            max_rollouts=max_rollouts, max_critic_tokens=max_critic_tokens, seed=seed,
        )  # fmt: skip
        self.critic: Critic | None = None
        self.search: Search | None = None
        self.access: RolloutAccess | None = None
        self.train_items: list[JSON] | None = None
        self.published: str | None = None  # the candidate last returned as the served prompts

    # -- the protocol's properties ----------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self._model

    @property
    def group_size(self) -> int:
        """Feedback rollouts per train task; 0 once the search stopped (its budget is spent)."""
        return 0 if self.search is not None and self.search.stopped else self._group_size

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def weights_version(self) -> int:
        return 0

    def to_json(self) -> JSON:
        return {"name": self.name, "model": self.model, "prompt": self.prompt, "group_size": self._group_size,
                "val_split": self.val_split, "val_tasks": len(self.val_tasks) if self.val_tasks else None,
                "critic": dataclasses.asdict(self.critic_config), **dataclasses.asdict(self.search_config)}  # fmt: skip

    # -- set-up: everything that can be wrong fails here, before any rollout -----------------------------
    def setup(self, model: Any, tokenizer: Any) -> None:
        """Check that a remote critic answers (a local one is the served model, checked in :meth:`bind`)."""
        if self.search_config.strategy != "demos" and self.critic_config.url != LOCAL:
            critic = Critic(self.critic_config)
            critic.check()
            self.critic = critic

    def bind(self, access: RolloutAccess) -> None:
        """Called by the Trainer once its gateway serves: split validation tasks off and start the search."""
        self.access = access
        if self.search_config.strategy != "demos" and self.critic is None:
            self.critic = Critic(self.critic_config, url=f"{access.gateway_url}/v1", model=access.model_name)
        train = list(access.train_tasks)
        if self.val_tasks is None:
            order = list(range(len(train)))
            random.Random(self._seed).shuffle(order)
            n_val = int(len(train) * self.val_split)
            if n_val < 1 or n_val >= len(train):
                raise ConfigError(f"APO cannot split validation tasks off {len(train)} train task(s) with val_split "
                                  f"{self.val_split}; give val_tasks or more train tasks")
            self.val_tasks = [train[i] for i in order[:n_val]]
            self.train_items = [train[i] for i in sorted(order[n_val:])]
        elif self.train_items is None:  # (a resumed run keeps the split it saved)
            self.train_items = train
        if self.search is None:
            self.search = Search(self.search_config, self.prompt, len(self.val_tasks), self._score, self.critic)
        else:  # resumed: keep the loaded state, use this run's scorer and critic
            self.search.scorer, self.search.critic = self._score, self.critic

    def items(self, train_tasks: Sequence[JSON]) -> list[JSON]:
        return list(self.train_items if self.train_items is not None else train_tasks)

    # -- reading rollouts ------------------------------------------------------------------------------
    def _example(self, store: Store, rollout: Rollout) -> tuple[Example, int, bool | None]:
        """A rollout as an :class:`Example`, its response tokens, and whether it sent the optimized prompt
        (None: it made no LLM call)."""
        from tracerl.train.launcher import rollout_reward
        from tracerl.types import SpanKind

        calls = [s for s in store.get_spans(rollout_id=rollout.rollout_id) if s.kind is SpanKind.LLM_CALL]
        reward = rollout_reward(rollout)
        if not calls:
            return Example(Run(f"(no LLM call; error: {rollout.error})", reward)), 0, None
        lines: list[str] = []
        demo: tuple[str, str] | None = None
        matched = False
        for i, span in enumerate(calls):
            # recorded request/response JSON: anything not of the expected shape counts as absent
            messages = [json_object(m) for m in json_list(json_object(span.attributes.get("request")).get("messages"))]
            choices = json_list(json_object(span.attributes.get("response")).get("choices")) or [{}]
            reply = json_object(json_object(choices[0]).get("message"))
            info = json_object(span.attributes.get("prompts"))
            first = message_text(messages[0]) if messages else None
            matched = matched or info.get("key") == self.key or (first is not None and prompt_key(first) == self.key)
            shown = messages[1:] if i == 0 else messages[-1:]  # the system prompt is shown to the critic apart
            lines += [f"{m.get('role')}: {message_text(m) or ''}" for m in shown if m]
            lines.append(f"assistant: {reply.get('content') or ''}{' [tool calls]' if reply.get('tool_calls') else ''}")
            content = reply.get("content")
            if i == 0 and isinstance(content, str) and not reply.get("tool_calls"):
                user = next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), None)
                demo = (user, content) if user else None
        tokens = sum(len(s.response_ids or []) for s in calls)
        return Example(Run("\n".join(lines), reward), demo), tokens, matched

    def make_batch(self, store: Store, items: Sequence[JSON], rollout_ids: Sequence[str]) -> APOBatch:
        examples: list[Example] = []
        tokens, matched, calling = 0, 0, 0
        for rid in rollout_ids:
            example, n, seen = self._example(store, store.get_rollout(rid))
            examples.append(example)
            tokens += n
            matched += bool(seen)
            calling += seen is not None
        return APOBatch(examples, len(items), len(items), len(rollout_ids), tokens, matched, calling)

    def _score(self, todo: list[tuple[Candidate, list[int]]]) -> list[list[Scored]]:
        """Publish each candidate as a ``prompts`` version and run it on its validation tasks."""
        assert self.access is not None and self.val_tasks is not None
        store = self.access.store
        tasks: list[JSON] = []
        meta: list[JSON] = []
        for cand, idxs in todo:
            if cand.prompts_version is None:
                cand.prompts_version = store.put_resource(PROMPTS_RESOURCE, self.prompts_value(cand)).version
            for i in idxs:
                tasks.append(self.val_tasks[i])
                meta.append({PROMPTS_VERSION_KEY: cand.prompts_version, "apo_candidate": cand.id})
        rollouts = self.access.run(tasks, meta)
        scored = [Scored(e.run.reward, e.run) for e in (self._example(store, r)[0] for r in rollouts)]
        out: list[list[Scored]] = []
        k = 0
        for _, idxs in todo:
            out.append(scored[k : k + len(idxs)])
            k += len(idxs)
        return out

    def prompts_value(self, cand: Candidate) -> JSON:
        """The ``prompts`` resource value that serves ``cand`` in place of the agent's prompt."""
        return {
            "prompts": {self.key: {"text": cand.text, "demos": cand.demos}},
            "candidate": {"id": cand.id, "parents": cand.parents, "origin": cand.origin, "critique": cand.critique,
                          "original": self.prompt},
        }  # fmt: skip

    # -- learning -------------------------------------------------------------------------------------
    def update(self, batch: APOBatch) -> StepResult:
        """One search step on the batch's feedback; the best candidate becomes the served ``prompts``."""
        if self.search is None or self.access is None:
            raise ConfigError("APO.update before bind(): run APO with tracerl.Trainer, which binds it")
        if batch.calling and not batch.matched and self.search.steps == 0:
            seen = next((e.run.transcript[:80] for e in batch.examples if e.run.transcript), "")
            raise ConfigError(f"none of the agent's {batch.calling} rollouts sent the system prompt given as APO "
                              f"prompt ({self.prompt[:60]!r}…); give it exactly as the agent sends it (first "
                              f"message, role system). A transcript starts: {seen!r}")
        self.search.count_rollouts(batch.rollouts)
        new = self.search.step(batch.examples)
        best = self.search.best()
        self.write_artifacts(self.access.run_dir)
        metrics = {
            "apo_best_mean": best.mean(), "apo_candidates": float(len(self.search.candidates)),
            "apo_new_candidates": float(len(new)), "apo_rollouts_used": float(self.search.rollouts_used),
            "apo_critic_tokens": float(self.search.critic_tokens), "apo_stopped": float(bool(self.search.stopped)),
        }  # fmt: skip
        # the best is published when it changed (and once after a resume): the bundle keeps naming it otherwise
        resources = {} if best.id == self.published else {PROMPTS_RESOURCE: self.prompts_value(best)}
        self.published = best.id
        return StepResult(metrics=metrics, weights_version=0, resources=resources)

    def write_artifacts(self, run_dir: Path) -> None:
        """``apo_candidates.json`` and ``best_prompt.json`` in ``run_dir`` (see the module docstring)."""
        assert self.search is not None
        best = self.search.best()
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CANDIDATES_FILE).write_text(json.dumps(self.search.to_json(), indent=1, ensure_ascii=False))
        export = {"original": self.prompt, "text": best.text, "demos": best.demos, "candidate": best.id,
                  "mean_val_score": best.mean(), "resource": self.prompts_value(best)}  # fmt: skip
        (run_dir / BEST_FILE).write_text(json.dumps(export, indent=1, ensure_ascii=False))

    def engine_weights(self) -> dict[str, Any] | None:
        return None

    def save(self, folder: Path) -> None:
        assert self.search is not None
        folder.mkdir(parents=True, exist_ok=True)
        state = {"search": self.search.to_json(), "val_tasks": self.val_tasks, "train_items": self.train_items}
        (folder / "apo.json").write_text(json.dumps(state))

    def load(self, folder: Path) -> None:
        state = json.loads((folder / "apo.json").read_text())
        self.val_tasks, self.train_items = state["val_tasks"], state["train_items"]
        self.search = Search(self.search_config, self.prompt, len(self.val_tasks or []), self._score, self.critic)
        self.search.load_json(state["search"])
