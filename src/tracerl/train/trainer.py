"""``tracerl.Trainer``: the training loop that ties store, runners, gateway and an algorithm together.

    trainer = tracerl.Trainer(
        agent=sql_agent,                                   # @tracerl.agent function, or "module:function"
        algorithm=tracerl.GRPO(model="smollm2-135m", group_size=4, lr=1e-5),
        store="sqlite:///runs/sql/store.db",               # default: sqlite file in the run folder
        runners=8,
        run_dir="runs/sql", batch_size=2, val_every=5,     # any TrainerConfig field
    )
    result = trainer.fit(train_tasks, val_tasks=val_tasks)
    result.val_before, result.val_after                    # held-out reward (greedy) before/after

``algorithm`` may also be a list of stages run one after the other on the same model, each an algorithm or
a :class:`Stage` (an algorithm plus its own stopping rules): ``[Stage(SFT(...), epochs=2), GRPO(...)]``.
The Trainer knows only the :class:`~tracerl.algorithms.base.Algorithm` protocol. One step of a stage:

1. take the next ``batch_size`` items of the stage (a fresh seeded shuffle each epoch) and, when the
   algorithm wants rollouts, enqueue ``group_size`` rollouts of each (one group per item), tagged with the
   current resources version; the runner processes run the unchanged agent, whose LLM calls go through the
   in-process gateway to the engine and are recorded; wait until every rollout ended;
2. ``algorithm.make_batch`` turns them into a batch (credit assignment). With ``dynamic_sampling`` a step
   that holds fewer informative groups (reward variance > 0) than ``batch_size`` samples more groups, up to
   ``max_sampled_groups × batch_size`` in all, and trains on the informative ones it got. ``balance_by`` (a
   task field) interleaves each epoch's order so every step takes each kind of task in its share, and makes a
   dynamic-sampling step wait for each kind's share of informative groups;
3. ``algorithm.update``; new weights go into the engine and a new version of the ``resources`` bundle
   (model, stage, weights version, checkpoint, sampling) is published, so every later rollout and LLM call
   is tagged with the weights that produced it.

Validation (every ``val_every`` steps, before the first step and after each stage) runs each held-out task
once with greedy decoding. Metrics go to ``metrics.jsonl`` (see :mod:`tracerl.metrics`), the plot to
``rewards.png`` (stage boundaries marked), checkpoints to ``checkpoints/`` (with ``resume=True`` a run
continues from the latest one, in the stage where it stopped), the final weights to ``final/``. Engine,
gateway and runners are stopped whatever ends the run (an error, Ctrl-C).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tracerl.algorithms.base import Algorithm, check_algorithm
from tracerl.config import STAGE_FIELDS, EngineConfig, RunnerConfig, StoreConfig, TrainerConfig
from tracerl.errors import ConfigError, TracerlError
from tracerl.metrics import METRICS_FILE, PLOT_FILE, MetricsLogger, plot_rewards
from tracerl.train import checkpoints as ckpt
from tracerl.train.data import interleaved_order
from tracerl.train.launcher import (
    RESOURCES_NAME,
    Stack,
    check_tasks,
    load_role_models,
    rollout_reward,
    run_rollouts,
    serving,
)
from tracerl.train.pipeline import PendingUpdate
from tracerl.train.progress import StepProgress
from tracerl.train.roles import RoleModels, RolesResult, check_frozen_roles

if TYPE_CHECKING:
    from tracerl.store.base import Store
    from tracerl.types import Rollout

logger = logging.getLogger(__name__)


@dataclass
class Stage:
    """One stage of a run: an algorithm and, optionally, its own values of the :data:`STAGE_FIELDS` of
    :class:`~tracerl.config.TrainerConfig` (``epochs``, ``max_steps``, ``time_budget_s``, ...)."""

    algorithm: Any
    epochs: int | None = None
    max_steps: int | None = None
    time_budget_s: float | None = None
    batch_size: int | None = None
    val_every: int | None = None
    temperature: float | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        check_algorithm(self.algorithm)

    def config(self, base: TrainerConfig) -> TrainerConfig:
        """``base`` with this stage's own values (validated again)."""
        own = {k: getattr(self, k) for k in STAGE_FIELDS if getattr(self, k) is not None}
        return dataclasses.replace(base, **own)


