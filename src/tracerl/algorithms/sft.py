"""Supervised fine-tuning as an algorithm of the Trainer: warm starts from demonstrations or good rollouts.

Three sources of examples, each turned into ``(prompt_ids, response_ids)`` pairs of the exact tokens the
served model sees:

* ``demonstrations``: OpenAI-format chat transcripts (``{"messages": [...], "tools": [...]}``, with
  assistant ``tool_calls`` and ``tool`` results), a list or a JSONL file. Each assistant turn becomes one
  example, rendered by the gateway's own chat template and tool rendering
  (:func:`tracerl.gateway.chat.render_turns`), so the trained tokens are the tokens the model is shown when
  it is served; the loss covers the assistant turn's tokens only (its end-of-turn token included).
* ``from_store``: recorded rollouts in a store (a user's production traces, recorded by the gateway or
  ingested over OTLP) whose final reward is at least ``min_reward``: every recorded LLM call of those
  rollouts, with its recorded prompt and response ids (rejection sampling from the store).
* ``group_size > 0``: rejection-sampling fine-tuning on the trainer's tasks: each step samples
  ``group_size`` rollouts per task with the current weights and trains on the calls of those whose
  reward is at least ``min_reward``.

The loss is the negative log-likelihood of the response tokens, averaged over the tokens of a batch
(``loss_norm="token"``) or per example then over examples (``"rollout"``)::

    L = − Σ_i Σ_j w_ij · log πθ(y_ij | x_i, y_i,<j),    w_ij = 1 / Σ_i |y_i|   (token)

    tracerl.Trainer(agent, algorithm=[tracerl.Stage(tracerl.SFT("smollm2-135m", demonstrations="demos.jsonl"),
                                                    epochs=2),
                                      tracerl.GRPO("smollm2-135m", group_size=8)])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracerl.algorithms.base import JSON, StepResult
from tracerl.algorithms.config import PolicyConfig, choice, int_at_least, number
from tracerl.algorithms.weights import WeightsAlgorithm
from tracerl.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from tracerl.algorithms.sft_learner import SFTLearner
    from tracerl.credit import LossNorm
    from tracerl.store.base import Store

__all__ = ["SFT", "SFTBatch", "SFTConfig", "SFTExample"]


@dataclass
class SFTConfig(PolicyConfig):
    """What SFT trains on and how (the model and optimizer fields are :class:`PolicyConfig`'s).

    * ``demonstrations``: transcripts (a list of ``{"messages", "tools"}`` dicts, or a JSONL path).
    * ``from_store``: a store URL whose successful rollouts (final reward ≥ ``min_reward``) are examples.
    * ``group_size``: > 0 samples that many rollouts per train task each step and keeps the good ones.
    * ``min_reward``: the threshold for rollouts (``from_store`` or sampled); default 1.0.
    * ``loss_norm``: ``token`` (every response token counts the same) or ``rollout`` (every example).
    * ``max_length``: examples whose prompt + response is longer are refused when loaded.
    """

    lr: float = 5e-5
    demonstrations: str | list[JSON] | None = None
    from_store: str | None = None
    group_size: int = 0
    min_reward: float = 1.0
    loss_norm: LossNorm = "token"
    max_length: int = 4096

    def __post_init__(self) -> None:
        super().__post_init__()
        int_at_least("group_size", self.group_size, 0)
        int_at_least("max_length", self.max_length, 2)
        number("min_reward", self.min_reward)
        choice("loss_norm", self.loss_norm, ("token", "rollout"))
        sources = [self.demonstrations is not None, self.from_store is not None, self.group_size > 0]
        if sum(sources) != 1:
            raise ConfigError(
                "SFT needs exactly one source of examples: demonstrations=[...] or 'file.jsonl', "
                "from_store='sqlite:///runs/prod.db' (with min_reward), or group_size=N (rejection sampling on "
                f"the train tasks); got demonstrations={self.demonstrations is not None}, "
                f"from_store={self.from_store!r}, group_size={self.group_size}"
            )
        if isinstance(self.demonstrations, str) and not Path(self.demonstrations).is_file():
            raise ConfigError(f"demonstrations file {self.demonstrations!r} does not exist")


@dataclass(slots=True)
class SFTExample:
    """One assistant turn to learn: the exact prompt ids and the response ids the loss covers."""

    prompt_ids: list[int]
    response_ids: list[int]
    source: str = ""


@dataclass
class SFTBatch:
    """One step's examples (the :class:`~tracerl.algorithms.base.Batch` SFT makes)."""

    examples: list[SFTExample]
    groups: int
    informative_groups: int
    rollouts: int = 0
    response_tokens: int = 0
    extra: dict[str, float] = field(default_factory=dict[str, float])

    def metrics(self) -> dict[str, float]:
        return {"examples": float(len(self.examples)), **self.extra}


class SFT(WeightsAlgorithm[SFTConfig, "SFTLearner"]):
    """``tracerl.SFT(model, demonstrations=... | from_store=... | group_size=..., lr=5e-5, **options)``."""

    name = "sft"
    config_class = SFTConfig

    def to_json(self) -> JSON:
        out = super().to_json()
        if isinstance(self.config.demonstrations, list):
            out["demonstrations"] = f"{len(self.config.demonstrations)} transcripts"
        return out

    def build_learner(self, model: nn.Module, pad_id: int) -> SFTLearner:
        from tracerl.algorithms.sft_learner import SFTLearner

        return SFTLearner(model, self.config, pad_id=pad_id)

    def items(self, train_tasks: Sequence[JSON]) -> list[JSON]:
        """Sampling on train tasks (``group_size > 0``), else the examples of the configured source, one
        item per example (so ``batch_size`` counts examples)."""
        if self.config.group_size > 0:
            return list(train_tasks)
        from tracerl.algorithms.sft_data import examples_from_store, examples_from_transcripts

        if self.config.from_store is not None:
            examples = examples_from_store(self.config.from_store, self.config.min_reward, self._tokenizer())
        else:
            examples = examples_from_transcripts(self.config.demonstrations or [], self._tokenizer())
        limit = self.config.max_length
        too_long = [i for i, e in enumerate(examples) if len(e.prompt_ids) + len(e.response_ids) > limit]
        if too_long:
            raise ConfigError(
                f"{len(too_long)} SFT examples (first: #{too_long[0]}) are longer than max_length="
                f"{self.config.max_length} tokens; shorten them or raise max_length"
            )
        return [{"prompt_ids": e.prompt_ids, "response_ids": e.response_ids, "source": e.source} for e in examples]

    def make_batch(self, store: Store, items: Sequence[JSON], rollout_ids: Sequence[str]) -> SFTBatch:
        if self.config.group_size > 0:
            from tracerl.algorithms.sft_data import batch_from_rollouts

            return batch_from_rollouts(store, rollout_ids, self.config.min_reward)
        examples = [SFTExample(list(i["prompt_ids"]), list(i["response_ids"]), str(i.get("source", ""))) for i in items]
        return SFTBatch(examples, groups=len(examples), informative_groups=len(examples),
                        response_tokens=sum(len(e.response_ids) for e in examples))  # fmt: skip

    def update(self, batch: SFTBatch) -> StepResult:
        return self.step_result(self._learner().update(batch.examples))

    def _tokenizer(self) -> Any:
        if self.tokenizer is None:
            self.setup()
        return self.tokenizer
