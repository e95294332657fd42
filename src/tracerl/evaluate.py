"""``tracerl.evaluate``: run an agent on each task against a model (greedy, or sampled for pass@k) and return
what happened.

    results = tracerl.evaluate(sql_agent, test_tasks, model="smollm2-135m", store="sqlite:///runs/eval.db")
    results.mean_reward                      # failed rollouts count as 0
    results[0].reward, results[0].status, results[0].error
    results[0].calls[0].text                 # each recorded LLM call: messages, text, prompt_ids,
                                             # response_ids, logprobs, finish_reason

    sampled = tracerl.evaluate(sql_agent, test_tasks, samples=16, temperature=1.0)
    sampled.pass_at(1), sampled.pass_at(16)  # unbiased pass@k (tracerl.stats.pass_at_k)
    sampled.by_task()[0]                     # task 0's 16 results

Sampled evaluation is the check to run before an RL stage: RL reweights what the policy already samples, so
where pass@k on held-out tasks is no higher than greedy pass@1, there is little for it to find.

It uses the same pieces as training (engine, gateway, runner processes, the store), so an agent that
evaluates correctly trains correctly. Rollouts run in mode ``test``: the runners hand the agent
``temperature=0`` (or the sampled evaluation's ``temperature``) through ``llm.sampling``. ``model`` is a short
name (``smollm2-135m``, ``tiny-random``) or a model folder, for example the ``final/`` folder a training run
wrote. The default store is in memory (nothing is written to disk); pass a sqlite/postgres URL to keep the
recorded calls.

Importing this module is light (torch loads when :func:`evaluate` runs).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from tracerl.config import EngineConfig, RunnerConfig, StoreConfig
from tracerl.errors import ConfigError, NotFound
from tracerl.stats import pass_at_k
from tracerl.store import connect
from tracerl.store.base import Store
from tracerl.train.launcher import check_tasks, load_role_models, rollout_reward, run_rollouts, serving
from tracerl.types import SAMPLING_KEY, Mode, Rollout, Span, SpanKind

logger = logging.getLogger(__name__)


@dataclass
class Call:
    """One recorded LLM call: the request's messages (chat) or prompt (completions), the reply text, and
    the exact token ids with the log-probs of the sampled tokens."""

    messages: list[dict[str, Any]] | None
    prompt: Any
    text: str
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    finish_reason: str | None
    weights_version: int | None
    #: the model name that answered (an agent with several roles names one per role)
    model: str | None = None

    @classmethod
    def from_span(cls, span: Span) -> Call:
        attrs = span.attributes
        request = attrs.get("request") or {}
        choices = (attrs.get("response") or {}).get("choices") or [{}]
        choice = choices[0]
        text = (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text")
        return cls(
            messages=request.get("messages"),
            prompt=request.get("prompt"),
            text=text or "",
            prompt_ids=list(span.prompt_ids or []),
            response_ids=list(span.response_ids or []),
            logprobs=list(span.logprobs or []),
            finish_reason=attrs.get("finish_reason"),
            weights_version=attrs.get("weights_version"),
            model=attrs.get("model"),
        )


@dataclass
class EvalResult:
    """One task's outcome. ``reward`` is None when the rollout failed (``status == "failed"``, see ``error``)."""

    task: dict[str, Any]
    rollout_id: str
    status: str
    reward: float | None
    error: str | None
    calls: list[Call] = field(default_factory=list)


