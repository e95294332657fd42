"""Several trained models in one run: an agent with several roles, each trained role with a model of its own
(separate weights, optimizer and engine), the other roles served frozen.

    trainer = tracerl.Trainer(
        agent=plan_then_solve,                              # sends model="planner" / model="solver"
        algorithm={"planner": tracerl.GRPO(model="smollm2-135m", lr=1e-5),
                   "solver": tracerl.GRPO(model="smollm2-135m", lr=2e-5)},
        roles={"critic": "smollm2-135m"},                   # optional: roles served frozen beside them
    )

A key of the ``algorithm`` dict is the role whose calls that algorithm trains (its ``train_models``, which
may name more roles that share the model: ``GRPO(train_models=["writer", "reviser"])`` under ``"writer"``).
The gateway routes each call by its ``model`` name to that role's engine and records the name on the call
(:mod:`tracerl.gateway.routing`).

:class:`RoleModels` drives the algorithms as one :class:`~tracerl.algorithms.base.Algorithm`, so the
Trainer's loop (dynamic sampling, async updates, checkpoints) is the single-model one. One step:

1. the step's rollouts are shared by every role (``group_size`` must agree);
2. each algorithm's ``make_batch`` assigns credit over *all* of a rollout's calls, as a single-model run
   does, and keeps the calls of its own role(s); the step's traces are read from the store once and shared;
3. each algorithm updates its own model; the Trainer loads each new set of weights into that role's engine
   only (:class:`RolesResult`). Metrics of a role are prefixed ``{role}/``; checkpoints hold a folder per
   role; the final weights go to ``final/{role}/``.

Not supported (refused with a :class:`~tracerl.errors.ConfigError`): stage lists with a per-role dict,
algorithms that cannot select calls by model (no ``train_models``: SFT, APO), a role trained by two
algorithms, a role both trained and mapped in ``roles``, and the vLLM engine (trained roles are served by
in-process hf engines).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tracerl.algorithms.base import JSON, Algorithm, StepResult, check_algorithm
from tracerl.errors import ConfigError

if TYPE_CHECKING:
    from tracerl.store.base import Store
    from tracerl.types import RolloutTrace

#: batch metrics that are the same for every role (they describe the shared rollouts): logged unprefixed
SHARED_METRICS = ("reward_mean", "reward_std", "rollouts", "groups", "zero_variance_groups", "sampled_nll")


@dataclass
class RolesResult(StepResult):
    """:class:`StepResult` of a step of several models: ``per_role`` holds each algorithm's own result (its
    ``weights`` go to its role's engine); ``weights``/``weights_version`` of the whole are None/the sum."""

    per_role: dict[str, StepResult] = field(default_factory=dict[str, StepResult])


@dataclass
class RolesBatch:
    """Each role's batch of one step (same rollouts, each keeping its own role's calls)."""

    batches: dict[str, Any]

    @property
    def _first(self) -> Any:
        return next(iter(self.batches.values()))

    @property
    def groups(self) -> int:
        return int(self._first.groups)

    @property
    def informative_groups(self) -> int:
        """Groups that carry a signal for at least one of the roles."""
        return max(int(b.informative_groups) for b in self.batches.values())

    @property
    def rollouts(self) -> int:
        return int(self._first.rollouts)

    @property
    def response_tokens(self) -> int:
        return int(self._first.response_tokens)  # every call of the rollouts read, whichever role answered

    def metrics(self) -> dict[str, float]:
        first = self._first.metrics()
        out = {k: first[k] for k in SHARED_METRICS if k in first}
        for role, batch in self.batches.items():
            out |= {f"{role}/{k}": v for k, v in batch.metrics().items() if k not in SHARED_METRICS}
        return out