@dataclass
class StageResult:
    name: str
    steps: int
    val_after: float | None
    seconds: float
    stopped_by: str  # "epochs", "max_steps" or "time_budget"


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` did: steps, held-out reward before/after (and after each stage), outputs."""

    steps: int
    val_before: float | None
    val_after: float | None
    history: list[dict[str, Any]]
    run_dir: Path
    metrics_path: Path
    plot_path: Path
    checkpoint: Path | None
    final_model: Path | None
    stopped_by: str
    stages: list[StageResult] = field(default_factory=list[StageResult])


def as_stages(algorithm: object) -> list[Stage]:
    """One algorithm, a :class:`Stage`, a list of either, or a dict role → algorithm (several trained models,
    :mod:`tracerl.train.roles`: one stage) → the list of stages."""
    if isinstance(algorithm, Mapping):
        return [Stage(RoleModels(cast("Mapping[Any, object]", algorithm)))]
    many = isinstance(algorithm, (list, tuple))
    items = list(cast("Sequence[object]", algorithm)) if many else [algorithm]
    if not items:
        raise ConfigError("algorithm is an empty list; give an algorithm such as tracerl.GRPO(...) or a list of stages")
    if any(isinstance(s, Mapping) or isinstance(getattr(s, "algorithm", None), Mapping) for s in items):
        raise ConfigError(
            "a per-role algorithm dict (several trained models) cannot be a stage of a list: give the dict itself "
            "as algorithm= (one stage); chain stages in separate runs, starting from the final/{role}/ weights"
        )
    stages = [s if isinstance(s, Stage) else Stage(s) for s in items]
    models = {s.algorithm.model for s in stages}
    if len(models) > 1:
        raise ConfigError(f"the stages of one run train one model, got {sorted(models)}; use one model name")
    return stages


class Trainer:
    """Train ``agent`` with ``algorithm`` (one or several stages); see the module docstring.

    ``store``: URL (default ``sqlite:///{run_dir}/store.db``); ``runners``: worker processes (or a
    :class:`RunnerConfig`); ``engine``: gateway/engine settings; ``config`` or keyword ``options``: the
    fields of :class:`TrainerConfig` (not both); ``callbacks``: functions called after every training step
    with the step's metrics record and the algorithm (e.g. to snapshot weights or stop early by raising);
    ``token``: the bearer token of a ``tracerl serve --token`` store (default: ``TRACERL_TOKEN``);
    ``roles``: for an agent with several roles that each name their own ``model``, role name → None (the
    model being trained, served under that name) or a model name/folder served frozen beside it. Train only
    the calls of the trained roles with the algorithm's ``train_models`` (e.g. ``GRPO(train_models=[...])``); a
    role mapped to None but left out of ``train_models`` is served by the trained model and not trained.
    Several trained models: ``algorithm={"planner": GRPO(...), "solver": GRPO(...)}`` (each role its own
    weights, optimizer and engine; ``roles`` then maps only the frozen roles; :mod:`tracerl.train.roles`).
    """

    def __init__(
        self,
        agent: Any,
        algorithm: Any,
        store: str | None = None,
        runners: int | RunnerConfig = 8,
        *,
        engine: EngineConfig | None = None,
        config: TrainerConfig | None = None,
        callbacks: Sequence[Callable[[dict[str, Any], Any], None]] = (),
        token: str | None = None,
        roles: dict[str, str | None] | None = None,
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
        from tracerl.engines.models import check_model_name

        self.stages = as_stages(algorithm)
        multi = self.role_models
        for trained in multi.algorithms.values() if multi else [self.stages[0].algorithm]:
            check_model_name(trained.model)
        for stage in self.stages:
            stage.config(config)  # a stage's own values are checked now, not after loading the model
        self.agent_ref = agent_ref(agent)  # fails here, not later in a runner process, if it cannot be imported
        self.config = config
        self.runners = runners if isinstance(runners, RunnerConfig) else RunnerConfig(n=runners)
        self.engine = engine or EngineConfig()
        self.store_url = StoreConfig(store).url or f"sqlite:///{(config.run_path / 'store.db').resolve()}"
        self.callbacks = list(callbacks)
        self.token = token
        if multi is not None:
            if self.engine.kind != "hf":
                raise ConfigError(f"several trained models are served by in-process hf engines; engine kind "
                                  f"{self.engine.kind!r} serves one trained model: use EngineConfig(kind='hf')")
            self.roles: dict[str, str | None] | None = dict(check_frozen_roles(roles, multi))
        else:
            self.roles = _check_roles(roles, self.stages[-1].algorithm)

    @property
    def algorithm(self) -> Algorithm:
        """The algorithm of the last stage (the only one for a single-stage run)."""
        return self.stages[-1].algorithm

    @property
    def model(self) -> str:
        return str(self.stages[0].algorithm.model)

    @property
    def role_models(self) -> RoleModels | None:
        """The per-role algorithms of a run of several trained models (None: one trained model)."""
        algorithm = self.stages[0].algorithm
        return algorithm if isinstance(algorithm, RoleModels) else None

    def fit(
        self,
        train_tasks: Sequence[dict[str, Any]],
        val_tasks: Sequence[dict[str, Any]] | None = None,
        epochs: int | None = None,
    ) -> FitResult:
        """Train on ``train_tasks``, validating on ``val_tasks`` if given; ``epochs`` overrides the
        config's. Returns a :class:`FitResult`."""
        cfg = self.config if epochs is None else dataclasses.replace(self.config, epochs=epochs)
        train = check_tasks(train_tasks, "train_tasks")
        val = check_tasks(val_tasks, "val_tasks") if val_tasks is not None else None
        for i, stage in enumerate(self.stages):
            match_temperature(stage.algorithm, stage.config(cfg), i)
            _check_balance_by(train, stage.config(cfg).balance_by)
        cfg.run_path.mkdir(parents=True, exist_ok=True)
        from tracerl.train import distributed

        if distributed.join(self.stages):  # under torchrun, ranks > 0 only take part in updates
            return distributed.follow(self, cfg)
        with contextlib.ExitStack() as es:
            es.callback(distributed.release)
            store = _open_store(self.store_url, self.token)
            es.callback(store.close)
            store.bind_experiment(cfg.experiment)
            base, tokenizer = self._load_model(cfg.seed)
            if cfg.resume:
                pos, folder = ckpt.read_position(cfg.run_path, model=self.model)
            else:
                pos, folder = ckpt.Position(), None
                ckpt.clear_run(cfg.run_path)
            metrics = MetricsLogger(
                cfg.run_path, tensorboard=cfg.tensorboard, wandb=cfg.wandb, experiment=cfg.experiment,
                append=pos.step > 0,
                config={"trainer": dataclasses.asdict(cfg), "stages": [s.algorithm.to_json() for s in self.stages]},
            )
            es.callback(metrics.close)
            run = _Run(self, cfg, store, base, tokenizer, pos, metrics, train, val)
            run.start_stage(folder)
            roles = self._role_models(run.engine_models)
            stack = es.enter_context(
                serving(
                    store, self.store_url, self.agent_ref, model=run.engine_model, tokenizer=run.engine_tokenizer,
                    model_name=next(iter(roles)) if self.role_models and roles else self.model, runners=self.runners,
                    engine=self.engine, max_tokens=cfg.max_tokens, device=run.algorithm.device, token=self.token,
                    sampling={"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}, roles=roles,
                )
            )
            run.attach(stack)
            run.run_stages()
            final_model = run.save_final()
            run.report_disk(final_model)
        title = f"{cfg.experiment}: {self.model}"
        plot_path = plot_rewards(cfg.run_path / METRICS_FILE, cfg.run_path / PLOT_FILE, title=title)
        return FitResult(
            steps=run.pos.step, val_before=run.pos.val_before, val_after=run.val_reward if val is not None else None,
            history=run.history, run_dir=cfg.run_path, metrics_path=cfg.run_path / METRICS_FILE, plot_path=plot_path,
            checkpoint=run.checkpoint, final_model=final_model, stopped_by=run.stopped_by, stages=run.stage_results,
        )

    def _role_models(self, trained: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any] | None] | None:
        """``roles`` with each frozen model loaded (None where the role is the trained model). With several
        trained models (``trained``: each key's engine copy), the first key's roles are the main engine's
        (None) and every other trained role gets its key's copy (roles of one key share one engine). Frozen roles
        that name the same model share one engine too."""
        out: dict[str, tuple[Any, Any] | None] = {}
        multi = self.role_models
        if multi is not None:
            for i, key in enumerate(multi.algorithms):
                out |= {role: None if i == 0 else trained[key] for role in multi.served_roles(key)}
        if self.roles is None and not out:
            return None
        return out | load_role_models(self.roles or {})

    def _load_model(self, seed: int) -> tuple[Any, Any]:
        """The model every stage starts from (kept unchanged) and its tokenizer (several trained models: the
        first role's; the run loads the other roles' models)."""
        from tracerl.algorithms.torch_types import manual_seed
        from tracerl.engines.models import load_model

        manual_seed(seed)
        multi = self.role_models
        return load_model(next(iter(multi.algorithms.values())).model if multi else self.model)


def match_temperature(algorithm: Any, cfg: TrainerConfig, stage: int) -> None:
    """Let each RL algorithm of a stage score its policy at the temperature the stage samples at (unless its
    own ``temperature`` option is set; a different one is refused)."""
    from tracerl.algorithms.config import ClipConfig
    from tracerl.algorithms.weights import WeightsAlgorithm

    algorithms = algorithm.algorithms.values() if isinstance(algorithm, RoleModels) else [algorithm]
    for a in algorithms:
        config: object = getattr(a, "config", None)
        if not isinstance(a, WeightsAlgorithm) or not isinstance(config, ClipConfig):
            continue
        name = type(cast(object, a)).__name__
        if config.temperature is not None and config.temperature != cfg.temperature:
            raise ConfigError(
                f"stage {stage + 1}: {name}(temperature={config.temperature}) scores the policy at a "
                f"temperature the rollouts are not sampled at (the Trainer samples at {cfg.temperature}); "
                "leave the algorithm's temperature unset, or set the Trainer's (or the stage's) temperature to it"
            )
        if cfg.temperature != 1.0 and cfg.async_updates:
            raise ConfigError(
                f"stage {stage + 1}: async_updates trains on rollouts of the previous weights, whose recorded "
                f"log-probs are at temperature 1, not at the sampling temperature {cfg.temperature}; "
                "use async_updates=False, or temperature=1.0"
            )
        a.sampling_temperature = cfg.temperature


class _Run:
    """The state of one :meth:`Trainer.fit` while it runs (store, services, stages, position, metrics)."""

    def __init__(
        self, trainer: Trainer, cfg: TrainerConfig, store: Store, base: Any, tokenizer: Any, pos: ckpt.Position,
        metrics: MetricsLogger, train: list[dict[str, Any]], val: list[dict[str, Any]] | None,
    ) -> None:
        self.trainer, self.base_cfg, self.store, self.base, self.tokenizer = trainer, cfg, store, base, tokenizer
        self.pos, self.metrics, self.train, self.val = pos, metrics, train, val
        self.stack: Stack | None = None
        self.history: list[dict[str, Any]] = []
        self.val_reward: float | None = pos.val_before
        self.stopped_by = "epochs"
        self.checkpoint: Path | None = ckpt.latest_checkpoint(cfg.run_path) if pos.step else None
        self.saved_step = pos.step
        self.stage_results: list[StageResult] = []
        self.version = 0
        self.informative_rate = 1.0  # running estimate of the informative fraction of sampled groups
        self.stage_weights: dict[str, Any] | None = None  # the weights the current stage started from
        self.resource_versions: dict[str, int] = {}  # resources an algorithm published -> latest version
        self.pending: PendingUpdate | None = None  # async_updates: the update running in the background
        self.update_wait_s = 0.0
        self.last_step_end = 0.0
        # several trained models: role -> (engine copy, tokenizer) and role -> (base model, tokenizer)
        self.engine_models: dict[str, tuple[Any, Any]] = {}
        self.role_bases: dict[str, tuple[Any, Any]] = {}
        self.engine_tokenizer: Any = tokenizer

    # -- stages -----------------------------------------------------------------------------------
    @property
    def stage(self) -> Stage:
        return self.trainer.stages[self.pos.stage]

    @property
    def algorithm(self) -> Algorithm:
        return self.stage.algorithm

    @property
    def cfg(self) -> TrainerConfig:
        return self.stage.config(self.base_cfg)

    def start_stage(self, folder: Path | None = None) -> None:
        """Set up the current stage's algorithm on the weights the previous stage ended with (or the base
        model), restoring its checkpoint when resuming mid-stage."""
        i, run_dir = self.pos.stage, self.base_cfg.run_path
        if i > 0 and self.stage_weights is None:  # resuming a later stage: the earlier stage's saved weights
            prev = self.trainer.stages[i - 1].algorithm
            self.stage_weights = ckpt.load_stage_weights(ckpt.stage_weights_path(run_dir, i - 1, prev.name))
        multi = self.trainer.role_models
        if multi is not None:
            self.setup_roles(multi)
        else:
            model = self.model_with(self.stage_weights)
            if self.stack is None:  # the engine's own copy, taken before the algorithm changes the model (LoRA)
                self.engine_model = copy.deepcopy(model)
            self.algorithm.setup(model, self.tokenizer)
        if folder is not None and self.pos.stage_step > 0:
            self.algorithm.load(folder)

    def setup_roles(self, multi: RoleModels) -> None:
        """Several trained models: load each role's model (one load per distinct model name), keep an engine
        copy of each, and set each role's algorithm up on a model of its own."""
        from tracerl.engines.models import load_model

        loaded: dict[str, tuple[Any, Any]] = {}
        for i, (key, algorithm) in enumerate(multi.algorithms.items()):
            if algorithm.model not in loaded:
                loaded[algorithm.model] = (self.base, self.tokenizer) if i == 0 else load_model(algorithm.model)
            self.role_bases[key] = loaded[algorithm.model]
        models = {key: (copy.deepcopy(base), tok) for key, (base, tok) in self.role_bases.items()}
        self.engine_models = {key: (copy.deepcopy(m), tok) for key, (m, tok) in models.items()}
        self.engine_model, self.engine_tokenizer = next(iter(self.engine_models.values()))
        multi.setup(models)

    def model_with(self, weights: dict[str, Any] | None, base: Any = None) -> Any:
        """A fresh copy of ``base`` (default: the run's base model) holding ``weights`` (None: its own)."""
        model = copy.deepcopy(self.base if base is None else base)
        if weights is not None:
            model.load_state_dict(weights, strict=False)
        return model

    def attach(self, stack: Stack) -> None:
        self.stack = stack
        self.serve_current()

    def serve_current(self) -> None:
        """Serve the algorithm's current weights (a later stage, or a resumed one) and publish them; an
        algorithm that runs rollouts of its own (APO scores prompts) is handed the means to (``bind``)."""
        assert self.stack is not None
        bind = getattr(self.algorithm, "bind", None)
        if callable(bind):
            from tracerl.algorithms.apo import RolloutAccess

            bind(RolloutAccess(self.store, self.run_own_rollouts, self.stack.gateway_url, self.trainer.model,
                               list(self.train), self.base_cfg.run_path))  # fmt: skip
        if self.pos.stage > 0 or self.algorithm.weights_version != 0:
            multi = self.trainer.role_models
            for key, algorithm in multi.algorithms.items() if multi else [("", self.algorithm)]:
                weights = algorithm.engine_weights()
                if weights is not None and (self.pos.stage > 0 or algorithm.weights_version != 0):
                    self.engine_of(key).load_weights(weights, algorithm.weights_version)
        self.version = self.publish(self.algorithm.weights_version)

    def engine_of(self, role: str) -> Any:
        """The engine that serves ``role`` (the one engine of a single-model run: ``role`` is "")."""
        assert self.stack is not None
        return self.stack.engines[role] if role else self.stack.engine

    def run_stages(self) -> None:
        stages = self.trainer.stages
        if self.val is not None and self.pos.step == 0:
            self.pos.val_before = self.val_reward = self.validate()
        while True:
            t0 = time.monotonic()
            label = f"stage {self.pos.stage + 1}/{len(stages)} {self.algorithm.name}" if len(stages) > 1 else ""
            self.loop(label)
            self.stage_results.append(StageResult(
                self.algorithm.name, self.pos.stage_step, self.val_reward if self.val is not None else None,
                time.monotonic() - t0, self.stopped_by,
            ))  # fmt: skip
            if self.pos.stage + 1 >= len(stages):
                break
            self.next_stage()

    def next_stage(self) -> None:
        """Hand the finished stage's weights to the next stage and set it up."""
        done = self.algorithm
        weights = done.engine_weights()
        if weights is not None:
            weights = {k: v.detach().clone() for k, v in weights.items()}
            ckpt.save_stage_weights(weights, ckpt.stage_weights_path(self.base_cfg.run_path, self.pos.stage, done.name))
            self.stage_weights = weights
        self.pos.stage += 1
        self.pos.stage_step = self.pos.epoch = self.pos.batch = 0
        self.start_stage()
        self.serve_current()

    # -- the loop of one stage --------------------------------------------------------------------
    def loop(self, label: str) -> None:
        cfg, pos = self.cfg, self.pos
        items = self.algorithm.items(self.train)
        if not items:
            raise ConfigError(f"stage {pos.stage + 1} ({self.algorithm.name}) has nothing to train on")
        steps_per_epoch = math.ceil(len(items) / cfg.batch_size)
        total = min(steps_per_epoch * cfg.epochs, cfg.max_steps or math.inf)
        self.t_start = time.monotonic()
        self.step_times: list[float] = []
        in_update = [False]
        with StepProgress(int(total), time_budget_s=cfg.time_budget_s, start=pos.stage_step, enabled=cfg.progress,
                          stage=label) as progress:  # fmt: skip
            self.progress = progress
            try:
                while (chunk := self.next_items(items)) is not None:
                    self.train_step(chunk, items, in_update)
                    if self.val is not None and cfg.val_every and pos.stage_step % cfg.val_every == 0:
                        self.finish_update()
                        self.val_reward = self.validate()
                    if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0:
                        self.finish_update()
                        self.save()
                self.finish_update()
            except KeyboardInterrupt:
                self.finish_update()
                if not in_update[0] and pos.step > self.saved_step:
                    logger.warning("interrupted: saving a checkpoint of step %d; run again with resume (tracerl "
                                   "train: the same command; tracerl demo: --resume) to continue it", pos.step)
                    self.save()
                raise
            ended_on_val = self.history and cfg.val_every and pos.stage_step % cfg.val_every == 0
            if self.val is not None and not ended_on_val:
                self.val_reward = self.validate()
            last_stage = pos.stage + 1 >= len(self.trainer.stages)
            if last_stage and cfg.checkpoint_at_end and (pos.step > self.saved_step or self.checkpoint is None):
                self.save()

    def next_items(self, items: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """The items of the next step, or None when the epochs, ``max_steps`` or the time budget are used up."""
        cfg, pos = self.cfg, self.pos
        if pos.batch >= len(items):
            pos.epoch, pos.batch = pos.epoch + 1, 0
        if pos.epoch >= cfg.epochs:
            self.stopped_by = "epochs"
            return None
        if cfg.max_steps is not None and pos.stage_step + (self.pending is not None) >= cfg.max_steps:
            self.stopped_by = "max_steps"
            return None
        recent = self.step_times[-5:]
        expected = sum(recent) / len(recent) if recent else 0.0
        if cfg.time_budget_s is not None and time.monotonic() - self.t_start + expected > cfg.time_budget_s:
            self.stopped_by = "time_budget"
            return None
        return self.take(items, cfg.batch_size)

    def take(self, items: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
        """The next ``n`` items of this epoch's seeded order (``pos.batch`` counts items taken); wraps into a
        fresh shuffle of the next epoch when this one runs out (dynamic sampling may take more)."""
        out: list[dict[str, Any]] = []
        pos = self.pos
        while len(out) < n:
            if pos.batch >= len(items):
                if out:  # only dynamic sampling reaches past an epoch's end
                    pos.epoch, pos.batch = pos.epoch + 1, 0
                else:
                    break
            order = list(range(len(items)))
            random.Random(self.base_cfg.seed * 1_000_003 + pos.stage * 7919 + pos.epoch).shuffle(order)
            if self.cfg.balance_by is not None:  # each kind in its share of every prefix, shuffled within a kind
                order = [order[j] for j in interleaved_order([_value(items[i], self.cfg.balance_by) for i in order])]
            chunk = order[pos.batch : pos.batch + n - len(out)]
            out.extend(items[i] for i in chunk)
            pos.batch += len(chunk)
        return out

    def train_step(self, chunk: list[dict[str, Any]], items: list[dict[str, Any]], in_update: list[bool]) -> None:
        """Rollouts (with dynamic sampling) → batch → update → new weights served and published."""
        pos, algorithm = self.pos, self.algorithm
        assert self.stack is not None
        t0 = time.monotonic()
        label = f"step {pos.stage_step + 1 + (self.pending is not None)}"
        rollouts, used_items, batch, trimmed = self.sample(chunk, items, label)
        rollout_s = time.monotonic() - t0
        extra = {"trimmed_groups": trimmed} if self.cfg.balance_trim else {}
        if self.cfg.async_updates:  # collect the update that ran while these rollouts were sampled, start this one
            self.finish_update()
            self.pending = PendingUpdate(algorithm, batch, rollouts, used_items, t0, rollout_s, extra)
            return
        self.progress.status(f"{label}: update")
        t1 = time.monotonic()
        in_update[0] = True
        result = algorithm.update(batch)
        self.apply_update(result, batch, rollouts, used_items, t0, rollout_s, t1, in_update, extra)

    def finish_update(self) -> None:
        """Wait for the update running in the background (``async_updates``), then serve, publish and log it."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        self.progress.status(f"step {self.pos.stage_step + 1}: waiting for the update")
        waited = time.monotonic()
        result = pending.join()
        self.update_wait_s = time.monotonic() - waited  # the part of the update the rollouts did not hide
        self.apply_update(result, pending.batch, pending.rollouts, pending.used_items, pending.t0, pending.rollout_s,
                          time.monotonic() - pending.update_s, [True], pending.extra)  # fmt: skip

    def apply_update(
        self, result: Any, batch: Any, rollouts: list[Rollout], used_items: list[dict[str, Any]], t0: float,
        rollout_s: float, t1: float, in_update: list[bool], extra: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """Serve and publish an update's weights, count the step, log its record and call the callbacks."""
        pos, algorithm = self.pos, self.algorithm
        assert self.stack is not None
        start = max(t0, self.last_step_end)  # async: the previous step ended while this one's rollouts ran
        updates = result.per_role.items() if isinstance(result, RolesResult) else [("", result)]
        served = False
        for role, own in updates:  # each trained model's new weights go into its own engine only
            if own.weights is not None:
                self.engine_of(role).load_weights(own.weights, own.weights_version)
                served = True
        pos.step += 1
        pos.stage_step += 1
        in_update[0] = False
        update_s = time.monotonic() - t1
        if served or result.resources:
            for name, value in result.resources.items():
                self.resource_versions[name] = self.store.put_resource(name, value).version
            self.version = self.publish(result.weights_version)
        rewards = [rollout_reward(r) for r in rollouts]
        record = self.metrics.log("train", pos.step, {
            "stage": pos.stage + 1,
            "stage_name": algorithm.name,
            "epoch": pos.epoch,
            "reward_mean": _mean(rewards) if rewards else None,
            "reward_std": _std(rewards) if rewards else None,
            **{k: v for k, v in batch.metrics().items() if k not in ("reward_mean", "reward_std")},
            **result.metrics,
            "sampled_groups": len(used_items) if algorithm.group_size else None,
            "used_groups": batch.informative_groups if algorithm.group_size else None,
            **(extra or {}),
            "generated_rollouts": len(rollouts),
            "failed_rollouts": sum(r.status.value == "failed" for r in rollouts),
            "tokens_per_s": round(batch.response_tokens / rollout_s, 1) if rollout_s > 0 and rollouts else None,
            "rollout_s": round(rollout_s, 3),
            "update_s": round(update_s, 3),
            "step_s": round(time.monotonic() - start, 3),
            "weights_version": result.weights_version,
            **({"update_wait_s": round(self.update_wait_s, 3)} if self.cfg.async_updates else {}),
        })
        self.history.append(record)
        self.step_times.append(time.monotonic() - start)
        self.last_step_end = time.monotonic()
        self.progress.step_done(pos.stage_step, record)
        for callback in self.trainer.callbacks:
            callback(record, algorithm)

    def sample(
        self, chunk: list[dict[str, Any]], items: list[dict[str, Any]], label: str
    ) -> tuple[list[Rollout], list[dict[str, Any]], Any, int]:
        """Run the step's rollouts and make the batch; with dynamic sampling, keep sampling groups of new
        items until ``batch_size`` informative groups are in or ``max_sampled_groups × batch_size`` groups
        were sampled. Returns (every rollout sampled, the items rolled out, the batch, the informative groups
        ``balance_trim`` left out of it)."""
        cfg, algorithm = self.cfg, self.algorithm
        if not algorithm.group_size:
            return [], chunk, algorithm.make_batch(self.store, chunk, []), 0
        wanted, cap = cfg.batch_size, math.ceil(cfg.max_sampled_groups * cfg.batch_size)
        used: list[dict[str, Any]] = []
        rollouts: list[Rollout] = []
        groups_of: list[list[Rollout]] = []  # one group per item of ``used``
        informative: list[bool] = []  # per group of ``used``, with ``balance_by``: does it carry a gradient?
        todo = chunk
        while True:
            self.progress.status(f"{label}: rollouts")
            groups = run_rollouts(
                self.store, todo, group_size=algorithm.group_size, mode=_mode("train"),
                resources_version=self.version, max_attempts=self.trainer.runners.max_attempts,
                timeout_s=cfg.rollout_timeout_s, tag=_tag(self.base_cfg, f"s{self.pos.step + 1}-{len(used)}"),
                on_progress=self.progress.rollouts,
            )
            used.extend(todo)
            groups_of.extend(groups)
            rollouts.extend(r for g in groups for r in g)
            if cfg.balance_by is not None and (cfg.dynamic_sampling or cfg.balance_trim):  # each group once
                informative.extend(
                    algorithm.make_batch(self.store, [item], [r.rollout_id for r in group]).informative_groups > 0
                    for item, group in zip(todo, groups, strict=True)
                )
            batch = algorithm.make_batch(self.store, used, [r.rollout_id for r in rollouts])
            more = 0
            if cfg.dynamic_sampling:
                found = batch.informative_groups
                self.informative_rate = 0.5 * self.informative_rate + 0.5 * max(found / len(used), 0.05)
                missing = max(wanted - found, self.kinds_missing(items, used, informative) if cfg.balance_by else 0)
                more = min(cap - len(used), math.ceil(missing / self.informative_rate)) if missing > 0 else 0
            todo = self.take(items, more) if more > 0 else []
            if not todo:
                if not cfg.balance_trim:
                    return rollouts, used, batch, 0
                return rollouts, used, *self.trim(items, used, groups_of, informative, batch)

    def trim(
        self, items: list[dict[str, Any]], used: list[dict[str, Any]], groups: list[list[Rollout]],
        informative: list[bool], batch: Any,
    ) -> tuple[Any, int]:  # fmt: skip
        """``batch`` with as many informative groups of every value of ``balance_by`` as the scarcest value holds
        (the first ones sampled; the groups without reward variance stay, they carry no gradient), and how many
        it left out. A value that gave no informative group leaves the step without an update, rather than one
        that moves the policy by the other values' signal alone."""
        key = self.cfg.balance_by
        assert key is not None
        of_value: dict[Any, list[int]] = {_value(item, key): [] for item in items}
        for i, item in enumerate(used):
            if informative[i]:
                of_value.setdefault(_value(item, key), []).append(i)
        share = min(len(found) for found in of_value.values())
        dropped = {i for found in of_value.values() for i in found[share:]}
        if not dropped:
            return batch, 0
        keep = [i for i in range(len(used)) if i not in dropped]
        ids = [r.rollout_id for i in keep for r in groups[i]]
        return self.algorithm.make_batch(self.store, [used[i] for i in keep], ids), len(dropped)

    def kinds_missing(self, items: list[dict[str, Any]], used: list[dict[str, Any]], informative: list[bool]) -> int:
        """How many informative groups the groups sampled for ``used`` lack: every value of ``balance_by`` among
        the stage's ``items`` wants ⌈batch_size / number of values⌉ (``informative``: per group of ``used``,
        whether the algorithm's own batch of it carries a gradient, so shaped rewards count as in the update)."""
        key = self.cfg.balance_by
        assert key is not None
        found = Counter(_value(item, key) for item, useful in zip(used, informative, strict=True) if useful)
        kinds = {_value(item, key) for item in items}
        share = math.ceil(self.cfg.batch_size / len(kinds))
        return sum(max(share - found[kind], 0) for kind in kinds)

    def run_own_rollouts(self, tasks: list[dict[str, Any]], metadata: list[dict[str, Any]]) -> list[Rollout]:
        """One greedy (``val``) rollout per task with its metadata, for an algorithm's own scoring."""
        groups = run_rollouts(
            self.store, tasks, group_size=1, mode=_mode("val"), resources_version=self.version,
            max_attempts=self.trainer.runners.max_attempts, timeout_s=self.cfg.rollout_timeout_s,
            tag=_tag(self.base_cfg, f"a{self.pos.step + 1}"), metadata=metadata,
        )
        return [g[0] for g in groups]

    def validate(self) -> float:
        """Run every held-out task once (greedy) and log the mean reward (failed rollouts count 0)."""
        assert self.val is not None and self.stack is not None
        cfg, step = self.base_cfg, self.pos.step
        progress = getattr(self, "progress", None)
        if progress is not None:
            progress.status(f"validating on {len(self.val)} tasks")
        t0 = time.monotonic()
        groups = run_rollouts(
            self.store, self.val, group_size=1, mode=_mode("val"), resources_version=self.version,
            max_attempts=self.trainer.runners.max_attempts, timeout_s=cfg.rollout_timeout_s,
            tag=_tag(cfg, f"v{step}"), on_progress=progress.rollouts if progress is not None else None,
        )
        rewards = [rollout_reward(g[0]) for g in groups]
        value = _mean(rewards)
        self.metrics.log("val", step, {
            "stage": self.pos.stage + 1,
            "val_reward": value,
            "n": len(rewards),
            "failed_rollouts": sum(g[0].status.value == "failed" for g in groups),
            "val_s": round(time.monotonic() - t0, 3),
            "val_rewards": rewards,  # per held-out task, in the order given (for breakdowns and paired tests)
        })
        # before the first stage's loop there is no progress display yet: the line is printed all the same
        (progress or StepProgress(None, enabled=cfg.progress)).validated(step, value)
        logger.info("step %d: held-out reward %.3f on %d tasks", step, value, len(rewards))
        return value

    def publish(self, weights_version: int) -> int:
        """A new version of the resources bundle the runners hand to the agent; returns its version."""
        cfg = self.cfg
        multi = self.trainer.role_models
        value = {
            "model": self.stack.model_name if self.stack is not None else self.trainer.model,
            "stage": self.pos.stage + 1,
            "algorithm": self.algorithm.name,
            "weights_version": weights_version,
            **({"role_weights_versions": {k: a.weights_version for k, a in multi.algorithms.items()}} if multi else {}),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "sampling": {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens},
            "engine": self.engine_info(),
            # e.g. "prompts_version": the gateway serves that prompts version to these rollouts (tracerl.prompts)
            **{f"{name}_version": v for name, v in self.resource_versions.items()},
        }
        return self.store.put_resource(RESOURCES_NAME, value).version

    def engine_info(self) -> dict[str, str]:
        """Where and in which precision the engine serves (the learner's device unless configured)."""
        if self.stack is None:
            return {}
        return dict(self.stack.engine.info())

    def save(self) -> None:
        self.checkpoint = ckpt.save_checkpoint(
            self.algorithm, self.base_cfg.run_path, self.pos, model=self.trainer.model,
            keep=self.base_cfg.keep_checkpoints,
        )
        self.saved_step = self.pos.step

    def save_final(self) -> Path | None:
        """The trained weights (full precision, from the algorithm, not the engine's serving copy) as a
        Hugging Face folder that ``from_pretrained`` and ``tracerl.evaluate(model=...)`` load; None when the
        algorithm trains no weights. Several trained models: one such folder per role, ``final/{role}/``."""
        multi = self.trainer.role_models
        if multi is not None:
            root = self.base_cfg.run_path / "final"
            for key, algorithm in multi.algorithms.items():
                self.save_model(algorithm.engine_weights(), *self.role_bases[key], root / key)
            return root
        weights = self.algorithm.engine_weights()
        if weights is None:
            return None
        return self.save_model(weights, self.base, self.tokenizer, self.base_cfg.run_path / "final")

    def save_model(self, weights: dict[str, Any] | None, base: Any, tokenizer: Any, path: Path) -> Path:
        """``base`` holding ``weights`` and its tokenizer, saved as a Hugging Face folder at ``path``."""
        try:
            self.model_with(weights, base).save_pretrained(path)
            tokenizer.save_pretrained(path)
            if not (path / "config.json").is_file():  # transformers only logs some failures (path is a file)
                raise OSError(f"no {path / 'config.json'} was written; is {path} a folder that can be written?")
        except Exception as e:
            raise TracerlError(f"training finished but saving the final model to {path} failed: {e}; the last "
                               "checkpoint (if any) is in the run folder's checkpoints/") from e
        return path

    def report_disk(self, final_model: Path | None) -> None:
        """Say what the run wrote to disk and how big it is."""
        run_dir = self.base_cfg.run_path
        parts = [(p, ckpt.folder_size(p)) for p in (run_dir / ckpt.CHECKPOINTS, run_dir / ckpt.STAGES, final_model)
                 if p is not None and p.exists()]  # fmt: skip
        if parts:
            text = ", ".join(f"{p} ({ckpt.human_size(n)})" for p, n in parts)
            logger.info("the run wrote %s", text)
            self.written = parts


# -- helpers ---------------------------------------------------------------------------------------------


def _mode(name: str) -> Any:
    from tracerl.types import Mode

    return Mode(name)


def _value(item: dict[str, Any], key: str) -> Hashable:
    """``item[key]`` as a kind for ``balance_by`` (None when absent; a list or object by its JSON text)."""
    value = item.get(key)
    return value if isinstance(value, Hashable) else json.dumps(value, sort_keys=True)


def _check_balance_by(tasks: list[dict[str, Any]], key: str | None) -> None:
    """A ``balance_by`` field that no training task has is a typo, not a single kind: say so before loading."""
    if key is not None and not any(key in task for task in tasks):
        fields = sorted({k for task in tasks[:100] for k in task})
        raise ConfigError(f"trainer.balance_by = {key!r}, but no training task has that field; the tasks have "
                          f"{fields}: name one of them, or unset balance_by")


def _check_roles(roles: dict[str, str | None] | None, algorithm: Any) -> dict[str, str | None] | None:
    """``roles`` if it names at least one trained role and agrees with the algorithm's ``train_models``.

    The roles mapped to None are served by the trained model; ``train_models`` must be some of them (a role
    served by the trained model but left out of ``train_models`` is answered by the current weights and not
    trained: e.g. a call whose text cannot change the reward). With frozen roles beside it, an algorithm that
    selects calls by model must name the ones to train: training every call would train the trained model on
    what the frozen ones wrote."""
    if roles is None:
        return None
    trained = sorted(name for name, model in roles.items() if model is None)
    if not trained:
        raise ConfigError(
            f"roles {roles!r} names no trained role: map the role(s) to train to None, e.g. "
            "roles={'solver': None, 'planner': 'smollm2-135m'}"
        )
    config = getattr(algorithm, "config", None)
    selected = getattr(config, "train_models", None)
    frozen = sorted(name for name, model in roles.items() if model is not None)
    if selected is None and frozen and hasattr(config, "train_models"):
        raise ConfigError(
            f"roles serves {frozen} with frozen models, and the algorithm would train every call, theirs too; "
            f"set train_models to the roles to train, e.g. train_models={trained!r}"
        )
    if selected is not None and not set(selected) <= set(trained):
        raise ConfigError(
            f"the algorithm trains the calls of {sorted(selected)} but roles serves the trained model as {trained}; "
            "make train_models some of the roles mapped to None"
        )
    return dict(roles)


def _open_store(url: str, token: str | None = None) -> Store:
    from tracerl.store import connect

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return connect(url, token=token)


def _tag(cfg: TrainerConfig, what: str) -> str:
    """A group-id prefix unique to this step of this run (so reruns on one store never share groups)."""
    return f"{cfg.experiment}-{what}-{os.getpid()}-{time.time_ns() // 1_000_000}"


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _std(xs: Sequence[float]) -> float:
    """Population standard deviation ``sqrt(mean((x − mean x)²))``."""
    if not xs:
        return float("nan")
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))
