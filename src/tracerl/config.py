"""Configuration of a training run: one dataclass per component, validated at construction.

Every invalid value (or combination) is refused in ``__post_init__`` with a :class:`~tracerl.errors.ConfigError`
that names the value and says how to fix it, so a mistake surfaces before any model is loaded.

A whole run can be written as a TOML file and started with ``tracerl train run.toml``::

    agent = "my_project.agents:sql_agent"      # module:function, imported by the runner processes
    train_tasks = "data/train.jsonl"           # a JSONL file (one task object per line) ...
    val_tasks = "demo-arithmetic:val"          # ... or a built-in dataset name

    [store]
    url = "sqlite:///runs/sql/store.db"        # default: sqlite file in the run folder

    [runners]
    n = 4

    [algorithm]                                # the keyword arguments of tracerl.GRPO
    model = "smollm2-135m"
    group_size = 4
    lr = 1e-5

    [trainer]
    run_dir = "runs/sql"
    epochs = 1
    batch_size = 2

This module depends on nothing else of tracerl but :mod:`tracerl.errors` (the algorithm section is kept as a
plain dict and validated by ``GRPOConfig`` when the trainer builds the algorithm).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracerl.errors import ConfigError

_AGENT_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_STORE_SCHEMES = ("memory", "sqlite", "postgres", "postgresql", "http", "https")


def _positive_int(owner: str, name: str, value: object, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}.{name} must be an integer ≥ {minimum}, got {value!r}")


def _positive_float(owner: str, name: str, value: object, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = "≥ 0" if allow_zero else "> 0"
        raise ConfigError(f"{owner}.{name} must be a number {bound}, got {value!r}")


@dataclass
class StoreConfig:
    """Where rollouts, spans and resources live.

    ``url``: ``sqlite:///path.db`` (default: ``store.db`` in the run folder), ``postgresql://...``,
    ``http://host:port`` (a running ``tracerl serve``) or ``memory://`` (only for a single process: runner
    processes cannot see an in-memory store, so the trainer refuses it when it starts runners).
    """

    url: str | None = None

    def __post_init__(self) -> None:
        if self.url is None:
            return
        scheme = self.url.split("://", 1)[0].lower() if "://" in self.url else ""
        if scheme not in _STORE_SCHEMES:
            raise ConfigError(
                f"store.url {self.url!r} is not a store URL; use sqlite:///path.db, postgresql://user@host/db, "
                "http://host:port or memory://"
            )


@dataclass
class RunnerConfig:
    """The worker processes that run the agent on claimed rollouts.

    ``n``: processes; ``timeout_s``: a rollout running longer is killed and retried;
    ``max_attempts``: tries per rollout before it counts as failed (reward 0 for training).
    """

    n: int = 4
    timeout_s: float = 300.0
    max_attempts: int = 2

    def __post_init__(self) -> None:
        _positive_int("runners", "n", self.n)
        if self.n > 256:
            raise ConfigError(f"runners.n = {self.n} processes is more than this trainer supports (≤ 256)")
        _positive_float("runners", "timeout_s", self.timeout_s)
        _positive_int("runners", "max_attempts", self.max_attempts)


@dataclass
class EngineConfig:
    """The in-process inference engine (serving the algorithm's model) and the gateway in front of it.

    ``host``/``port``: where the gateway listens (port 0 picks a free one; runners on other machines need
    a reachable host); ``max_batch_size``: concurrent requests the engine samples together.
    """

    host: str = "127.0.0.1"
    port: int = 0
    max_batch_size: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"engine.host must be a host name or address, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"engine.port must be in [0, 65535] (0 picks a free port), got {self.port!r}")
        _positive_int("engine", "max_batch_size", self.max_batch_size)


@dataclass
class TrainerConfig:
    """The training loop.

    One *step* takes ``batch_size`` tasks, runs each ``group_size`` times (the algorithm's group size),
    updates the model once on what was recorded and publishes the new weights.

    * ``epochs``: passes over the training tasks; ``max_steps`` / ``time_budget_s`` stop earlier.
    * ``val_every``: validate on the validation tasks (greedy decoding) every k steps, and before the first
      and after the last step; 0 only validates before and after.
    * ``temperature`` / ``max_tokens``: sampling defaults handed to the agent's LLM handle for training
      rollouts (validation always uses temperature 0).
    * ``run_dir``: metrics (``metrics.jsonl``), plot (``rewards.png``), checkpoints and the default store.
    * ``resume``: continue from the last checkpoint in ``run_dir`` if there is one; ``False`` starts over
      (the earlier run's checkpoints and metrics in ``run_dir`` are replaced).
    * ``checkpoint_every``: save every k steps (and always at the end); 0 saves only at the end.
    """

    epochs: int = 1
    batch_size: int = 2
    max_steps: int | None = None
    time_budget_s: float | None = None
    val_every: int = 5
    temperature: float = 1.0
    max_tokens: int = 64
    run_dir: str = "runs/tracerl"
    experiment: str = "tracerl"
    seed: int = 0
    resume: bool = True
    checkpoint_every: int = 0
    rollout_timeout_s: float = 900.0
    tensorboard: bool = False
    wandb: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        _positive_int("trainer", "epochs", self.epochs)
        _positive_int("trainer", "batch_size", self.batch_size)
        if self.max_steps is not None:
            _positive_int("trainer", "max_steps", self.max_steps)
        if self.time_budget_s is not None:
            _positive_float("trainer", "time_budget_s", self.time_budget_s)
        _positive_int("trainer", "val_every", self.val_every, minimum=0)
        _positive_int("trainer", "checkpoint_every", self.checkpoint_every, minimum=0)
        _positive_int("trainer", "max_tokens", self.max_tokens)
        _positive_float("trainer", "rollout_timeout_s", self.rollout_timeout_s)
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise ConfigError(f"trainer.temperature must be a number, got {self.temperature!r}")
        if self.temperature <= 0:
            raise ConfigError(
                f"trainer.temperature = {self.temperature} would make every rollout of a group identical "
                "(no reward variance, nothing to learn); use a temperature > 0 such as 1.0"
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"trainer.seed must be an integer, got {self.seed!r}")
        if not self.experiment or not isinstance(self.experiment, str):
            raise ConfigError(f"trainer.experiment must be a non-empty name, got {self.experiment!r}")
        if not isinstance(self.run_dir, str) or not self.run_dir:
            raise ConfigError(f"trainer.run_dir must be a folder path, got {self.run_dir!r}")

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)


@dataclass
class RunConfig:
    """A whole run as ``tracerl train CONFIG`` reads it (see the module docstring for the TOML layout).

    ``agent`` is ``module:function``; ``train_tasks``/``val_tasks`` are JSONL paths or built-in dataset
    names (``demo-arithmetic:train``, ``demo-arithmetic:val``); ``algorithm`` holds the keyword arguments of
    :class:`tracerl.GRPO`, ``model`` included (the engine serves that same model).
    """

    agent: str
    train_tasks: str
    val_tasks: str | None = None
    store: StoreConfig = field(default_factory=StoreConfig)
    runners: RunnerConfig = field(default_factory=RunnerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    algorithm: dict[str, Any] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.agent, str) or not _AGENT_REF.match(self.agent):
            raise ConfigError(
                f"agent = {self.agent!r} is not an importable reference; write it as 'module:function', "
                "for example 'my_project.agents:sql_agent'"
            )
        if not isinstance(self.train_tasks, str) or not self.train_tasks:
            raise ConfigError(
                "train_tasks must name a JSONL file or a built-in dataset such as 'demo-arithmetic:train'"
            )
        if not isinstance(self.algorithm.get("model"), str) or not self.algorithm["model"]:
            raise ConfigError(
                "[algorithm] needs model = \"...\": a short name (smollm2-135m, tiny-random) or a model folder"
            )


_SECTIONS: dict[str, type] = {
    "store": StoreConfig,
    "runners": RunnerConfig,
    "engine": EngineConfig,
    "trainer": TrainerConfig,
}


def _build_section(name: str, cls: type, raw: object, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] in {source} must be a table, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in [{name}] of {source}; the known keys are {sorted(known)}"
        )
    return cls(**raw)


def run_config_from_dict(data: dict[str, Any], *, source: str = "config") -> RunConfig:
    """Build a :class:`RunConfig` from parsed TOML, refusing unknown keys with the list of known ones."""
    top_level = {"agent", "train_tasks", "val_tasks", "algorithm", *_SECTIONS}
    unknown = sorted(set(data) - top_level)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {source}; the known keys are {sorted(top_level)}")
    for required in ("agent", "train_tasks"):
        if required not in data:
            raise ConfigError(f"{source} has no '{required}'; add {required} = \"...\" at the top of the file")
    sections = {name: _build_section(name, cls, data.get(name, {}), source) for name, cls in _SECTIONS.items()}
    algorithm = data.get("algorithm", {})
    if not isinstance(algorithm, dict):
        raise ConfigError(f"[algorithm] in {source} must be a table, got {type(algorithm).__name__}")
    return RunConfig(
        agent=data["agent"],
        train_tasks=data["train_tasks"],
        val_tasks=data.get("val_tasks"),
        algorithm=dict(algorithm),
        **sections,
    )


def load_run_config(path: str | Path) -> RunConfig:
    """Read a run from a TOML file. Relative task paths are resolved against the file's folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    for key in ("train_tasks", "val_tasks"):
        value = data.get(key)
        if isinstance(value, str) and value.endswith(".jsonl") and not Path(value).is_absolute():
            data[key] = str(path.parent / value)
    return run_config_from_dict(data, source=str(path))
