"""The trained policy shared by the weight-training algorithms (GRPO, SFT): model, optimizer, precision,
LoRA, log-probs of response tokens, the weights the engine serves, and exact checkpoints.

    policy = Policy(model, config, pad_id=tokenizer.pad_token_id)
    logp = policy.logprobs(micro_batch)          # (B, R) log π(response token | prefix), 0 on padding
    ... loss.backward() ...
    grad_norm = policy.optimizer_step()                  # clip, optimizer step, zero grads
    policy.engine_state_dict()                   # full weights for the engine (LoRA merged)

A subclass adds the loss (:class:`~tracerl.algorithms.learner.GRPOLearner`,
:class:`~tracerl.algorithms.sft_learner.SFTLearner`). Checkpoints hold the trainable weights, the optimizer
state, the RNG states, the step and the weights version, and resume exactly.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tracerl.algorithms.batch import MicroBatch
from tracerl.algorithms.config import LoRAConfig, PolicyConfig, scheduled_lr
from tracerl.algorithms.torch_types import manual_seed, optimizer_step
from tracerl.errors import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "learner.pt"
CHECKPOINT_FORMAT = 1
#: optimizer param-group keys that choose how a step is computed, not what it computes
_IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")


class Scored(NamedTuple):
    """One forward of the policy on a micro-batch (see :meth:`Policy.score`)."""

    #: (B, R) ``log π_T(response token | prefix)`` at the scoring temperature, 0 on padding (with its graph)
    logp: Tensor
    #: (B, H) the final hidden state at each call's last prompt token (what a value head reads)
    state: Tensor
    #: (B, R) the same log-probs at temperature 1 (what the engine records), detached
    raw: Tensor


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast runs natively: CUDA with bf16, or a CPU with AMX / AVX512-BF16 instructions."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_device(requested: str | None) -> torch.device:
    """``requested``, or CUDA when there is one, else the CPU."""
    if requested is not None:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device={requested!r} but this machine has no CUDA GPU; use device='cpu' or None")
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Policy:
    """Owns the trained model, its optimizer and (when ``keep_reference``) a frozen copy of the start."""

    def __init__(
        self,
        model: nn.Module,
        config: PolicyConfig,
        *,
        pad_id: int = 0,
        weights_version: int = 0,
        keep_reference: bool = False,
    ) -> None:
        self.config = config
        self.pad_id = pad_id
        self.weights_version = weights_version
        self.step_count = 0
        #: the learning rate of the last optimizer step (``config.lr`` under its schedule, :func:`scheduled_lr`)
        self.lr = config.lr
        #: the rollouts' sampling temperature: what :attr:`temperature` is when the config names none
        self.sampling_temperature = 1.0
        seed_everything(config.seed)
        self.device = pick_device(config.device)
        if config.bf16 and not bf16_supported(self.device) and self.device.type == "cuda":
            raise ConfigError("bf16=True but this GPU has no bf16 support; set bf16=False (or None to choose)")
        self.bf16 = bf16_supported(self.device) if config.bf16 is None else config.bf16
        clear_quantization_flags(model)
        model.to(self.device)
        self.ref: nn.Module | None = None
        if config.lora is not None:
            assert isinstance(config.lora, LoRAConfig)
            model = wrap_lora(model, config.lora)
        elif keep_reference:
            import copy

            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        #: with ``config.fsdp`` under torchrun: the FSDP root that runs the forward (set by the first update)
        self.sharded: nn.Module | None = None
        #: with ``config.fsdp``: the full weights gathered at the last update (what checkpoints save)
        self.full_weights: dict[str, Tensor] | None = None
        # fused AdamW: one kernel per step over all parameters (CPU and CUDA); same math as the default
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        logger.info(
            "%s on %s: %d trainable parameters%s, bf16=%s", type(self).__name__,
            self.device, sum(p.numel() for p in self.params), " (LoRA)" if config.lora else "", self.bf16,
        )

    # -- forward -----------------------------------------------------------------------------------
    def autocast(self) -> AbstractContextManager[Any]:
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @property
    def temperature(self) -> float:
        """The temperature the policy is scored at: the trained policy is ``π_T = softmax(z / T)``."""
        return float(getattr(self.config, "temperature", None) or self.sampling_temperature)

    def logprobs(self, mb: MicroBatch, model: nn.Module | None = None) -> Tensor:
        """``log π_T(response token | prefix)`` for each response position: (B, R) float32, 0 on padding.

        Runs the transformer on the packed rows, then the output head on the response positions only.
        """
        return self.score(mb, model).logp

    def logprobs_and_state(self, mb: MicroBatch, model: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`logprobs` and, from the same forward, the final hidden state at each call's last prompt
        token (B, H) (what a value head on the policy reads: PPO's critic)."""
        scored = self.score(mb, model)
        return scored.logp, scored.state

    def score(self, mb: MicroBatch, model: nn.Module | None = None) -> Scored:
        """Log-probs at the scoring temperature, the state, and the temperature-1 log-probs, from one forward."""
        if model is None and self.sharded is not None:
            return self.sharded(mb)  # type: ignore[no-any-return]
        return self.forward_logprobs(model or self.model, mb)

    def forward_logprobs(self, model: nn.Module, mb: MicroBatch) -> Scored:
        """The forward of :meth:`score` on ``model`` (also the body of the FSDP root unit).

        With logits ``z`` and scoring temperature ``T``: ``log π_T(x) = z_x/T − log Σ_v e^{z_v/T}``; the
        raw log-probs are the same at ``T = 1`` (computed only when ``T ≠ 1``, without a graph).
        """
        backbone, head = _backbone_and_head(model)
        with self.autocast():
            hidden = backbone(
                input_ids=mb.input_ids,
                attention_mask=mb.attention_mask,
                position_ids=mb.position_ids,
                use_cache=False,
            ).last_hidden_state  # (Bp, L, H)
            flat = hidden.reshape(-1, hidden.shape[-1])  # (Bp·L, H)
            picked = flat[mb.gather_index[mb.response_mask]]  # (n, H) n = response tokens
            logits = head(picked).float()  # (n, V)
        cap = getattr(getattr(backbone, "config", None), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        targets = mb.response_ids[mb.response_mask]  # (n,)
        t = self.temperature
        nll = F.cross_entropy(logits / t if t != 1.0 else logits, targets, reduction="none")  # (n,)
        out = torch.zeros(mb.response_mask.shape, dtype=torch.float32, device=nll.device)  # (B, R)
        logp = out.masked_scatter(mb.response_mask, -nll)
        if t == 1.0:
            raw = logp.detach()
        else:
            with torch.no_grad():
                raw = out.masked_scatter(mb.response_mask, -F.cross_entropy(logits, targets, reduction="none"))
        state = flat[mb.gather_index[:, 0]]  # (B, H) the position predicting response token 0: last prompt token
        return Scored(logp, state, raw)

    @torch.no_grad()
    def ref_logprobs(self, mb: MicroBatch) -> Tensor:
        """Log-probs under the policy this stage started from (the frozen copy, or LoRA switched off)."""
        if self.ref is not None:
            return self.logprobs(mb, self.ref)
        if self.config.lora is None:
            raise ConfigError("no reference policy kept: build the policy with keep_reference=True")
        peft_model: Any = self.model
        with peft_model.disable_adapter():  # peft: LoRA off = the initial policy
            return self.logprobs(mb)

    def optimizer_step(self) -> float:
        """Clip the gradient norm, take one optimizer step, clear the gradients; returns the norm before clipping."""
        c = self.config
        limit = c.max_grad_norm or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, limit)
        self.lr = scheduled_lr(c.lr, self.step_count, c.lr_schedule, warmup_steps=c.warmup_steps,
                               decay_steps=c.lr_decay_steps, min_ratio=c.lr_min_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        optimizer_step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        from tracerl.algorithms.fsdp import full_tensor

        return float(full_tensor(grad_norm))  # FSDP: a DTensor norm, gathered

    def to_device(self, mb: MicroBatch) -> MicroBatch:
        if self.device.type == "cpu":
            return mb
        for name in ("input_ids", "attention_mask", "position_ids", "gather_index", "response_ids", "response_mask",
                     "old_logprobs", "advantages", "weights", "on_policy"):
            setattr(mb, name, getattr(mb, name).to(self.device))
        return mb

    # -- weights for the engine --------------------------------------------------------------------
    def engine_state_dict(self) -> dict[str, Tensor]:
        """The full model weights the engine should serve now (names of the plain transformers model).

        Without LoRA the tensors alias the policy's parameters: copy them (``load_state_dict`` does)
        before the next update. With LoRA each adapted weight is ``W + (alpha/r)·B·A``, freshly computed.
        """
        if self.config.lora is None:
            if self.sharded is not None:  # FSDP: gathered (a collective: every rank is inside the update)
                from tracerl.algorithms.fsdp import full_tensor

                self.full_weights = {k: full_tensor(v.detach()) for k, v in self.model.state_dict().items()}
                return self.full_weights
            return {k: v.detach() for k, v in self.model.state_dict().items()}
        base = _peft_base(self.model)
        out = {
            k.replace(".base_layer.", "."): v.detach() for k, v in base.state_dict().items() if ".lora_" not in k
        }
        # a peft LoRA layer has base_layer, active_adapters and get_delta_weight
        for name, layer in cast("Iterator[tuple[str, Any]]", base.named_modules()):
            if hasattr(layer, "base_layer") and hasattr(layer, "get_delta_weight"):
                weight = layer.base_layer.weight.detach()
                for adapter in layer.active_adapters:
                    weight = weight + layer.get_delta_weight(adapter).detach()
                out[f"{name}.weight"] = weight
        return out

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path) -> Path:
        """Write trainable weights, optimizer, RNG states and step to ``path/learner.pt`` (atomically).

        Under FSDP rank 0 saves, and the other ranks (in :func:`tracerl.algorithms.distributed.follow`) take
        part in gathering the optimizer state: the file is the one a single process would write."""
        from tracerl.algorithms import distributed as dp

        if self.sharded is not None:
            if dp.rank() != 0:
                raise ConfigError(f"under FSDP rank 0 saves the checkpoint (this is rank {dp.rank()}); the other "
                                  "ranks take part from tracerl.algorithms.distributed.follow(learner)")  # fmt: skip
            dp.call_followers_to_gather_optimizer()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_json(),
            "step": self.step_count,
            "weights_version": self.weights_version,
            "params": self._checkpoint_params(),
            "optimizer": self.full_optimizer_state(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "python": random.getstate(),
                "numpy": np.random.get_state(),
            },
        }
        target = folder / CHECKPOINT_FILE
        tmp = folder / f".{CHECKPOINT_FILE}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, target)
        logger.info("saved learner checkpoint step %d to %s", self.step_count, target)
        return target

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` into a policy built from the same
        initial model and config (the KL reference is that initial model)."""
        target = Path(path)
        if target.is_dir():
            target = target / CHECKPOINT_FILE
        if not target.exists():
            raise ConfigError(f"no learner checkpoint at {str(target)!r}; save one with save_checkpoint() first")
        state = torch.load(target, map_location="cpu", weights_only=False)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(
                f"checkpoint {str(target)!r} has format {state.get('format')}, expected {CHECKPOINT_FORMAT}"
            )
        params = dict(self._trainable())
        missing = sorted(set(params) - set(state["params"]))
        unexpected = sorted(set(state["params"]) - set(params))
        if missing or unexpected:
            raise ConfigError(
                f"checkpoint {str(target)!r} does not fit this model (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}); load it into a learner with the same model and LoRA settings"
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state["params"][name])
        if state["optimizer"] is not None:
            self._load_optimizer_state(state["optimizer"])
        else:  # written by a version that saved no optimizer state under FSDP
            logger.warning("checkpoint %s has no optimizer state: AdamW moments start at 0", target)
        self.step_count = int(state["step"])
        self.weights_version = int(state["weights_version"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])

    def full_optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state dict with whole tensors: as it is in one process (or a replica); under FSDP
        gathered from the shards — a collective that rank 0 calls from :meth:`save_checkpoint` and the other
        ranks from :func:`~tracerl.algorithms.distributed.follow` (their copy has an empty ``state``)."""
        if self.sharded is None:
            return self.optimizer.state_dict()
        from tracerl.algorithms import distributed as dp
        from tracerl.algorithms.fsdp import full_optimizer_state

        return full_optimizer_state(self.optimizer, keep=dp.rank() == 0)

    def _load_optimizer_state(self, saved: dict[str, Any]) -> None:
        """``optimizer.load_state_dict(saved)`` keeping this optimizer's implementation (fused, foreach, …):
        the FSDP optimizer over the shards is not fused, a single process's is, and the state fits both."""
        for group, live in zip(saved["param_groups"], self.optimizer.param_groups, strict=False):
            for key in _IMPLEMENTATION_KEYS:
                if key in live:
                    group[key] = live[key]
        self.optimizer.load_state_dict(saved)

    def _checkpoint_params(self) -> dict[str, Tensor]:
        if self.sharded is not None:
            assert self.full_weights is not None, "sharded at the first update, which gathers the full weights"
            return {n: self.full_weights[n].cpu().clone() for n, _ in self._trainable()}
        return {n: p.detach().cpu().clone() for n, p in self._trainable()}

    def _trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.model.named_parameters() if p.requires_grad)


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body and the output projection of a causal LM (peft-wrapped or not)."""
    base: Any = _peft_base(model) if hasattr(model, "get_base_model") else model
    backbone: object = getattr(base, "base_model", None)
    head: object = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not isinstance(backbone, nn.Module) or backbone is base or not isinstance(head, nn.Module):
        raise ConfigError(
            f"{type(base).__name__} is not a transformers causal LM with a separate body and output head; "
            "use an AutoModelForCausalLM model"
        )
    return backbone, head


def _peft_base(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft-wrapped one (``PeftModel.get_base_model()``)."""
    peft_model: Any = model
    return cast(nn.Module, peft_model.get_base_model())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    manual_seed(seed)


def clear_quantization_flags(model: nn.Module) -> None:
    """A GGUF-loaded model is de-quantised fp32 but flagged quantized; trainers must see it as plain."""
    for attr in ("is_quantized", "_is_quantized_training_enabled"):
        if getattr(model, attr, False):
            try:
                setattr(model, attr, False)
            except AttributeError:
                pass
    if getattr(model, "hf_quantizer", None) is not None:
        cast(Any, model).hf_quantizer = None


def wrap_lora(model: nn.Module, lora: LoRAConfig) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("lora needs peft: pip install 'tracerl[train]' (or pip install peft)") from None
    peft_config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, target_modules=lora.targets, lora_dropout=lora.dropout, bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(cast(Any, model), peft_config)