class EvalResults(Sequence[EvalResult]):
    """The results in task order, with ``mean_reward`` (failed rollouts count 0) and the store URL. With
    ``samples`` rollouts per task, each task's results lie next to each other (:meth:`by_task` groups them)."""

    def __init__(self, results: list[EvalResult], store_url: str, seconds: float, samples: int = 1) -> None:
        if samples < 1 or len(results) % samples:
            raise ValueError(f"{len(results)} results do not split into groups of samples={samples}")
        self._results = results
        self.store_url = store_url
        self.seconds = seconds
        self.samples = samples

    @property
    def mean_reward(self) -> float:
        """The mean over every rollout: with ``samples`` > 1, the expected reward of one sampled answer."""
        rewards = [r.reward if r.reward is not None else 0.0 for r in self._results]
        return sum(rewards) / len(rewards) if rewards else math.nan

    def by_task(self) -> list[list[EvalResult]]:
        """The results grouped per task, in task order (each group holds ``samples`` results)."""
        k = self.samples
        return [self._results[i : i + k] for i in range(0, len(self._results), k)]

    def pass_at(self, k: int = 1, *, threshold: float = 1.0) -> float:
        """pass@k averaged over the tasks, estimated without bias from each task's ``samples`` results
        (:func:`tracerl.stats.pass_at_k`); a result passes when its reward is ≥ ``threshold`` (a failed rollout
        never passes). ``k`` ≤ ``samples``."""
        if not isinstance(k, int) or not 1 <= k <= self.samples:
            raise ConfigError(f"pass_at(k={k!r}) needs 1 ≤ k ≤ samples ({self.samples}); evaluate with samples ≥ k")
        groups = self.by_task()
        if not groups:
            return math.nan
        passed = [sum(r.reward is not None and r.reward >= threshold for r in g) for g in groups]
        return sum(pass_at_k(self.samples, c, k) for c in passed) / len(groups)

    @property
    def failed(self) -> int:
        return sum(r.status != "succeeded" for r in self._results)

    @overload
    def __getitem__(self, i: int) -> EvalResult: ...
    @overload
    def __getitem__(self, i: slice) -> list[EvalResult]: ...
    def __getitem__(self, i: int | slice) -> EvalResult | list[EvalResult]:
        return self._results[i]

    def __len__(self) -> int:
        return len(self._results)

    def __iter__(self) -> Iterator[EvalResult]:
        return iter(self._results)

    def __repr__(self) -> str:
        per_task = f", samples={self.samples}" if self.samples > 1 else ""
        return f"EvalResults(n={len(self)}{per_task}, mean_reward={self.mean_reward:.4f}, failed={self.failed})"


def evaluate(
    agent: Any,
    tasks: Sequence[dict[str, Any]],
    *,
    model: str = "smollm2-135m",
    store: str | None = None,
    runners: int | RunnerConfig = 4,
    engine: EngineConfig | None = None,
    max_tokens: int = 256,
    timeout_s: float = 3600.0,
    token: str | None = None,
    prompts_version: int | None = None,
    prompts: dict[str, Any] | None = None,
    roles: dict[str, str | None] | None = None,
    samples: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
) -> EvalResults:
    """Run ``agent`` once on each of ``tasks`` with ``model`` (greedy) and return the :class:`EvalResults`.

    ``store``: where rollouts and calls are recorded (default ``memory://``); ``runners``: agent worker
    processes; ``max_tokens``: the completion length for calls that do not set one; ``timeout_s``: the
    limit for the whole evaluation; ``token``: the bearer token of a ``tracerl serve --token`` store
    (default: ``TRACERL_TOKEN``). ``prompts_version``: run with that version of the store's ``prompts``
    resource (the gateway substitutes matched system prompts: :mod:`tracerl.prompts`); ``prompts``: a
    ``prompts`` resource value (for example APO's exported ``best_prompt.json``) published first and run.
    ``roles``: for an agent with several roles that each name their own ``model`` (as in ``Trainer(roles=...)``),
    role name → None (served by ``model``) or a model name/folder served beside it; each call's ``model`` says
    which role answered it.

    ``samples``: rollouts per task (default 1), for pass@k (:meth:`EvalResults.pass_at`); more than one needs a
    ``temperature`` above 0. ``temperature``/``top_p``: sample every call instead of decoding greedily (the
    runners hand them to the agent through ``llm.sampling``; a call that sets no temperature is served with it).
    """
    from tracerl.agent import agent_ref
    from tracerl.engines.models import load_model

    checked = check_tasks(tasks, "tasks")
    sampling = _eval_sampling(samples, temperature, top_p)
    ref = agent_ref(agent)
    runner_cfg = runners if isinstance(runners, RunnerConfig) else RunnerConfig(n=runners, max_attempts=1)
    url = StoreConfig(store).url or "memory://"
    t0 = time.monotonic()
    with contextlib.ExitStack() as es:
        st: Store = connect(url, token=token)
        es.callback(st.close)
        metadata = _prompts_metadata(st, prompts_version, prompts)
        if sampling:
            metadata[SAMPLING_KEY] = sampling
        served = _role_models(roles)  # checked (and the other roles' models loaded) before the evaluated one
        hf_model, tokenizer = load_model(model)
        stack = es.enter_context(
            serving(
                st, url, ref, model=hf_model, tokenizer=tokenizer, model_name=model, runners=runner_cfg,
                engine=engine or EngineConfig(), max_tokens=max_tokens, sampling={"max_tokens": max_tokens},
                token=token, roles=served,
            )
        )
        groups = run_rollouts(
            stack.store, checked, group_size=samples, mode=Mode.TEST, resources_version=None,
            max_attempts=runner_cfg.max_attempts, timeout_s=timeout_s, tag=f"eval-{time.time_ns()}",
            metadata=metadata,
        )
        results = [_result(st, task, r) for task, g in zip(checked, groups, strict=True) for r in g]
    out = EvalResults(results, url, time.monotonic() - t0, samples=samples)
    logger.info("evaluated %d tasks with %s: mean reward %.4f", len(out), model, out.mean_reward)
    return out


