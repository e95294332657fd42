"""``tracerl.Trainer``: the training loop that ties store, runners, gateway, credit assignment and GRPO together.

    trainer = tracerl.Trainer(
        agent=sql_agent,                                   # @tracerl.agent function, or "module:function"
        algorithm=tracerl.GRPO(model="smollm2-135m", group_size=4, lr=1e-5),
        store="sqlite:///runs/sql/store.db",               # default: sqlite file in the run folder
        runners=4,
        run_dir="runs/sql", batch_size=2, val_every=5,     # any TrainerConfig field
    )
    result = trainer.fit(train_tasks, val_tasks=val_tasks, epochs=1)
    result.val_before, result.val_after                    # held-out reward (greedy) before/after

One step of :meth:`Trainer.fit`:

1. take the next ``batch_size`` tasks (a fresh seeded shuffle each epoch) and enqueue ``group_size``
   rollouts of each, one group per task, tagged with the current resources version;
2. the runner processes claim them and run the unchanged agent, whose LLM calls go through the in-process
   gateway to the engine and are recorded as spans; wait until every rollout ended;
3. credit assignment reads the transitions and rewards of those rollouts back from the store
   (``algorithm.transitions``; groups with no reward variance carry no signal and are skipped);
4. one GRPO update; the new weights go into the engine (``load_weights``) and a new version of the
   ``resources`` bundle (model, weights version, checkpoint, sampling) is published, so every later
   rollout and LLM call is tagged with the weights that produced it.

Validation (every ``val_every`` steps, and before the first and after the last) runs each held-out task once
with greedy decoding (the runners give ``val`` rollouts ``temperature=0`` through ``llm.sampling``).
Metrics go to ``metrics.jsonl`` (see :mod:`tracerl.metrics`), the plot to ``rewards.png``, checkpoints to
``checkpoints/`` (with ``resume=True`` a run continues from the latest one), the final weights to ``final/``.
Engine, gateway and runners are stopped whatever ends the run (an error, Ctrl-C).

This module is also ``tracerl train CONFIG`` (:func:`add_arguments`, :func:`main`); importing it stays
light (torch and the rest load when a run starts).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import logging
import math
import os
import random
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracerl.config import EngineConfig, RunnerConfig, StoreConfig, TrainerConfig, load_run_config
from tracerl.errors import ConfigError
from tracerl.metrics import METRICS_FILE, PLOT_FILE, MetricsLogger, plot_rewards
from tracerl.trainer_checkpoints import Position, clear_checkpoints, latest_checkpoint, resume, save_checkpoint
from tracerl.trainer_progress import StepProgress
from tracerl.trainer_stack import RESOURCES_NAME, Stack, check_tasks, rollout_reward, run_rollouts, serving

if TYPE_CHECKING:
    from tracerl.algorithms.grpo import GRPO
    from tracerl.store.base import Store

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` did: steps, held-out reward before/after, where the outputs are."""

    steps: int
    val_before: float | None
    val_after: float | None
    history: list[dict[str, Any]]
    run_dir: Path
    metrics_path: Path
    plot_path: Path
    checkpoint: Path | None
    final_model: Path | None
    stopped_by: str  # "epochs", "max_steps" or "time_budget"


