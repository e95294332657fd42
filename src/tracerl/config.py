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
    model = "smollm2-135m"                     # (name = "sft", "ppo", "reinforce++" or "rloo" picks
                                               #  tracerl.SFT, PPO, REINFORCEpp or RLOO instead)
    group_size = 4
    lr = 1e-5

    [trainer]
    run_dir = "runs/sql"
    epochs = 1
    batch_size = 2

Several stages on one model (SFT, then GRPO) replace ``[algorithm]`` by an array of stages, each with the
algorithm's name, its keyword arguments, and the ``[trainer]`` values it sets for itself (epochs,
max_steps, time_budget_s, batch_size, val_every, temperature, max_tokens)::

    [[stages]]
    algorithm = "sft"
    [stages.options]
    model = "smollm2-135m"
    demonstrations = "demos.jsonl"
    lr = 5e-5
    [stages.trainer]
    epochs = 2

    [[stages]]
    algorithm = "grpo"
    [stages.options]
    group_size = 8
    [stages.trainer]
    time_budget_s = 900

An agent with several roles, each naming its own ``model``, trains one and keeps the others frozen with a
``[roles]`` table (and the algorithm's ``train_models = ["solver"]``)::

    [roles]
    trained = ["solver"]                       # served by the model being trained
    frozen = { planner = "smollm2-135m" }      # served by a frozen model of its own

A role in ``trained`` that ``train_models`` leaves out is served by the model being trained without being trained
on (e.g. a call whose text cannot change the reward).

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

    ``n``: processes (0: start none here, rollouts are run by ``tracerl runner`` processes elsewhere that
    share the store, see docs/cluster.md); ``timeout_s``: a rollout running longer is killed and retried;
    ``max_attempts``: tries per rollout before it counts as failed (reward 0 for training).
    ``ray``: run the workers as Ray actors on this cluster (``auto``, ``HOST:PORT``, ``ray://HOST:10001``;
    see :mod:`tracerl.runner.ray_pool`), ``actors`` of them with ``n`` workers each; None: local processes.
    """

    n: int = 4
    timeout_s: float = 300.0
    max_attempts: int = 2
    ray: str | None = None
    actors: int = 1

    def __post_init__(self) -> None:
        _positive_int("runners", "n", self.n, minimum=0)
        if self.n > 256:
            raise ConfigError(f"runners.n = {self.n} processes is more than this trainer supports (≤ 256)")
        _positive_float("runners", "timeout_s", self.timeout_s)
        _positive_int("runners", "max_attempts", self.max_attempts)
        _positive_int("runners", "actors", self.actors)
        if self.ray is not None and (not isinstance(self.ray, str) or not self.ray):
            raise ConfigError(f"runners.ray must be a Ray address such as 'auto' or 'HOST:6379', got {self.ray!r}")
        if self.n == 0 and self.ray is not None:
            raise ConfigError("runners.n = 0 starts no workers, so runners.ray has nothing to run; set n ≥ 1")
        if self.actors > 1 and self.ray is None:
            raise ConfigError(f"runners.actors = {self.actors} needs runners.ray (a Ray address); without Ray use n")


@dataclass
class EngineConfig:
    """The in-process inference engine (serving the algorithm's model) and the gateway in front of it.

    ``host``/``port``: where the gateway listens (port 0 picks a free one; runners on other machines need
    a reachable host); ``max_batch_size``: concurrent requests the engine samples together (it needs as
    many runner processes to fill it); ``device``: where the engine runs (None: where the algorithm trains,
    so new weights never cross devices); ``dtype``: ``bfloat16`` or ``float32`` (None: bf16 where the device
    runs it natively — a CPU with AMX/AVX512-BF16, a CUDA GPU with bf16 — else fp32; the gap between the
    engine's log-probs and the learner's is measured every step).

    ``kind``: ``hf`` (transformers in this process) or ``vllm`` (a vLLM server that tracerl starts and feeds
    new weights: :mod:`tracerl.engines.vllm`). For ``vllm``: ``vllm_python`` is the interpreter that has vLLM
    (None: this one; the CPU build lives best in a venv of its own), ``vllm_args`` more server flags (e.g.
    ``["--gpu-memory-utilization", "0.3"]`` beside a learner on the same GPU), ``weight_sync`` how new weights
    arrive: ``rpc`` (loaded in place by the running server) or ``restart`` (the server restarts on them).
    """

    host: str = "127.0.0.1"
    port: int = 0
    max_batch_size: int = 32
    device: str | None = None
    dtype: str | None = None
    kind: str = "hf"
    vllm_python: str | None = None
    vllm_args: list[str] = field(default_factory=list)
    weight_sync: str = "rpc"

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"engine.host must be a host name or address, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"engine.port must be in [0, 65535] (0 picks a free port), got {self.port!r}")
        _positive_int("engine", "max_batch_size", self.max_batch_size)
        if self.device is not None and (not isinstance(self.device, str) or self.device.split(":")[0] not in
                                        ("cpu", "cuda")):
            raise ConfigError(f"engine.device must be 'cpu', 'cuda' or 'cuda:N' (or unset), got {self.device!r}")
        if self.dtype is not None and self.dtype not in ("bfloat16", "float32", "float16"):
            raise ConfigError(f"engine.dtype must be 'bfloat16', 'float32' or 'float16' (or unset), got {self.dtype!r}")
        if self.kind not in ("hf", "vllm"):
            raise ConfigError(f"engine.kind must be 'hf' (transformers in-process) or 'vllm', got {self.kind!r}")
        if self.weight_sync not in ("rpc", "restart"):
            raise ConfigError(f"engine.weight_sync must be 'rpc' or 'restart', got {self.weight_sync!r}")
        if not isinstance(self.vllm_args, list) or not all(isinstance(a, str) for a in self.vllm_args):
            raise ConfigError(f"engine.vllm_args must be a list of strings (server flags), got {self.vllm_args!r}")
        if self.kind == "hf":
            given = [name for name, value in (("vllm_python", self.vllm_python), ("vllm_args", self.vllm_args),
                                              ("weight_sync", self.weight_sync != "rpc")) if value]  # fmt: skip
            if given:
                raise ConfigError(f"engine.{given[0]} only applies to kind = 'vllm'; set engine.kind = 'vllm' "
                                  "or remove it")  # fmt: skip
        elif self.device is not None:
            raise ConfigError(
                f"engine.device = {self.device!r} applies to the hf engine; a vLLM server picks its devices itself "
                "(CUDA_VISIBLE_DEVICES, or vllm_args such as --tensor-parallel-size)"
            )


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
    * ``checkpoint_every``: save a checkpoint (weights, optimizer and RNG states: ≈ 12 bytes per parameter)
      every k steps; 0: only at the end (``checkpoint_at_end``) and when a run is interrupted.
      ``keep_checkpoints``: how many of the newest checkpoints stay on disk.
    * ``dynamic_sampling``: a step keeps sampling groups of new tasks until it holds ``batch_size`` groups
      with reward variance (the ones that carry a learning signal), up to ``max_sampled_groups ×
      batch_size`` groups in all (DAPO's dynamic sampling); metrics show sampled vs used groups.
    * ``balance_by``: a task field (e.g. ``"hops"`` or ``"difficulty"``). Each epoch's shuffled order is
      interleaved so that every step takes each value of the field in its share, and with ``dynamic_sampling``
      a step is full only when every value also holds its share of the informative groups (⌈batch_size / number
      of values⌉ each, under the same cap). Without it, a run whose informative groups come mostly from one kind
      of task can train several steps in a row on that kind alone.
    * ``balance_trim`` (with ``balance_by``): each update uses as many informative groups of every value as the
      scarcest value holds; the surplus was sampled and is left out (``trimmed_groups`` in the metrics). A step
      in which one kind gave no signal then makes no update, instead of one that moves behaviour all kinds share
      (e.g. how often an agent searches) by the other kinds' signal alone.
    * ``async_updates``: the update of a step runs while the next step's rollouts are sampled with the
      previous weights (one update stale, corrected by importance sampling; see :mod:`tracerl.train.pipeline`).
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
    checkpoint_at_end: bool = True
    keep_checkpoints: int = 1
    dynamic_sampling: bool = False
    max_sampled_groups: float = 3.0
    balance_by: str | None = None
    balance_trim: bool = False
    rollout_timeout_s: float = 900.0
    tensorboard: bool = False
    wandb: bool = False
    progress: bool = True
    async_updates: bool = False

    def __post_init__(self) -> None:
        _positive_int("trainer", "epochs", self.epochs)
        _positive_int("trainer", "batch_size", self.batch_size)
        if self.max_steps is not None:
            _positive_int("trainer", "max_steps", self.max_steps)
        if self.time_budget_s is not None:
            _positive_float("trainer", "time_budget_s", self.time_budget_s)
        _positive_int("trainer", "val_every", self.val_every, minimum=0)
        _positive_int("trainer", "checkpoint_every", self.checkpoint_every, minimum=0)
        _positive_int("trainer", "keep_checkpoints", self.keep_checkpoints)
        _positive_float("trainer", "max_sampled_groups", self.max_sampled_groups)
        if self.max_sampled_groups < 1:
            raise ConfigError(
                f"trainer.max_sampled_groups = {self.max_sampled_groups} must be ≥ 1 (it caps the groups sampled "
                "per step at that multiple of batch_size)"
            )
        if self.balance_by is not None and (not isinstance(self.balance_by, str) or not self.balance_by):
            raise ConfigError(f"trainer.balance_by must be the name of a task field (e.g. 'difficulty'), got "
                              f"{self.balance_by!r}")
        if self.balance_trim and self.balance_by is None:
            raise ConfigError("trainer.balance_trim = true trims each step to the same number of informative groups "
                              "per value of balance_by, but balance_by is unset: name the task field to balance by")
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


#: TrainerConfig fields a stage of a run may set for itself
STAGE_FIELDS = ("epochs", "max_steps", "time_budget_s", "batch_size", "val_every", "temperature", "max_tokens")

#: algorithm names a run config may use
ALGORITHMS = ("grpo", "sft", "ppo", "reinforce++", "rloo", "apo")


@dataclass
class StageSpec:
    """One stage of a run config: the algorithm's name, its keyword arguments and the stage's own values of
    :data:`STAGE_FIELDS`."""

    algorithm: str
    options: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm {self.algorithm!r} is not one of {list(ALGORITHMS)}")
        unknown = sorted(set(self.trainer) - set(STAGE_FIELDS))
        if unknown:
            raise ConfigError(
                f"a stage may only set {list(STAGE_FIELDS)} of [trainer] for itself, not {unknown}"
            )


@dataclass
class RunConfig:
    """A whole run as ``tracerl train CONFIG`` reads it (see the module docstring for the TOML layout).

    ``agent`` is ``module:function``; ``train_tasks``/``val_tasks`` are JSONL paths or built-in dataset
    names (``demo-arithmetic:train``, ``demo-arithmetic:val``); ``stages`` the algorithms run one after the
    other (one ``[algorithm]`` table is a single stage); the first stage names the ``model`` (the engine
    serves that same model, later stages continue training it).
    """

    agent: str
    train_tasks: str
    val_tasks: str | None = None
    store: StoreConfig = field(default_factory=StoreConfig)
    runners: RunnerConfig = field(default_factory=RunnerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    stages: list[StageSpec] = field(default_factory=list)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    #: an agent with several roles: role name → None (served by the trained model) or a frozen model
    roles: dict[str, str | None] | None = None

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
        if not self.stages:
            raise ConfigError("the config names no algorithm: add an [algorithm] table or [[stages]]")
        model = self.stages[0].options.get("model")
        if not isinstance(model, str) or not model:
            raise ConfigError(
                "the first stage needs model = \"...\" (in [algorithm] or the first [stages.options]): a short "
                "name (smollm2-135m, tiny-random) or a model folder"
            )
        for stage in self.stages[1:]:
            stage.options.setdefault("model", model)


def _stage_from_table(raw: object, where: str) -> StageSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"algorithm", "options", "trainer"})
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; a stage has algorithm, [options] and [trainer]")
    options, trainer = raw.get("options", {}), raw.get("trainer", {})
    if not isinstance(options, dict) or not isinstance(trainer, dict):
        raise ConfigError(f"{where}: options and trainer must be tables")
    return StageSpec(algorithm=str(raw.get("algorithm", "grpo")), options=dict(options), trainer=dict(trainer))


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
    top_level = {"agent", "train_tasks", "val_tasks", "algorithm", "stages", "roles", *_SECTIONS}
    unknown = sorted(set(data) - top_level)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {source}; the known keys are {sorted(top_level)}")
    for required in ("agent", "train_tasks"):
        if required not in data:
            raise ConfigError(f"{source} has no '{required}'; add {required} = \"...\" at the top of the file")
    sections = {name: _build_section(name, cls, data.get(name, {}), source) for name, cls in _SECTIONS.items()}
    if "algorithm" in data and "stages" in data:
        raise ConfigError(f"{source} has both [algorithm] and [[stages]]; use [[stages]] for several stages")
    if "stages" in data:
        raw_stages = data["stages"]
        if not isinstance(raw_stages, list):
            raise ConfigError(f"stages in {source} must be an array of tables ([[stages]])")
        stages = [_stage_from_table(t, f"[[stages]] #{i + 1} of {source}") for i, t in enumerate(raw_stages)]
    else:
        algorithm = data.get("algorithm", {})
        if not isinstance(algorithm, dict):
            raise ConfigError(f"[algorithm] in {source} must be a table, got {type(algorithm).__name__}")
        options = dict(algorithm)
        stages = [StageSpec(algorithm=str(options.pop("name", "grpo")), options=options)]
    return RunConfig(
        agent=data["agent"],
        train_tasks=data["train_tasks"],
        val_tasks=data.get("val_tasks"),
        stages=stages,
        roles=_roles_from_table(data["roles"], source) if "roles" in data else None,
        **sections,
    )


def _roles_from_table(raw: Any, source: str) -> dict[str, str | None]:
    """``[roles]``: ``trained = ["solver"]`` (names served by the trained model) and ``frozen = {planner =
    "smollm2-135m"}`` (names served by frozen models) → role name → None or the frozen model."""
    example = 'trained = ["solver"] and frozen = { planner = "smollm2-135m" }'
    if not isinstance(raw, dict) or set(raw) - {"trained", "frozen"}:
        raise ConfigError(f"[roles] in {source} takes {example}, got {raw!r}")
    trained, frozen = raw.get("trained", []), raw.get("frozen", {})
    if not isinstance(trained, list) or not trained or not all(isinstance(n, str) and n for n in trained):
        raise ConfigError(f"[roles] trained in {source} must list the role names to train, as in {example}")
    if not isinstance(frozen, dict) or not all(isinstance(m, str) and m for m in frozen.values()):
        raise ConfigError(f"[roles] frozen in {source} must map role names to model names, as in {example}")
    both = sorted(set(trained) & set(frozen))
    if both:
        raise ConfigError(f"role(s) {both} are both trained and frozen in [roles] of {source}; name each once")
    return {**{name: None for name in trained}, **{str(k): str(v) for k, v in frozen.items()}}


def read_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """The parsed TOML file ``path``; :class:`ConfigError` (naming ``what`` and the path) when it is missing or
    not valid TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {str(path)!r} is not valid TOML: {e}") from None


def load_run_config(path: str | Path) -> RunConfig:
    """Read a run from a TOML file. Relative task paths are resolved against the file's folder."""
    path = Path(path)
    data = read_toml(path)
    for key in ("train_tasks", "val_tasks"):
        value = data.get(key)
        if isinstance(value, str) and value.endswith(".jsonl") and not Path(value).is_absolute():
            data[key] = str(path.parent / value)
    return run_config_from_dict(data, source=str(path))