def _eval_sampling(samples: int, temperature: float | None, top_p: float | None) -> dict[str, float]:
    """The rollouts' sampling settings (empty: greedy), checked."""
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ConfigError(f"samples must be a whole number ≥ 1 (rollouts per task), got {samples!r}")
    sampling: dict[str, float] = {}
    for name, value, ok, want in (
        ("temperature", temperature, lambda v: 0 <= v <= 100, "between 0 (greedy) and 100, e.g. 1.0"),
        ("top_p", top_p, lambda v: 0 < v <= 1, "in (0, 1], e.g. 0.95"),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not ok(value):
            raise ConfigError(f"{name} must be a number {want}, got {value!r}")
        sampling[name] = float(value)
    if samples > 1 and not sampling.get("temperature"):
        raise ConfigError(
            f"samples={samples} with greedy decoding gives {samples} copies of one answer; set temperature "
            "(e.g. temperature=1.0, the temperature RL samples at) to draw different ones"
        )
    if sampling.get("temperature") == 0.0:
        del sampling["temperature"]  # greedy is what an evaluation does anyway
    return sampling


def _role_models(roles: dict[str, str | None] | None) -> dict[str, Any] | None:
    """``roles`` with each other model loaded (None: the evaluated model); at least one role must be None."""
    if roles is None:
        return None
    if not isinstance(roles, dict) or not roles or not all(
        isinstance(name, str) and (m is None or isinstance(m, str)) for name, m in roles.items()
    ):
        raise ConfigError(f"roles must map role names to None or a model name, got {roles!r}")
    if all(m is not None for m in roles.values()):
        raise ConfigError(
            f"roles {roles!r} names no role for the evaluated model: map its role(s) to None, e.g. "
            "roles={'solver': None, 'planner': 'smollm2-135m'}"
        )
    return load_role_models(roles)


def _result(store: Store, task: dict[str, Any], rollout: Rollout) -> EvalResult:
    attempts = store.get_attempts(rollout.rollout_id)
    spans = store.get_spans(attempt_id=attempts[-1].attempt_id) if attempts else []
    calls = [Call.from_span(s) for s in spans if s.kind is SpanKind.LLM_CALL]
    succeeded = rollout.status.value == "succeeded"
    return EvalResult(
        task=task,
        rollout_id=rollout.rollout_id,
        status=rollout.status.value,
        reward=rollout_reward(rollout) if succeeded and rollout.reward is not None else None,
        error=rollout.error,
        calls=calls,
    )


def _prompts_metadata(store: Store, version: int | None, value: dict[str, Any] | None) -> dict[str, Any]:
    """The rollout metadata that runs a prompts version (checked to exist and parse before anything runs)."""
    from tracerl.prompts import PROMPTS_RESOURCE, PROMPTS_VERSION_KEY, PromptBook

    if version is not None and value is not None:
        raise ConfigError("give evaluate either prompts_version (a version in the store) or prompts (a value to "
                          "publish), not both")
    if value is not None:
        if not isinstance(value, dict):
            raise ConfigError(f"prompts must be a prompts resource value (a dict), got {type(value).__name__}")
        from tracerl.prompts import PromptTable

        PromptTable.from_value(0, value)
        version = store.put_resource(PROMPTS_RESOURCE, value).version
    if version is None:
        return {}
    try:
        PromptBook(store).table(version)
    except NotFound as e:
        raise ConfigError(f"unknown prompts_version {version}: {e}") from None
    return {PROMPTS_VERSION_KEY: version}
