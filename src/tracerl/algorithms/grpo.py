"""GRPO: the configuration users write (``tracerl.GRPO(...)``) and the object the trainer drives.

    algorithm = tracerl.GRPO(model="smollm2-135m", group_size=4, lr=1e-5, lora=None)
    batch = algorithm.transitions(store, finished_rollout_ids)   # credit assignment
    result = algorithm.update(batch.transitions)                 # one PPO-clip update
    engine.load_weights(result.state_dict, result.version)       # serve the new weights

The per-token objective, averaged per rollout then over rollouts (see :mod:`tracerl.credit`)::

    L = − mean_rollouts( mean_tokens( min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A) ) ) + β · KL_k3(πθ ‖ π_ref)
    ρ = exp(log πθ − log π_old)

The learning itself lives in :mod:`tracerl.algorithms.learner`; this module holds the validated config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracerl.errors import ConfigError

if TYPE_CHECKING:
    from tracerl.algorithms.learner import GRPOLearner, UpdateResult
    from tracerl.algorithms.transitions import CreditBatch, Transition
    from tracerl.store.base import Store

_RETURNS = ("uniform", "discounted", "step")
_ADVANTAGES = ("grpo", "rloo", "batch")
_SCALES = ("std", "none")
_NORMS = ("rollout", "token")


@dataclass
class LoRAConfig:
    """Low-rank adapters (peft) instead of full fine-tuning: only ``r``-rank updates of ``targets`` train.

    ``targets``: module names to adapt, or ``"all-linear"`` (every linear layer but the output head).
    The engine still receives full merged weights ``W + (alpha / r) · B·A`` after each update.
    """

    r: int = 16
    alpha: int = 32
    targets: str | list[str] = "all-linear"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"lora.r must be an integer ≥ 1 (8-64 is typical), got {self.r!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be > 0 (usually 2·r), got {self.alpha!r}")
        if not (self.targets == "all-linear" or (isinstance(self.targets, list) and self.targets)):
            raise ConfigError(
                f"lora.targets must be 'all-linear' or a non-empty list of module names such as "
                f"['q_proj', 'v_proj'], got {self.targets!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")


@dataclass
class GRPOConfig:
    """Everything the GRPO algorithm needs; invalid values and combinations are refused here.

    * ``model``: name for :func:`tracerl.engines.models.load_model` (``smollm2-135m``, ``tiny-random``, a path).
    * ``group_size``: rollouts per task; advantages compare rollouts of the same task.
    * ``lr``, ``weight_decay``, ``betas``: AdamW. ``max_grad_norm``: clip the gradient norm (None: off).
    * ``epochs``: optimisation passes (one optimizer step each) over each batch of transitions.
    * ``clip_eps_low`` / ``clip_eps_high``: the PPO ratio is clipped to ``[1−low, 1+high]`` (DAPO raises
      ``high`` to 0.28 to let rare good tokens grow).
    * ``kl_coef``: β of the k3 KL penalty to the frozen initial policy (0: no reference model is kept).
    * ``micro_batch_size``: calls per forward/backward; gradients accumulate over a batch (memory knob,
      the result does not depend on it beyond float rounding).
    * ``bf16``: bf16 autocast for forward/backward (weights and optimizer stay fp32); None picks it where
      the hardware runs it natively (CUDA with bf16, or a CPU with AMX/AVX512-BF16).
    * ``lora``: :class:`LoRAConfig` (or a dict of its fields) to train adapters only; None: full weights.
    * ``returns`` (``uniform``/``discounted``/``step``), ``gamma``, ``advantage`` (``grpo``/``rloo``/
      ``batch``), ``scale`` (``std``/``none``), ``adv_eps``, ``loss_norm`` (``rollout``/``token``): credit
      assignment, see :mod:`tracerl.credit`.
    * ``max_staleness``: transitions sampled by weights more than this many updates old are dropped.
    * ``seed``: torch/python/numpy seeds of the learner; ``device``: ``cpu``, ``cuda`` (None: cuda if any).
    """

    model: str = "smollm2-135m"
    group_size: int = 4
    lr: float = 1e-5
    epochs: int = 1
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    kl_coef: float = 0.0
    max_grad_norm: float | None = 1.0
    micro_batch_size: int = 8
    bf16: bool | None = None
    lora: LoRAConfig | dict[str, Any] | None = None
    returns: str = "uniform"
    gamma: float = 1.0
    advantage: str = "grpo"
    scale: str = "std"
    adv_eps: float = 1e-4
    loss_norm: str = "rollout"
    max_staleness: int = 1
    weight_decay: float = 0.0
    betas: tuple[float, float] = field(default=(0.9, 0.999))
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"model must be a model name such as 'smollm2-135m' or a folder path, got {self.model!r}")
        _int_at_least("group_size", self.group_size, 1)
        _int_at_least("epochs", self.epochs, 1)
        _int_at_least("micro_batch_size", self.micro_batch_size, 1)
        _int_at_least("max_staleness", self.max_staleness, 0)
        _int_at_least("seed", self.seed, 0)
        if self.advantage in ("grpo", "rloo") and self.group_size < 2:
            raise ConfigError(
                f"advantage={self.advantage!r} compares rollouts of the same task, so group_size must be ≥ 2 "
                f"(got {self.group_size}); raise group_size to 4-8, or use advantage='batch'"
            )
        _number("lr", self.lr, low=0.0, low_open=True)
        if self.lr > 1.0:
            raise ConfigError(f"lr = {self.lr} is far too large for fine-tuning; use 1e-6 … 1e-3 (1e-5 is typical)")
        _number("clip_eps_low", self.clip_eps_low, low=0.0, high=1.0, low_open=True, high_open=True)
        _number("clip_eps_high", self.clip_eps_high, low=0.0, low_open=True)
        _number("kl_coef", self.kl_coef, low=0.0)
        _number("adv_eps", self.adv_eps, low=0.0)
        _number("weight_decay", self.weight_decay, low=0.0)
        if self.max_grad_norm is not None:
            _number("max_grad_norm", self.max_grad_norm, low=0.0, low_open=True)
        _choice("returns", self.returns, _RETURNS)
        _choice("advantage", self.advantage, _ADVANTAGES)
        _choice("scale", self.scale, _SCALES)
        _choice("loss_norm", self.loss_norm, _NORMS)
        _number("gamma", self.gamma, low=0.0, high=1.0, low_open=True)
        if self.returns == "uniform" and self.gamma != 1.0:
            raise ConfigError(
                f"gamma = {self.gamma} has no effect with returns='uniform' (every call gets the final reward); "
                "use returns='discounted' or 'step', or leave gamma at 1.0"
            )
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1) such as (0.9, 0.999), got {self.betas!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if isinstance(self.lora, dict):
            try:
                self.lora = LoRAConfig(**self.lora)
            except TypeError as e:
                known = [f.name for f in dataclasses.fields(LoRAConfig)]
                raise ConfigError(f"lora {self.lora!r} has unknown keys ({e}); the known keys are {known}") from None
        elif self.lora is not None and not isinstance(self.lora, LoRAConfig):
            raise ConfigError(f"lora must be None, a LoRAConfig or a dict of its fields, got {self.lora!r}")
        if self.device is not None and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class GRPO:
    """The GRPO algorithm: ``tracerl.GRPO(model=..., group_size=..., lr=..., lora=None, **options)``.

    ``options`` are the other fields of :class:`GRPOConfig`. The model is loaded on :meth:`setup` (or on
    the first :meth:`update`), so building a GRPO object is cheap and never imports torch.
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        group_size: int = 4,
        lr: float = 1e-5,
        lora: LoRAConfig | dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        known = {f.name for f in dataclasses.fields(GRPOConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown GRPO option(s) {unknown}; the known options are {sorted(known)}")
        self.config = GRPOConfig(model=model, group_size=group_size, lr=lr, lora=lora, **options)
        self.learner: GRPOLearner | None = None

    def __repr__(self) -> str:
        return f"GRPO({self.config!r})"

    def setup(self, model: Any = None, *, pad_id: int | None = None) -> GRPOLearner:
        """Build the learner on ``model`` (a transformers causal LM), or load ``config.model`` if None.

        The trainer passes the model object it loaded for the engine's initial weights when it has one.
        """
        from tracerl.algorithms.learner import GRPOLearner

        if model is None:
            from tracerl.engines.models import load_model

            model, tokenizer = load_model(self.config.model)
            if pad_id is None and tokenizer.pad_token_id is not None:
                pad_id = int(tokenizer.pad_token_id)
        self.learner = GRPOLearner(model, self.config, pad_id=pad_id or 0)
        return self.learner

    def transitions(self, store: Store, rollout_ids: Sequence[str]) -> CreditBatch:
        """Credit assignment on finished rollouts with this config's returns/advantage settings."""
        from tracerl.algorithms.transitions import transitions_from_store

        c = self.config
        return transitions_from_store(
            store, rollout_ids, returns=c.returns, advantage=c.advantage, scale=c.scale,  # type: ignore[arg-type]
            gamma=c.gamma, eps=c.adv_eps,
        )

    def update(self, transitions: Sequence[Transition]) -> UpdateResult:
        """One update on ``transitions`` (see :meth:`tracerl.algorithms.learner.GRPOLearner.update`)."""
        learner = self.learner or self.setup()
        return learner.update(transitions)

    def save(self, path: str | Path) -> Path:
        if self.learner is None:
            raise ConfigError("nothing to save yet: call setup() or update() before save()")
        return self.learner.save_checkpoint(path)

    def load(self, path: str | Path) -> None:
        (self.learner or self.setup()).load_checkpoint(path)


def _int_at_least(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer ≥ {minimum}, got {value!r}")


def _number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        interval = f"{lo or '(-inf'}, {hi or 'inf)'}"
        raise ConfigError(f"{name} must be in {interval}, got {value!r}")


def _choice(name: str, value: object, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name} = {value!r} is not one of {list(options)}")
