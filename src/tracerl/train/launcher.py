"""The local launcher: the running pieces a training or evaluation run needs, started and stopped together.

:func:`serving` puts the model into an in-process :class:`~tracerl.engines.hf.HFEngine` (or, with
``EngineConfig(kind="vllm")``, a :class:`~tracerl.engines.vllm.VLLMEngine` server), starts the
OpenAI-compatible gateway on loopback in front of it (recording into the store), and starts the runner
worker processes that claim rollouts from the store and run the agent against the gateway::

    with serving(store, store_url, agent, model=m, tokenizer=t, model_name="tiny-random",
                 runners=RunnerConfig(n=4), engine=EngineConfig(), max_tokens=64) as stack:
        rollouts = run_rollouts(stack.store, tasks, group_size=8, mode=Mode.TRAIN, resources_version=v)
        ...
        stack.engine.load_weights(new_state_dict, version=v + 1)

Everything is shut down in reverse order when the ``with`` block ends, by an exception or Ctrl-C too:
runners first (no new LLM calls), then the gateway, then the engine's worker thread.

:func:`run_rollouts` is the one place that enqueues tasks (``group_size`` rollouts per task sharing a group
id, tagged with the resources version) and waits for all of them to end.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from tracerl.config import EngineConfig, RunnerConfig
from tracerl.errors import ConfigError, IllegalTransition, InvalidInput, Timeout
from tracerl.store.base import Store
from tracerl.types import Mode, Rollout, RolloutSpec, RolloutStatus

logger = logging.getLogger(__name__)

#: seconds the runners get to finish rollouts in flight when the run stops
STOP_GRACE_S = 5.0
#: the store resource the runners read for each rollout (model name, sampling defaults, weights version)
RESOURCES_NAME = "resources"


@dataclass
class Stack:
    """The running services of a run."""

    store: Store
    engine: Any  # a tracerl.engines.base.TokenEngine (HFEngine or VLLMEngine)
    gateway: Any  # the running gateway (``.url``)
    runners: Any  # the running runner pool
    model_name: str
    #: role -> the engine serving it (an agent with several roles; empty otherwise)
    engines: dict[str, Any] = field(default_factory=dict[str, Any])

    @property
    def gateway_url(self) -> str:
        return str(self.gateway.url)


def check_tasks(tasks: Sequence[Any], what: str) -> list[dict[str, Any]]:
    """``tasks`` as a list of JSON objects, or :class:`InvalidInput` naming the first bad one."""
    if isinstance(tasks, (str, bytes, dict)) or not isinstance(cast(object, tasks), Sequence):
        raise InvalidInput(f"{what} must be a list of task dicts, got {type(tasks).__name__}")
    out = list(tasks)
    if not out:
        raise InvalidInput(f"{what} is empty; pass at least one task (a dict)")
    for i, task in enumerate(out):
        if not isinstance(task, dict):
            raise InvalidInput(f"{what}[{i}] must be a dict (a JSON object), got {type(task).__name__}: {task!r}")
    return out


def agent_reference(agent: Any) -> Any:
    """The import reference runner processes load the agent from (see :func:`tracerl.agent.agent_ref`)."""
    from tracerl.agent import agent_ref

    return agent_ref(agent)


@contextlib.contextmanager
def serving(
    store: Store,
    store_url: str,
    agent: Any,
    *,
    model: Any,
    tokenizer: Any,
    model_name: str,
    runners: RunnerConfig,
    engine: EngineConfig,
    max_tokens: int,
    sampling: dict[str, Any] | None = None,
    device: str | None = None,
    token: str | None = None,
    roles: Mapping[str, tuple[Any, Any] | None] | None = None,
) -> Generator[Stack, None, None]:
    """Start engine, gateway and runners for ``agent`` on ``store``; stop them all on exit.

    ``roles`` (an agent with several roles, each naming its own ``model``): role name → None for the
    model given as ``model`` (served under that name), or ``(model, tokenizer)`` of another model served
    beside it in an engine of its own (roles given the same tuple object share one engine; the caller may
    load new weights into it: ``Stack.engines[role]``); the gateway routes each call by its model name
    (:mod:`tracerl.gateway.routing`).

    ``max_tokens`` is the gateway's completion length for requests that do not set one; ``sampling`` the
    defaults the runners put on the agent's ``llm`` handle (``**llm.sampling``). The engine runs on
    ``engine.device`` if set, else on ``device`` (the trainer passes the learner's, so weight updates
    never cross devices), else on the CPU; in ``engine.dtype`` (None: bf16 where the device runs it
    natively, else fp32). ``token``: the bearer token the runners send to an ``http://`` store.
    """
    from tracerl.engines.hf import HFEngine
    from tracerl.gateway.app import start_gateway
    from tracerl.runner import start_runners

    ref = agent_reference(agent)
    with contextlib.ExitStack() as stack:
        on = engine.device or device or "cpu"
        hf = _start_engine(engine, model, tokenizer, model_name, on)
        stack.callback(_close_engine, hf)
        engines: Any = hf
        if roles:
            engines = {}
            started: dict[int, Any] = {}  # id of a (model, tokenizer) tuple -> its engine
            for name, other in roles.items():
                if other is None:
                    engines[name] = hf
                    continue
                if id(other) not in started:
                    started[id(other)] = HFEngine(other[0].to(serving_dtype(engine.dtype, on)), other[1], name,
                                                  device=on, max_batch_size=engine.max_batch_size)  # fmt: skip
                    stack.callback(_close_engine, started[id(other)])
                engines[name] = started[id(other)]
        gateway = start_gateway(
            store, engines, model_name=None if roles else model_name, host=engine.host, port=engine.port,
            default_max_tokens=max_tokens,
        )
        stack.callback(_stop, gateway, "gateway")
        # a memory:// store lives in this process: the runner threads share the object; any other store is
        # reached by URL, one connection per worker
        options: dict[str, Any] = dict(
            timeout_s=runners.timeout_s, model=model_name, sampling=dict(sampling or {}),
            resources_name=RESOURCES_NAME, grace_s=STOP_GRACE_S, token=token,
        )  # fmt: skip
        if runners.ray is not None:  # actors on a Ray cluster (they reach the gateway at engine.host)
            from tracerl.runner.ray_pool import RayRunners

            pool: Any = RayRunners(
                ref, store_url, gateway.url, address=runners.ray, actors=runners.actors, workers_per_actor=runners.n,
                **options,
            ).start()  # fmt: skip
        elif runners.n == 0:  # runners elsewhere (`tracerl runner` on other machines) share the store
            if store_url.startswith("memory://"):
                raise ConfigError(
                    "runners.n = 0 leaves the rollouts to runners elsewhere, which cannot reach a memory:// store; "
                    "use postgresql://… or http://… (a `tracerl serve`), or n ≥ 1"
                )
            pool = None
        else:
            pool = start_runners(
                ref, store if store_url.startswith("memory://") else store_url, gateway.url, n_workers=runners.n,
                **options,
            )  # fmt: skip
        if pool is not None:
            stack.callback(_stop, pool, "runners")
        yield Stack(store=store, engine=hf, gateway=gateway, runners=pool, model_name=model_name,
                    engines=dict(engines) if roles else {})  # fmt: skip


def load_role_models(roles: Mapping[str, str | None]) -> dict[str, tuple[Any, Any] | None]:
    """``roles`` (role name → None or a model name/folder) with each named model loaded as ``(model,
    tokenizer)``, for :func:`serving`'s ``roles``; None stays None (the served model). A model named by several
    roles is loaded once, so those roles share one engine."""
    from tracerl.engines.models import load_model

    loaded: dict[str, tuple[Any, Any]] = {}
    for name in roles.values():
        if name is not None and name not in loaded:
            loaded[name] = load_model(name)
    return {role: None if name is None else loaded[name] for role, name in roles.items()}


def _start_engine(engine: EngineConfig, model: Any, tokenizer: Any, model_name: str, device: str) -> Any:
    """The engine of the trained model: an in-process :class:`HFEngine` on ``device``, or (``engine.kind =
    "vllm"``) a vLLM server started on a copy of ``model`` saved to the engine's work folder."""
    if engine.kind == "vllm":
        from tracerl.engines.vllm import VLLMEngine

        return VLLMEngine.from_model(
            model, tokenizer, model_name, python=engine.vllm_python, dtype=engine.dtype,
            weight_sync=engine.weight_sync,  # type: ignore[arg-type]  # checked by EngineConfig
            extra_args=["--max-num-seqs", str(engine.max_batch_size), *engine.vllm_args],
        )  # fmt: skip
    from tracerl.engines.hf import HFEngine

    return HFEngine(model.to(serving_dtype(engine.dtype, device)), tokenizer, model_name, device=device,
                    max_batch_size=engine.max_batch_size)  # fmt: skip


