"""The ``Algorithm`` protocol: the one interface the Trainer drives, whatever improves the agent.

GRPO, SFT and APO (prompt optimization) implement it; the Trainer names none of them. One
*stage* of a run is one algorithm; a run may chain stages (SFT, then GRPO) on the same model. The Trainer
calls, in this order::

    algorithm.setup(model, tokenizer)            # the trainer's own copy of the model (or None for APO)
    algorithm.device                             # where it trains; the engine follows it by default
    items = algorithm.items(train_tasks)         # what the steps of this stage iterate over
    for each step:
        chunk = the next batch_size items
        if algorithm.group_size:                 # rollouts: group_size per item, one group per item,
            rollout_ids = run them                #   while the engine serves algorithm.engine_weights()
        batch = algorithm.make_batch(store, chunk, rollout_ids)    # credit assignment / tokenising
        # dynamic sampling: while batch.informative_groups < wanted (and the extra-generation cap allows),
        # more items are rolled out and make_batch runs again on all of the step's rollouts
        result = algorithm.update(batch)
        result.weights -> engine.load_weights(...)      result.resources -> new store resource versions
    algorithm.save(folder) / algorithm.load(folder)     # checkpoints (the trainer adds its loop position)

An algorithm that needs rollouts of its own beyond the step's (APO scores each candidate prompt on
validation tasks) defines ``bind(access)``: the Trainer calls it once its gateway serves, before any
rollout, with a :class:`tracerl.algorithms.apo.RolloutAccess` (store, a ``run(tasks, metadata)`` function,
the gateway URL, the train tasks, the run folder).

``make_batch`` must be a pure function of the store's content for those rollouts (the trainer may call it
again on a superset), and ``update`` does all the learning. An algorithm that needs no rollouts (SFT on
given demonstrations) has ``group_size == 0`` and gets ``rollout_ids == []``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

if TYPE_CHECKING:
    from tracerl.store.base import Store

JSON = dict[str, Any]


def json_object(value: object) -> JSON:
    """``value`` if it is a JSON object (a dict), else ``{}``: for recorded attributes, which are untrusted."""
    return cast(JSON, value) if isinstance(value, dict) else {}


def json_list(value: object) -> list[Any]:
    """``value`` if it is a JSON array (a list), else ``[]``."""
    return cast("list[Any]", value) if isinstance(value, list) else []


@runtime_checkable
class Batch(Protocol):
    """What one step trains on, as far as the Trainer needs to know."""

    #: groups (one per item that was rolled out, or one per example) in the batch
    groups: int
    #: groups that carry a learning signal (for GRPO: reward variance > 0); dynamic sampling counts these
    informative_groups: int
    #: rollouts read (0 for an algorithm without rollouts)
    rollouts: int
    #: response tokens of the step's recorded LLM calls (generation throughput)
    response_tokens: int

    def metrics(self) -> dict[str, float]:
        """Numbers about the batch for ``metrics.jsonl`` (reward mean/std, skipped groups, ...)."""
        ...


@dataclass
class StepResult:
    """What one :meth:`Algorithm.update` produced.

    ``weights``: the full weights the engine must serve from now on (None: unchanged), tagged
    ``weights_version``; ``resources``: store resources to publish as new versions (name → value), for
    example an optimized prompt.
    """

    metrics: dict[str, float]
    weights_version: int
    weights: dict[str, Any] | None = None
    resources: dict[str, JSON] = field(default_factory=dict[str, JSON])


@runtime_checkable
class Algorithm(Protocol):
    """See the module docstring for the order of calls."""

    #: short name for logs, metrics and configs (``grpo``, ``sft``)
    name: str

    @property
    def model(self) -> str:
        """The model the engine serves and the algorithm trains (a short name or a folder)."""
        ...

    @property
    def group_size(self) -> int:
        """Rollouts per item and step; 0 when the algorithm trains on data of its own."""
        ...

    @property
    def seed(self) -> int: ...

    @property
    def device(self) -> str:
        """Where the algorithm computes after :meth:`setup` (``cpu``, ``cuda``, ``cuda:1``)."""
        ...

    @property
    def weights_version(self) -> int:
        """The version of the weights it would serve now (0 = the initial weights of its stage's model)."""
        ...

    def to_json(self) -> JSON:
        """The configuration, for metrics and checkpoints."""
        ...

    def setup(self, model: Any, tokenizer: Any) -> None:
        """Build optimizer/state on ``model`` (the trainer's copy, which the algorithm may change)."""
        ...

    def items(self, train_tasks: Sequence[JSON]) -> list[JSON]:
        """What the steps iterate over: the train tasks, or the algorithm's own examples."""
        ...

    def make_batch(self, store: Store, items: Sequence[JSON], rollout_ids: Sequence[str]) -> Batch:
        """Turn one step's items and finished rollouts into a batch (reads the store, computes credit)."""
        ...

    def update(self, batch: Any) -> StepResult:
        """Learn from ``batch`` (made by :meth:`make_batch`)."""
        ...

    def engine_weights(self) -> dict[str, Any] | None:
        """The full weights to serve now (after a resume), or None if the algorithm trains no weights."""
        ...

    def save(self, folder: Path) -> None:
        """Write everything needed to continue exactly (weights, optimizer, RNG) into ``folder``."""
        ...

    def load(self, folder: Path) -> None:
        """Restore what :meth:`save` wrote, into an algorithm set up on the same model."""
        ...


def check_algorithm(algorithm: object) -> Algorithm:
    """``algorithm`` if it implements the protocol, else a :class:`ConfigError` naming what is missing."""
    from tracerl.errors import ConfigError

    missing = [
        name for name in ("name", "model", "group_size", "seed", "device", "weights_version", "to_json", "setup",
                          "items", "make_batch", "update", "engine_weights", "save", "load")
        if not hasattr(type(algorithm), name) and not hasattr(algorithm, name)
    ]  # fmt: skip
    if missing:
        raise ConfigError(
            f"algorithm must implement tracerl.algorithms.base.Algorithm (tracerl.GRPO(...), tracerl.SFT(...)); "
            f"{type(algorithm).__name__} lacks {missing}"
        )
    return cast(Algorithm, algorithm)


def chunks(items: Sequence[JSON], size: int) -> list[list[JSON]]:
    """``items`` cut into consecutive lists of at most ``size``."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