class Trainer:
    """Train ``agent`` with ``algorithm``; see the module docstring.

    ``store``: URL (default ``sqlite:///{run_dir}/store.db``); ``runners``: worker processes (or a
    :class:`RunnerConfig`); ``engine``: gateway/engine settings; ``config`` or keyword ``options``: the
    fields of :class:`TrainerConfig` (not both).
    """

    def __init__(
        self,
        agent: Any,
        algorithm: GRPO,
        store: str | None = None,
        runners: int | RunnerConfig = 4,
        *,
        engine: EngineConfig | None = None,
        config: TrainerConfig | None = None,
        **options: Any,
    ) -> None:
        from tracerl.agent import agent_ref

        if config is not None and options:
            raise ConfigError(
                f"pass trainer settings either as config=TrainerConfig(...) or as keywords, not both "
                f"(got config and {sorted(options)})"
            )
        if config is None:
            known = {f.name for f in dataclasses.fields(TrainerConfig)}
            unknown = sorted(set(options) - known)
            if unknown:
                raise ConfigError(f"unknown Trainer option(s) {unknown}; the known options are {sorted(known)}")
            config = TrainerConfig(**options)
        if not all(hasattr(algorithm, a) for a in ("config", "setup", "transitions", "update")):
            raise ConfigError(f"algorithm must be a tracerl.GRPO(...), got {algorithm!r}")
        self.agent_ref = agent_ref(agent)  # fails here, not later in a runner process, if it cannot be imported
        self.algorithm = algorithm
        self.config = config
        self.runners = runners if isinstance(runners, RunnerConfig) else RunnerConfig(n=runners)
        self.engine = engine or EngineConfig()
        self.store_url = StoreConfig(store).url or f"sqlite:///{(config.run_path / 'store.db').resolve()}"

    def fit(
        self,
        train_tasks: Sequence[dict[str, Any]],
        val_tasks: Sequence[dict[str, Any]] | None = None,
        epochs: int | None = None,
    ) -> FitResult:
        """Train on ``train_tasks`` for ``epochs`` passes (default: the config's), validating on
        ``val_tasks`` if given. Returns a :class:`FitResult`."""
        cfg = self.config if epochs is None else dataclasses.replace(self.config, epochs=epochs)
        train = check_tasks(train_tasks, "train_tasks")
        val = check_tasks(val_tasks, "val_tasks") if val_tasks is not None else None
        cfg.run_path.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as es:
            store = _open_store(self.store_url)
            es.callback(store.close)
            store.bind_experiment(cfg.experiment)
            learner_model, tokenizer, engine_model = self._load_models(cfg.seed)
            learner = self.algorithm.setup(learner_model, pad_id=tokenizer.pad_token_id)
            if cfg.resume:
                pos = resume(learner, cfg.run_path, model=self.algorithm.config.model)
            else:
                pos = Position()
                clear_checkpoints(cfg.run_path)
            steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
            total = min(steps_per_epoch * cfg.epochs, cfg.max_steps or math.inf)
            metrics = MetricsLogger(
                cfg.run_path, tensorboard=cfg.tensorboard, wandb=cfg.wandb, experiment=cfg.experiment,
                append=pos.step > 0,
                config={"trainer": dataclasses.asdict(cfg), "algorithm": self.algorithm.config.to_json()},
            )
            es.callback(metrics.close)
            progress = es.enter_context(StepProgress(int(total), start=pos.step, enabled=cfg.progress))
            stack = es.enter_context(
                serving(
                    store, self.store_url, self.agent_ref,
                    model=engine_model, tokenizer=tokenizer, model_name=self.algorithm.config.model,
                    runners=self.runners, engine=self.engine, max_tokens=cfg.max_tokens,
                    sampling={"temperature": cfg.temperature, "max_tokens": cfg.max_tokens},
                )
            )
            run = _Run(self, cfg, stack, learner, pos, metrics, progress, train, val)
            run.loop(steps_per_epoch)
            final_model = _save_final(stack, tokenizer, cfg.run_path)
        title = f"{cfg.experiment}: {self.algorithm.config.model}"
        plot_path = plot_rewards(cfg.run_path / METRICS_FILE, cfg.run_path / PLOT_FILE, title=title)
        return FitResult(
            steps=run.pos.step,
            val_before=run.pos.val_before,
            val_after=run.val_reward if val is not None else None,
            history=run.history,
            run_dir=cfg.run_path,
            metrics_path=cfg.run_path / METRICS_FILE,
            plot_path=plot_path,
            checkpoint=run.checkpoint,
            final_model=final_model,
            stopped_by=run.stopped_by,
        )

    def _load_models(self, seed: int) -> tuple[Any, Any, Any]:
        """The learner's model, the tokenizer, and a separate copy of the weights for the engine."""
        import torch

        from tracerl.engines.models import load_model

        torch.manual_seed(seed)
        model, tokenizer = load_model(self.algorithm.config.model)
        return model, tokenizer, copy.deepcopy(model)