def serving_dtype(requested: str | None, device: str) -> Any:
    """The torch dtype the engine serves in: ``requested``, or bf16 where ``device`` runs it natively."""
    import torch

    from tracerl.algorithms.policy import bf16_supported

    if requested is not None:
        return getattr(torch, requested)
    return torch.bfloat16 if bf16_supported(torch.device(device)) else torch.float32


def _stop(service: Any, what: str) -> None:
    try:
        service.stop()
    except Exception:
        logger.exception("stopping the %s failed", what)


def _close_engine(engine: Any) -> None:
    import asyncio

    try:
        asyncio.run(engine.aclose())
    except Exception:
        logger.exception("stopping the engine failed")


def run_rollouts(
    store: Store,
    tasks: Sequence[dict[str, Any]],
    *,
    group_size: int,
    mode: Mode,
    resources_version: int | None,
    max_attempts: int,
    timeout_s: float,
    tag: str = "",
    on_progress: Callable[[int, int], None] | None = None,
    metadata: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
) -> list[list[Rollout]]:
    """Enqueue ``group_size`` rollouts of each task (one group per task) and wait until all have ended.

    Returns the final rollouts grouped per task, in task order. Raises :class:`~tracerl.errors.Timeout` if
    they are not all final after ``timeout_s`` (the unfinished ones are cancelled first, so no runner keeps
    working on them). ``on_progress(done, total)`` is called as rollouts finish. ``metadata`` goes into every
rollout, or (a list) into each task's (``{"prompts_version": N}`` makes the gateway serve that prompts
version: :mod:`tracerl.prompts`).
    """
    run_tag = tag or uuid.uuid4().hex[:8]
    specs: list[RolloutSpec] = []
    per_task = list(metadata) if isinstance(metadata, Sequence) else [metadata or {}] * len(tasks)
    if len(per_task) != len(tasks):
        raise ValueError(f"run_rollouts got {len(per_task)} metadata for {len(tasks)} tasks")
    for i, task in enumerate(tasks):
        group_id = f"{run_tag}-g{i}"
        for _ in range(group_size):
            specs.append(
                RolloutSpec(
                    task=task,
                    mode=mode,
                    group_id=group_id,
                    max_attempts=max_attempts,
                    resources_version=resources_version,
                    metadata=dict(per_task[i]),
                )
            )
    rollouts = store.enqueue(specs)
    ids = [r.rollout_id for r in rollouts]
    deadline = time.monotonic() + timeout_s
    done: dict[str, Rollout] = {}
    while len(done) < len(ids):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pending = [rid for rid in ids if rid not in done]
            not_cancelled = _cancel(store, pending)
            raise Timeout(
                f"{len(pending)} of {len(ids)} rollouts did not finish within {timeout_s:.0f} s; are the runners "
                "alive and the agent's calls reaching the gateway? (raise trainer.rollout_timeout_s if they are slow)"
                + (f"; cancelling {len(not_cancelled)} of them failed too ({not_cancelled[0]})" if not_cancelled
                   else "")
            )
        waiting = [rid for rid in ids if rid not in done]
        for r in store.wait(waiting, timeout_s=min(remaining, 0.5)):
            done[r.rollout_id] = r
        if on_progress is not None:
            on_progress(len(done), len(ids))
    ordered = [done[rid] for rid in ids]
    return [ordered[i * group_size : (i + 1) * group_size] for i in range(len(tasks))]


def _cancel(store: Store, rollout_ids: Sequence[str]) -> list[str]:
    """Cancel each rollout; returns a description of every cancel that failed (none is silently dropped)."""
    failed: list[str] = []
    for rid in rollout_ids:
        try:
            store.cancel(rid)
        except Exception as e:  # a rollout that ended meanwhile cannot be cancelled: that is fine
            if not isinstance(e, IllegalTransition):
                logger.warning("could not cancel rollout %s: %s", rid, e)
                failed.append(f"{rid}: {type(e).__name__}: {e}")
    return failed


def rollout_reward(rollout: Rollout) -> float:
    """The reward a rollout counts for in metrics: its final reward, 0 if it failed or returned none."""
    if rollout.status is RolloutStatus.SUCCEEDED and rollout.reward is not None:
        return float(rollout.reward)
    return 0.0
