"""The GRPO learner: PPO-clip updates of a transformers causal LM on recorded transitions.

One :meth:`GRPOLearner.update` = ``config.epochs`` optimizer steps over one batch of transitions, each step
accumulating gradients over micro-batches::

    ℓ_tok = −min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A) + β·(exp(logπ_ref − logπθ) − (logπ_ref − logπθ) − 1)
    L     = Σ_tokens w · ℓ_tok        (w: per-rollout normalisation, see tracerl.credit.token_weights)

Which ``π_old``: a transition sampled by the weights being trained (its ``weights_version`` equals the
learner's) uses the learner's own log-probs computed in the first epoch, before any step (detached); so
``ρ`` is exactly 1 there and numerical differences between the sampling engine and the training forward
(batching, kernels, bf16) never show up as spurious ratios or clipping. A transition sampled by older
weights (allowed up to ``max_staleness`` updates, or of unknown version) uses the log-probs recorded at
sampling time, the only record of the policy that produced it, so ``ρ`` corrects for the staleness.

After an update the learner's weights version goes up by one and :attr:`UpdateResult.state_dict` holds
the full weights for the engine (LoRA adapters merged in). Checkpoints hold the trainable weights, the
optimizer state, the RNG states and the step, and resume exactly.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tracerl import credit
from tracerl.algorithms.batch import MicroBatch, build_micro_batches
from tracerl.algorithms.grpo import GRPOConfig, LoRAConfig
from tracerl.algorithms.transitions import Transition
from tracerl.errors import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "learner.pt"
CHECKPOINT_FORMAT = 1


@dataclass
class UpdateResult:
    """What one update produced: metrics, the weights for the engine (None if nothing was trained)."""

    metrics: dict[str, float]
    state_dict: dict[str, Tensor] | None
    version: int
    epochs: list[dict[str, float]] = field(default_factory=list)


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast runs natively: CUDA with bf16, or a CPU with AMX / AVX512-BF16 instructions."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


class GRPOLearner:
    """Owns the trained model, its optimizer and (when ``kl_coef > 0``) the frozen reference."""

    def __init__(self, model: nn.Module, config: GRPOConfig, *, pad_id: int = 0, weights_version: int = 0) -> None:
        self.config = config
        self.pad_id = pad_id
        self.weights_version = weights_version
        self.step = 0
        _seed_everything(config.seed)
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if config.bf16 and not bf16_supported(self.device) and self.device.type == "cuda":
            raise ConfigError("bf16=True but this GPU has no bf16 support; set bf16=False (or None to choose)")
        self.bf16 = bf16_supported(self.device) if config.bf16 is None else config.bf16
        _clear_quantization_flags(model)
        model.to(self.device)
        self.ref: nn.Module | None = None
        if config.lora is not None:
            assert isinstance(config.lora, LoRAConfig)
            model = _wrap_lora(model, config.lora)
        elif config.kl_coef > 0:
            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        # fused AdamW: one kernel per step over all parameters (CPU and CUDA); same math as the default
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        logger.info(
            "GRPO learner on %s: %d trainable parameters%s, bf16=%s",
            self.device, sum(p.numel() for p in self.params), " (LoRA)" if config.lora else "", self.bf16,
        )

    # -- forward -----------------------------------------------------------------------------------
    def _autocast(self) -> AbstractContextManager[Any]:
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def logprobs(self, mb: MicroBatch, model: nn.Module | None = None) -> Tensor:
        """``log π(response token | prefix)`` for each response position: (B, R) float32, 0 on padding.

        Runs the transformer on the packed rows, then the output head on the response positions only.
        """
        backbone, head = _backbone_and_head(model or self.model)
        with self._autocast():
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
        nll = F.cross_entropy(logits, mb.response_ids[mb.response_mask], reduction="none")  # (n,)
        out = torch.zeros(mb.response_mask.shape, dtype=torch.float32, device=nll.device)  # (B, R)
        return out.masked_scatter(mb.response_mask, -nll)

    @torch.no_grad()
    def _ref_logprobs(self, mb: MicroBatch) -> Tensor:
        if self.ref is not None:
            return self.logprobs(mb, self.ref)
        with self.model.disable_adapter():  # type: ignore[operator]  # peft: LoRA off = initial policy
            return self.logprobs(mb)

    # -- update ------------------------------------------------------------------------------------
    def update(self, transitions: Sequence[Transition]) -> UpdateResult:
        """``config.epochs`` PPO-clip optimizer steps on ``transitions``; returns metrics and new weights.

        Transitions older than ``max_staleness`` versions are dropped (``dropped_stale`` in the metrics).
        """
        c = self.config
        start = time.perf_counter()
        fresh = [
            t for t in transitions
            if t.weights_version is None or self.weights_version - t.weights_version <= c.max_staleness
        ]
        fresh = [t for t in fresh if t.response_ids and t.weight != 0.0]
        dropped = len(transitions) - len(fresh)
        if not fresh:
            logger.info("update skipped: no trainable transitions (%d given, %d dropped)", len(transitions), dropped)
            return UpdateResult({"transitions": 0.0, "dropped": float(dropped)}, None, self.weights_version)
        mbs = build_micro_batches(
            fresh, micro_batch_size=c.micro_batch_size, norm=c.loss_norm,  # type: ignore[arg-type]
            current_version=self.weights_version, pad_id=self.pad_id,
        )
        mbs = [_to_device(mb, self.device) for mb in mbs]
        old: list[Tensor] = []
        ref: list[Tensor | None] = []
        epochs: list[dict[str, float]] = []
        self.model.train()
        for epoch in range(c.epochs):
            self.optimizer.zero_grad(set_to_none=True)
            acc = _Accumulator()
            for k, mb in enumerate(mbs):
                logp = self.logprobs(mb)  # (B, R)
                if epoch == 0:
                    old.append(torch.where(mb.on_policy[:, None], logp.detach(), mb.old_logprobs))
                    ref.append(self._ref_logprobs(mb) if c.kl_coef > 0 else None)
                pg, ratio, clipped = credit.ppo_clip_token_loss(
                    logp, old[k], mb.advantages, eps_low=c.clip_eps_low, eps_high=c.clip_eps_high
                )
                loss = (pg * mb.weights).sum()
                ref_k = ref[k]
                kl = credit.k3_kl(logp, ref_k) if ref_k is not None else None
                if kl is not None:
                    loss = loss + c.kl_coef * (kl * mb.weights).sum()
                loss.backward()
                acc.add(mb, loss, pg, kl, ratio, clipped)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, c.max_grad_norm or float("inf"))
            self.optimizer.step()
            epochs.append({**acc.metrics(), "grad_norm": float(grad_norm)})
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.weights_version += 1
        first = epochs[0]
        metrics = {
            "loss": first["loss"],
            "pg_loss": first["pg_loss"],
            "kl": first["kl"],
            "clip_fraction": float(np.mean([e["clip_fraction"] for e in epochs])),
            "ratio_mean": float(np.mean([e["ratio_mean"] for e in epochs])),
            "grad_norm": float(np.mean([e["grad_norm"] for e in epochs])),
            "tokens": first["tokens"],
            "transitions": float(len(fresh)),
            "rollouts": float(len({t.rollout_id for t in fresh})),
            "dropped": float(dropped),
            "micro_batches": float(len(mbs)),
            "update_s": time.perf_counter() - start,
            "step": float(self.step),
        }
        return UpdateResult(metrics, self.engine_state_dict(), self.weights_version, epochs)

    # -- weights for the engine --------------------------------------------------------------------
    def engine_state_dict(self) -> dict[str, Tensor]:
        """The full model weights the engine should serve now (names of the plain transformers model).

        Without LoRA the tensors alias the learner's parameters: copy them (``load_state_dict`` does)
        before the next update. With LoRA each adapted weight is ``W + (alpha/r)·B·A``, freshly computed.
        """
        if self.config.lora is None:
            return {k: v.detach() for k, v in self.model.state_dict().items()}
        base = self.model.get_base_model()  # type: ignore[operator]
        out = {
            k.replace(".base_layer.", "."): v.detach() for k, v in base.state_dict().items() if ".lora_" not in k
        }
        for name, module in base.named_modules():
            if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight"):
                layer: Any = module
                weight = layer.base_layer.weight.detach()
                for adapter in layer.active_adapters:
                    weight = weight + layer.get_delta_weight(adapter).detach()
                out[f"{name}.weight"] = weight
        return out

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path) -> Path:
        """Write trainable weights, optimizer, RNG states and step to ``path/learner.pt`` (atomically)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_json(),
            "step": self.step,
            "weights_version": self.weights_version,
            "params": {n: p.detach().cpu().clone() for n, p in self._trainable()},
            "optimizer": self.optimizer.state_dict(),
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
        logger.info("saved learner checkpoint step %d to %s", self.step, target)
        return target

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` into a learner built from the same
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
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.weights_version = int(state["weights_version"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])

    def _trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.model.named_parameters() if p.requires_grad)


class _Accumulator:
    """Sums one epoch's statistics over micro-batches."""

    def __init__(self) -> None:
        self.loss = self.pg = self.kl = 0.0
        self.tokens = self.clipped = 0
        self.ratio_sum = 0.0

    @torch.no_grad()
    def add(self, mb: MicroBatch, loss: Tensor, pg: Tensor, kl: Tensor | None, ratio: Tensor, clipped: Tensor) -> None:
        mask = mb.response_mask
        self.loss += float(loss)
        self.pg += float((pg * mb.weights).sum())
        if kl is not None:
            self.kl += float((kl * mb.weights).sum())
        self.tokens += int(mask.sum())
        self.clipped += int((clipped & mask).sum())
        self.ratio_sum += float((ratio * mask).sum())

    def metrics(self) -> dict[str, float]:
        n = max(self.tokens, 1)
        return {
            "loss": self.loss,
            "pg_loss": self.pg,
            "kl": self.kl,
            "tokens": float(self.tokens),
            "clip_fraction": self.clipped / n,
            "ratio_mean": self.ratio_sum / n,
        }


def _to_device(mb: MicroBatch, device: torch.device) -> MicroBatch:
    if device.type == "cpu":
        return mb
    for name in ("input_ids", "attention_mask", "position_ids", "gather_index", "response_ids", "response_mask",
                 "old_logprobs", "advantages", "weights", "on_policy"):
        setattr(mb, name, getattr(mb, name).to(device))
    return mb


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body and the output projection of a causal LM (peft-wrapped or not)."""
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    backbone = getattr(base, "base_model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if backbone is None or backbone is base or head is None:
        raise ConfigError(
            f"{type(base).__name__} is not a transformers causal LM with a separate body and output head; "
            "use an AutoModelForCausalLM model"
        )
    return backbone, head


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _clear_quantization_flags(model: nn.Module) -> None:
    """A GGUF-loaded model is de-quantised fp32 but flagged quantized; trainers must see it as plain."""
    for attr in ("is_quantized", "_is_quantized_training_enabled"):
        if getattr(model, attr, False):
            try:
                setattr(model, attr, False)
            except AttributeError:
                pass
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None  # type: ignore[assignment]


def _wrap_lora(model: nn.Module, lora: LoRAConfig) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("lora needs peft: pip install 'tracerl[train]' (or pip install peft)") from None
    peft_config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, target_modules=lora.targets, lora_dropout=lora.dropout, bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)  # type: ignore[arg-type]