class RoleModels:
    """Role → algorithm, driven as one algorithm (see the module docstring). ``setup`` takes a dict
    role → (model, tokenizer) instead of one model."""

    name = "roles"

    def __init__(self, algorithms: Mapping[Any, object]) -> None:
        self.algorithms: dict[str, Algorithm] = check_role_algorithms(algorithms)
        self._checked_calls = False

    def __repr__(self) -> str:
        return f"RoleModels({self.algorithms!r})"

    def served_roles(self, key: str) -> list[str]:
        """The roles whose calls the algorithm under ``key`` trains (and whose engine serves them)."""
        return list(_train_models(self.algorithms[key]) or [key])

    # -- the Algorithm protocol ------------------------------------------------------------------
    @property
    def model(self) -> str:
        """``role=model`` of every trained role: what a checkpoint of this run trained."""
        return ",".join(f"{key}={a.model}" for key, a in self.algorithms.items())

    @property
    def group_size(self) -> int:
        return next(iter(self.algorithms.values())).group_size

    @property
    def seed(self) -> int:
        return next(iter(self.algorithms.values())).seed

    @property
    def device(self) -> str:
        return next(iter(self.algorithms.values())).device

    @property
    def weights_version(self) -> int:
        """The sum of the roles' versions (0 only while no role was updated); each engine tags its own."""
        return sum(a.weights_version for a in self.algorithms.values())

    def to_json(self) -> JSON:
        return {"name": self.name, "roles": {key: a.to_json() for key, a in self.algorithms.items()}}

    def setup(self, model: Any, tokenizer: Any = None) -> None:
        """``model``: role → (model, tokenizer), one model object per role (each algorithm changes its own)."""
        models: Mapping[str, tuple[Any, Any]] = model
        for key, algorithm in self.algorithms.items():
            algorithm.setup(*models[key])

    def items(self, train_tasks: Sequence[JSON]) -> list[JSON]:
        return next(iter(self.algorithms.values())).items(train_tasks)

    def make_batch(self, store: Store, items: Sequence[JSON], rollout_ids: Sequence[str]) -> RolesBatch:
        """Each algorithm's batch of the same rollouts. The first time, refuse a role the agent never called."""
        once = cast("Store", _TracesOnce(store))  # the step is read once, not once per role
        if not self._checked_calls:
            self._check_called(once, rollout_ids)
        return RolesBatch({key: a.make_batch(once, items, rollout_ids) for key, a in self.algorithms.items()})

    def update(self, batch: RolesBatch) -> RolesResult:
        per_role = {key: a.update(batch.batches[key]) for key, a in self.algorithms.items()}
        metrics = {f"{key}/{k}": v for key, r in per_role.items() for k, v in r.metrics.items()}
        resources = {name: value for r in per_role.values() for name, value in r.resources.items()}
        return RolesResult(metrics, self.weights_version, None, resources, per_role)

    def engine_weights(self) -> None:
        """None: there is no one set of weights; each role's are its algorithm's ``engine_weights()``."""
        return None

    def save(self, folder: Path) -> None:
        for key, algorithm in self.algorithms.items():
            algorithm.save(Path(folder) / key)

    def load(self, folder: Path) -> None:
        for key, algorithm in self.algorithms.items():
            if not (Path(folder) / key).exists():
                raise ConfigError(f"the checkpoint {folder} holds no folder for role {key!r}; it was written by a "
                                  "run with other roles: use another run_dir, or resume=False to start over")
            algorithm.load(Path(folder) / key)

    # -- helpers ---------------------------------------------------------------------------------
    def _check_called(self, store: Store, rollout_ids: Sequence[str]) -> None:
        from tracerl.algorithms.transitions import read_records

        called = {c.model for r in read_records(store, rollout_ids) if not isinstance(r, str) for c in r.calls}
        if not called:
            return  # no call at all (every rollout failed): nothing to tell about roles yet
        self._checked_calls = True
        for key in self.algorithms:
            if not called & set(self.served_roles(key)):
                raise ConfigError(
                    f"the algorithm for role {key!r} has nothing to train: in the first step the agent's calls "
                    f"named only {sorted(str(m) for m in called)}; the agent must send model={key!r} for that role, "
                    "or drop it from the algorithm dict"
                )


