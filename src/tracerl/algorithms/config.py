"""Configuration shared by the algorithms that train weights (GRPO, PPO, SFT, ...): model, optimizer,
precision, LoRA (:class:`PolicyConfig`), and the clipped-surrogate RL fields (:class:`ClipConfig`).

Plain dataclasses validated in ``__post_init__`` (a bad value is refused with a message naming it and the
fix); importing this module loads no torch. Each algorithm's config (``GRPOConfig``, ``PPOConfig``,
``SFTConfig``) extends one of them with its own fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from tracerl.errors import ConfigError

if TYPE_CHECKING:
    from tracerl.credit import LossNorm

LRSchedule = Literal["constant", "linear", "cosine"]


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
        # the values are what the user passed: checked as objects, whatever the annotations say
        if isinstance(self.r, bool) or not isinstance(cast(object, self.r), int) or self.r < 1:
            raise ConfigError(f"lora.r must be an integer ≥ 1 (8-64 is typical), got {self.r!r}")
        if not isinstance(cast(object, self.alpha), (int, float)) or self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be > 0 (usually 2·r), got {self.alpha!r}")
        if not (self.targets == "all-linear" or (isinstance(self.targets, list) and self.targets)):
            raise ConfigError(
                f"lora.targets must be 'all-linear' or a non-empty list of module names such as "
                f"['q_proj', 'v_proj'], got {self.targets!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")


@dataclass
class PolicyConfig:
    """The trained model and how it is optimized.

    * ``model``: name for :func:`tracerl.engines.models.load_model` (``smollm2-135m``, ``tiny-random``, a path).
    * ``lr``, ``weight_decay``, ``betas``: AdamW. ``max_grad_norm``: clip the gradient norm (None: off).
    * ``lr_schedule`` (``constant``, ``linear``, ``cosine``), ``warmup_steps``, ``lr_decay_steps``,
      ``lr_min_ratio``: the learning rate of update ``s`` (0-based; one update = one Trainer step of an RL
      algorithm, one batch of SFT), :func:`scheduled_lr`. ``warmup_steps`` ramps it up linearly; ``linear`` and
      ``cosine`` then decay it to ``lr · lr_min_ratio`` at update ``lr_decay_steps`` (counted from the start,
      warmup included) and hold it there. A decaying schedule needs ``lr_decay_steps`` (a time-budgeted run
      has no step count to decay over: set it to about the steps the budget gives, or set ``max_steps``).
      The schedule is the policy's: PPO's separate critic keeps its constant ``critic_lr``.
    * ``micro_batch_size``: sequences per forward/backward; gradients accumulate over a batch (a memory
      knob: the result does not depend on it beyond float rounding).
    * ``micro_batch_tokens``: at most this many padded tokens (packed rows × the longest row) per
      forward/backward as well; None: calls only. Activation memory grows with tokens, not calls (about
      2 MB per token for a 135M model in fp32, more for longer rows), so this bounds the learner's peak
      memory when prompts are long; a memory knob like ``micro_batch_size``.
    * ``share_prefix_tokens``: calls whose prompts share at least this many leading tokens (an agent's
      system prompt and tool schemas, an earlier turn's conversation) are packed as a tree, the shared head
      forwarded once (:mod:`tracerl.algorithms.batch`); the result is the same as packing them apart, beyond
      float rounding. None: only identical prompts share (a speed knob, like ``micro_batch_size``).
    * ``bf16``: bf16 autocast for forward/backward (weights and optimizer stay fp32); None picks it where
      the hardware runs it natively (CUDA with bf16, or a CPU with AMX/AVX512-BF16).
    * ``lora``: :class:`LoRAConfig` (or a dict of its fields) to train adapters only; None: full weights.
    * ``seed``: torch/python/numpy seeds; ``device``: ``cpu``, ``cuda``, ``cuda:N`` (None: cuda if any).
    * ``fsdp``: under torchrun, shard parameters, gradients and optimizer state across the processes with
      torch FSDP2 (``fully_shard``, :mod:`tracerl.algorithms.fsdp`) instead of a full replica per process;
      for GPUs (NCCL), full weights only (no LoRA). Off: data-parallel replicas (gloo on CPU, NCCL on GPUs).
    """

    model: str = "smollm2-135m"
    lr: float = 1e-5
    lr_schedule: LRSchedule = "constant"
    warmup_steps: int = 0
    lr_decay_steps: int | None = None
    lr_min_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    micro_batch_size: int = 8
    micro_batch_tokens: int | None = 4096
    share_prefix_tokens: int | None = 16
    bf16: bool | None = None
    lora: LoRAConfig | dict[str, Any] | None = None
    weight_decay: float = 0.0
    betas: tuple[float, float] = field(default=(0.9, 0.999))
    seed: int = 0
    device: str | None = None
    fsdp: bool = False

    def __post_init__(self) -> None:
        if not isinstance(cast(object, self.model), str) or not self.model:
            raise ConfigError(f"model must be a model name such as 'smollm2-135m' or a folder path, got {self.model!r}")
        int_at_least("micro_batch_size", self.micro_batch_size, 1)
        if self.micro_batch_tokens is not None:
            int_at_least("micro_batch_tokens", self.micro_batch_tokens, 1)
        v = self.share_prefix_tokens
        if v is not None and (isinstance(v, bool) or not isinstance(cast(object, v), int) or v < 1):
            raise ConfigError(f"share_prefix_tokens must be an integer ≥ 1, or None to share identical prompts "
                              f"only, got {v!r}")  # fmt: skip
        int_at_least("seed", self.seed, 0)
        number("lr", self.lr, low=0.0, low_open=True)
        if self.lr > 1.0:
            raise ConfigError(f"lr = {self.lr} is far too large for fine-tuning; use 1e-6 … 1e-3 (1e-5 is typical)")
        number("weight_decay", self.weight_decay, low=0.0)
        choice("lr_schedule", self.lr_schedule, ("constant", "linear", "cosine"))
        int_at_least("warmup_steps", self.warmup_steps, 0)
        number("lr_min_ratio", self.lr_min_ratio, low=0.0, high=1.0)
        if self.lr_decay_steps is not None:
            int_at_least("lr_decay_steps", self.lr_decay_steps, 1)
            if self.lr_decay_steps <= self.warmup_steps:
                raise ConfigError(f"lr_decay_steps = {self.lr_decay_steps} must be larger than warmup_steps = "
                                  f"{self.warmup_steps}: the decay starts after the warmup")
        elif self.lr_schedule != "constant":
            raise ConfigError(f"lr_schedule = {self.lr_schedule!r} decays the learning rate over lr_decay_steps "
                              "updates: set lr_decay_steps (about the steps the run will take), or use 'constant'")
        if self.max_grad_norm is not None:
            number("max_grad_norm", self.max_grad_norm, low=0.0, low_open=True)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1) such as (0.9, 0.999), got {self.betas!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if isinstance(self.lora, dict):
            try:
                self.lora = LoRAConfig(**self.lora)
            except TypeError as e:
                known = [f.name for f in dataclasses.fields(LoRAConfig)]
                raise ConfigError(f"lora {self.lora!r} has unknown keys ({e}); the known keys are {known}") from None
        elif self.lora is not None and not isinstance(cast(object, self.lora), LoRAConfig):
            raise ConfigError(f"lora must be None, a LoRAConfig or a dict of its fields, got {self.lora!r}")
        if self.device is not None and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.fsdp and self.lora is not None:
            raise ConfigError("fsdp=True shards full weights; LoRA adapters are small enough to replicate: "
                              "set fsdp=False with lora, or lora=None with fsdp")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ClipConfig(PolicyConfig):
    """The fields of the RL algorithms with a clipped surrogate loss (GRPO, RLOO, PPO, REINFORCE++).

    * ``group_size``: rollouts per task; group baselines compare rollouts of the same task.
    * ``epochs``: optimisation passes (one optimizer step each) over each batch of transitions.
    * ``clip_eps_low`` / ``clip_eps_high``: the PPO ratio is clipped to ``[1−low, 1+high]`` (DAPO raises
      ``high`` to 0.28 to let rare good tokens grow).
    * ``kl_coef``: β of the KL penalty to the frozen initial policy (0: no reference model is kept).
    * ``gamma``: the discount across the calls of a rollout.
    * ``loss_norm``: ``rollout`` (each rollout's tokens averaged, then the rollouts) or ``token``.
    * ``max_staleness``: transitions sampled by weights more than this many updates old are dropped.
    * ``tis_cap``: truncated importance sampling. The engine that sampled a call (maybe in bf16, with other
      kernels) is not exactly the learner; each on-policy token's loss is weighted by
      ``min(π_learner(x) / π_sampler(x), tis_cap)`` so that gap cannot bias the update unseen. None: off
      (the gap is measured and logged either way: ``mismatch_*`` metrics).
    * ``temperature``: the temperature the learner scores the policy at, so that the trained policy is the
      distribution the rollouts were sampled from, ``π_T = softmax(z/T)`` (greedy evaluation is the same at
      every ``T``). None: the Trainer's sampling temperature (1 outside a Trainer); a Trainer refuses
      another. Sampling above 1 keeps a near-deterministic policy exploring (after a warm start, say). At
      ``T ≠ 1`` only transitions sampled by the current weights are trained (the engine records log-probs at
      temperature 1).
    * ``train_models``: an agent with several roles names a model per role (:mod:`tracerl.gateway.routing`);
      only the calls answered by these model names are trained (None: every call). Credit is assigned over
      all of a rollout's calls first.
    """

    group_size: int = 4
    epochs: int = 1
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    kl_coef: float = 0.0
    gamma: float = 1.0
    loss_norm: LossNorm = "rollout"
    max_staleness: int = 1
    tis_cap: float | None = 2.0
    temperature: float | None = None
    train_models: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        model_names("train_models", self.train_models)
        int_at_least("group_size", self.group_size, 1)
        int_at_least("epochs", self.epochs, 1)
        int_at_least("max_staleness", self.max_staleness, 0)
        number("clip_eps_low", self.clip_eps_low, low=0.0, high=1.0, low_open=True, high_open=True)
        number("clip_eps_high", self.clip_eps_high, low=0.0, low_open=True)
        number("kl_coef", self.kl_coef, low=0.0)
        number("gamma", self.gamma, low=0.0, high=1.0, low_open=True)
        choice("loss_norm", self.loss_norm, ("rollout", "token"))
        if self.tis_cap is not None:
            number("tis_cap", self.tis_cap, low=1.0)
        if self.temperature is not None:
            number("temperature", self.temperature, low=0.0, high=10.0, low_open=True)


def build_config(cls: type[Any], what: str, **values: Any) -> Any:
    """``cls(**values)``, refusing unknown keyword names with the list of known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {what} option(s) {unknown}; the known options are {sorted(known)}")
    return cls(**values)


def scheduled_lr(
    lr: float, step: int, schedule: str = "constant", *, warmup_steps: int = 0, decay_steps: int | None = None,
    min_ratio: float = 0.0,
) -> float:  # fmt: skip
    """The learning rate of update ``step`` (0-based) under ``schedule``, with ``W = warmup_steps``,
    ``D = decay_steps``, ``r = min_ratio``:

        warmup (s < W):   lr · (s + 1) / W
        then, with p = min((s − W) / (D − W), 1):
          constant        lr
          linear          lr · (r + (1 − r) · (1 − p))
          cosine          lr · (r + (1 − r) · (1 + cos(π p)) / 2)

    so a decay starts at ``lr`` right after the warmup and reaches ``lr · r`` at update ``D``, where it stays.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant" or decay_steps is None:
        return lr
    p = min((step - warmup_steps) / (decay_steps - warmup_steps), 1.0)
    shape = 1.0 - p if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return lr * (min_ratio + (1.0 - min_ratio) * shape)


def int_at_least(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer ≥ {minimum}, got {value!r}")


def number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Refuse ``value`` unless it is a real number in the interval given by ``low``/``high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        interval = f"{lo or '(-inf'}, {hi or 'inf)'}"
        raise ConfigError(f"{name} must be in {interval}, got {value!r}")


def choice(name: str, value: object, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name} = {value!r} is not one of {list(options)}")


def model_names(name: str, value: object) -> None:
    """Refuse ``value`` unless it is None or a non-empty list of non-empty model names."""
    names = cast("list[object]", value) if isinstance(value, list) else None
    if value is not None and (not names or not all(isinstance(m, str) and m for m in names)):
        raise ConfigError(f"{name} must be None or a non-empty list of model names such as ['solver'], got {value!r}")