class _Run:
    """The state of one :meth:`Trainer.fit` while it runs (store, services, learner, position, metrics)."""

    def __init__(
        self, trainer: Trainer, cfg: TrainerConfig, stack: Stack, learner: Any, pos: Position,
        metrics: MetricsLogger, progress: StepProgress, train: list[dict[str, Any]], val: list[dict[str, Any]] | None,
    ) -> None:
        self.trainer, self.cfg, self.stack, self.learner, self.pos = trainer, cfg, stack, learner, pos
        self.metrics, self.progress, self.train, self.val = metrics, progress, train, val
        self.algorithm = trainer.algorithm
        self.history: list[dict[str, Any]] = []
        self.val_reward: float | None = pos.val_before
        self.stopped_by = "epochs"
        self.checkpoint: Path | None = latest_checkpoint(cfg.run_path) if pos.step else None
        self.saved_step = pos.step
        self.step_times: list[float] = []
        self.t_start = time.monotonic()
        if learner.weights_version != 0:  # resumed: serve the checkpoint's weights
            stack.engine.load_weights(learner.engine_state_dict(), learner.weights_version)
        self.version = self.publish(learner.weights_version)

    def loop(self, steps_per_epoch: int) -> None:
        cfg, pos = self.cfg, self.pos
        if self.val is not None and pos.step == 0:
            pos.val_before = self.val_reward = self.validate()
        in_update = [False]
        try:
            while (tasks := self.next_batch(steps_per_epoch)) is not None:
                self.train_step(tasks, in_update)
                if self.val is not None and cfg.val_every and pos.step % cfg.val_every == 0:
                    self.val_reward = self.validate()
                if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0:
                    self.save()
        except KeyboardInterrupt:
            if not in_update[0] and pos.step > self.saved_step:
                logger.warning("interrupted: saving a checkpoint of step %d to resume from", pos.step)
                self.save()
            raise
        if self.val is not None and not (self.history and cfg.val_every and pos.step % cfg.val_every == 0):
            self.val_reward = self.validate()
        if pos.step > self.saved_step or self.checkpoint is None:
            self.save()

    def next_batch(self, steps_per_epoch: int) -> list[dict[str, Any]] | None:
        """The tasks of the next step, or None when the epochs, ``max_steps`` or the time budget are used up."""
        cfg, pos = self.cfg, self.pos
        if pos.batch >= steps_per_epoch:
            pos.epoch, pos.batch = pos.epoch + 1, 0
        if pos.epoch >= cfg.epochs:
            self.stopped_by = "epochs"
            return None
        if cfg.max_steps is not None and pos.step >= cfg.max_steps:
            self.stopped_by = "max_steps"
            return None
        recent = self.step_times[-5:]
        expected = sum(recent) / len(recent) if recent else 0.0
        if cfg.time_budget_s is not None and time.monotonic() - self.t_start + expected > cfg.time_budget_s:
            self.stopped_by = "time_budget"
            return None
        order = list(range(len(self.train)))
        random.Random(cfg.seed * 1_000_003 + pos.epoch).shuffle(order)
        return [self.train[i] for i in order[pos.batch * cfg.batch_size : (pos.batch + 1) * cfg.batch_size]]

    def train_step(self, tasks: list[dict[str, Any]], in_update: list[bool]) -> None:
        """Rollouts → credit → update → new weights served and published; logs the step's metrics."""
        from tracerl.types import Mode

        cfg, pos, store = self.cfg, self.pos, self.stack.store
        t0 = time.monotonic()
        self.progress.status(f"step {pos.step + 1}: rollouts")
        groups = run_rollouts(
            store, tasks, group_size=self.algorithm.config.group_size, mode=Mode.TRAIN,
            resources_version=self.version, max_attempts=self.trainer.runners.max_attempts,
            timeout_s=cfg.rollout_timeout_s, tag=_tag(cfg, f"s{pos.step + 1}"), on_progress=self.progress.rollouts,
        )
        rollout_s = time.monotonic() - t0
        rollouts = [r for g in groups for r in g]
        ids = [r.rollout_id for r in rollouts]
        batch = self.algorithm.transitions(store, ids)
        rewards = [rollout_reward(r) for r in rollouts]
        tokens = _response_tokens(store, ids)
        self.progress.status(f"step {pos.step + 1}: update")
        t1 = time.monotonic()
        in_update[0] = True
        result = self.algorithm.update(batch.transitions)
        if result.state_dict is not None:
            self.stack.engine.load_weights(result.state_dict, result.version)
        pos.step += 1
        pos.batch += 1
        in_update[0] = False
        update_s = time.monotonic() - t1
        if result.state_dict is not None:
            self.version = self.publish(result.version)
        record = self.metrics.log("train", pos.step, {
            "epoch": pos.epoch,
            "reward_mean": _mean(rewards),
            "reward_std": _std(rewards),
            "loss": result.metrics.get("loss"),
            "kl": result.metrics.get("kl"),
            "clip_fraction": result.metrics.get("clip_fraction"),
            "grad_norm": result.metrics.get("grad_norm"),
            "tokens_per_s": round(tokens / rollout_s, 1) if rollout_s > 0 else None,
            "rollout_s": round(rollout_s, 3),
            "update_s": round(update_s, 3),
            "groups": batch.groups,
            "skipped_groups": batch.zero_variance_groups,
            "failed_rollouts": sum(r.status.value == "failed" for r in rollouts),
            "transitions": len(batch.transitions),
            "weights_version": result.version,
        })
        self.history.append(record)
        self.step_times.append(time.monotonic() - t0)
        self.progress.step_done(pos.step, record)

    def validate(self) -> float:
        """Run every held-out task once (greedy) and log the mean reward (failed rollouts count 0)."""
        from tracerl.types import Mode

        assert self.val is not None
        cfg, step = self.cfg, self.pos.step
        self.progress.status(f"validating on {len(self.val)} tasks")
        t0 = time.monotonic()
        groups = run_rollouts(
            self.stack.store, self.val, group_size=1, mode=Mode.VAL, resources_version=self.version,
            max_attempts=self.trainer.runners.max_attempts, timeout_s=cfg.rollout_timeout_s,
            tag=_tag(cfg, f"v{step}"), on_progress=self.progress.rollouts,
        )
        rewards = [rollout_reward(g[0]) for g in groups]
        value = _mean(rewards)
        self.metrics.log("val", step, {
            "val_reward": value,
            "n": len(rewards),
            "failed_rollouts": sum(g[0].status.value == "failed" for g in groups),
            "val_s": round(time.monotonic() - t0, 3),
        })
        self.progress.validated(step, value)
        logger.info("step %d: held-out reward %.3f on %d tasks", step, value, len(rewards))
        return value

    def publish(self, weights_version: int) -> int:
        """A new version of the resources bundle the runners hand to the agent; returns its version."""
        value = {
            "model": self.algorithm.config.model,
            "weights_version": weights_version,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "sampling": {"temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens},
        }
        return self.stack.store.put_resource(RESOURCES_NAME, value).version

    def save(self) -> None:
        self.checkpoint = save_checkpoint(self.learner, self.cfg.run_path, self.pos, model=self.algorithm.config.model)
        self.saved_step = self.pos.step


# -- helpers ---------------------------------------------------------------------------------------------


def _open_store(url: str) -> Store:
    from tracerl.store import connect

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return connect(url)


def _tag(cfg: TrainerConfig, what: str) -> str:
    """A group-id prefix unique to this step of this run (so reruns on one store never share groups)."""
    return f"{cfg.experiment}-{what}-{os.getpid()}-{time.time_ns() // 1_000_000}"


def _save_final(stack: Stack, tokenizer: Any, run_dir: Path) -> Path | None:
    """The weights the engine serves now, as a Hugging Face folder (``from_pretrained`` loads it)."""
    path = run_dir / "final"
    try:
        stack.engine.model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    except Exception:
        logger.exception("could not save the final model to %s", path)
        return None
    return path


def _response_tokens(store: Store, rollout_ids: Sequence[str]) -> int:
    from tracerl.types import SpanKind

    return sum(
        len(s.response_ids or [])
        for rid in rollout_ids
        for s in store.get_spans(rollout_id=rid)
        if s.kind is SpanKind.LLM_CALL
    )


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _std(xs: Sequence[float]) -> float:
    """Population standard deviation ``sqrt(mean((x − mean x)²))``."""
    if not xs:
        return float("nan")
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


# -- `tracerl train CONFIG` ----------------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Inside the block, SIGTERM (a job scheduler, ``kill``) stops a run like Ctrl-C does: runners, gateway
    and engine are shut down and a checkpoint is saved. The previous handler is restored afterwards."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a run configuration in TOML (layout: see the tracerl.config docstring)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a checkpoint")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tracerl.algorithms.grpo import GRPO
    from tracerl.trainer_tasks import load_tasks

    console = Console()
    run = load_run_config(args.config)
    trainer_cfg = run.trainer
    if args.no_resume:
        trainer_cfg = dataclasses.replace(trainer_cfg, resume=False)
    if args.max_steps is not None:
        trainer_cfg = dataclasses.replace(trainer_cfg, max_steps=args.max_steps)
    train = load_tasks(run.train_tasks)
    val = load_tasks(run.val_tasks) if run.val_tasks else None
    options = dict(run.algorithm)
    model = options.pop("model")
    trainer = Trainer(
        agent=run.agent,
        algorithm=GRPO(model, **options),
        store=run.store.url,
        runners=run.runners,
        engine=run.engine,
        config=trainer_cfg,
    )
    with stop_on_sigterm():
        result = trainer.fit(train, val_tasks=val)
    if result.val_before is not None and result.val_after is not None:
        console.print(f"held-out reward: before {result.val_before:.3f} → after {result.val_after:.3f}")
    console.print(f"{result.steps} steps (stopped by {result.stopped_by}); metrics {result.metrics_path}, "
                  f"plot {result.plot_path}")
    return 0