class _TracesOnce:
    """A store seen by the roles of one step: :meth:`get_traces` of the same rollouts is read from the store
    once and shared (credit assignment only reads the traces), so N roles cost one read a step, not N + 1;
    every other call goes to the store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._traces: dict[tuple[str, ...], list[RolloutTrace]] = {}
        self.reads = 0

    def get_traces(self, rollout_ids: Sequence[str]) -> list[RolloutTrace]:
        key = tuple(rollout_ids)
        if key not in self._traces:
            self._traces[key] = self._store.get_traces(key)
            self.reads += 1
        return self._traces[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def check_role_algorithms(algorithms: Mapping[Any, object]) -> dict[str, Algorithm]:
    """The per-role algorithm dict, validated; an algorithm without ``train_models`` gets ``[role]``."""
    if not algorithms:
        raise ConfigError("algorithm is an empty dict; map each trained role to its algorithm, "
                          "e.g. {'planner': tracerl.GRPO(...), 'solver': tracerl.GRPO(...)}")
    out: dict[str, Algorithm] = {}
    owner: dict[str, str] = {}  # role -> the key of the algorithm that trains it
    for key, value in algorithms.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"the keys of a per-role algorithm dict are the role (model) names, got {key!r}")
        if hasattr(value, "algorithm") and not hasattr(value, "make_batch"):
            raise ConfigError(f"algorithm[{key!r}] is a Stage; a per-role dict takes the algorithms themselves "
                              "(set epochs, max_steps, ... on the Trainer)")
        algorithm = check_algorithm(value)
        config = getattr(algorithm, "config", None)
        if config is None or not hasattr(config, "train_models"):
            raise ConfigError(
                f"algorithm[{key!r}] ({algorithm.name}) cannot select calls by model (it has no train_models): a "
                "per-role dict takes RL algorithms that sample rollouts (GRPO, RLOO, PPO, REINFORCE++)"
            )
        if any(algorithm is a for a in out.values()):
            raise ConfigError(f"algorithm[{key!r}] is the same object as another role's; give each role its own "
                              "algorithm (one model, optimizer and engine each)")
        selected = _train_models(algorithm)
        if selected is None:
            algorithm.config = dataclasses.replace(config, train_models=[key])  # type: ignore[attr-defined]
        elif key not in selected:
            raise ConfigError(f"algorithm[{key!r}] has train_models={selected}, which leaves out its own role "
                              f"{key!r}; add it, or leave train_models unset")
        for role in selected or [key]:
            if role in owner:
                raise ConfigError(f"role {role!r} is trained by two algorithms ({owner[role]!r} and {key!r}); "
                                  "each role's calls train one model")
            owner[role] = key
        out[key] = algorithm
    sizes = {key: a.group_size for key, a in out.items()}
    if len(set(sizes.values())) > 1:
        raise ConfigError(f"the roles share their rollouts, so their algorithms need one group_size; got {sizes}")
    return out


def check_frozen_roles(roles: Mapping[str, str | None] | None, trained: RoleModels) -> dict[str, str]:
    """``roles`` of a run of several trained models: only frozen roles, each mapped to a model name."""
    out: dict[str, str] = {}
    trained_roles = {role for key in trained.algorithms for role in trained.served_roles(key)}
    for role, model in (roles or {}).items():
        if model is None:
            raise ConfigError(
                f"roles[{role!r}] is None, but with a per-role algorithm dict the trained roles are its keys; "
                f"add {role!r} to the dict to train it, or map it to a model name to serve it frozen"
            )
        if role in trained_roles:
            raise ConfigError(f"role {role!r} is trained by the algorithm dict and also mapped in roles to "
                              f"{model!r}; drop it from roles")
        out[role] = model
    return out


def _train_models(algorithm: Algorithm) -> list[str] | None:
    value = getattr(getattr(algorithm, "config", None), "train_models", None)
    return list(value) if value is not None else None
