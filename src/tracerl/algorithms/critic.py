"""PPO's learned critic: one value ``V(s_t)`` per LLM call, read at the call's last prompt token.

Two placements (``PPOConfig.critic``):

* ``"head"`` (default): a linear value head on the policy's own final hidden state. The policy forward the
  loss needs anyway gives the state (:meth:`~tracerl.algorithms.policy.Policy.logprobs_and_state`), so the
  critic costs one ``H → 1`` projection; the value loss also trains the shared body (weighted by
  ``vf_coef``), except during critic warm-up, when the state is detached and only the head learns.
* ``"model"``: a separate causal LM body (``critic_model``, same tokenizer; None: a copy of the policy's
  initial model) with its own value head. Policy and critic do not share gradients.

    critic = Critic(hidden_size, lr=1e-4, ..., model=None)
    values = critic.values(mb, state)          # (B,) one value per call of the micro-batch
    ... (vf_coef · value_loss).backward() ...
    critic.optimizer_step()

The head starts at zero (``V ≡ 0`` before any update: the first advantages are the plain returns). The
critic has its own AdamW and learning rate; :meth:`state_dict` / :meth:`load_state_dict` carry the head,
the separate body's weights and the optimizer for exact resumes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from tracerl.algorithms.batch import MicroBatch
from tracerl.algorithms.torch_types import optimizer_step
from tracerl.errors import ConfigError


class Critic:
    """A value head, on the policy's state or on a separate model body (see the module docstring)."""

    def __init__(
        self,
        hidden_size: int,
        *,
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
        max_grad_norm: float | None,
        device: torch.device,
        model: nn.Module | None = None,
    ) -> None:
        self.device = device
        self.max_grad_norm = max_grad_norm
        self.backbone: nn.Module | None = None
        if model is not None:
            body = getattr(model, "base_model", None)
            if body is None or body is model:
                raise ConfigError(f"critic model {type(model).__name__} is not a transformers causal LM; "
                                  "use an AutoModelForCausalLM model (or critic='head')")  # fmt: skip
            self.backbone = body.to(device).train()
            hidden_size = int(model.config.hidden_size)  # type: ignore[union-attr]
        self.head = nn.Linear(hidden_size, 1).to(device)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
        self.params = [p for p in self.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=betas, weight_decay=weight_decay)

    def parameters(self) -> list[nn.Parameter]:
        body = list(self.backbone.parameters()) if self.backbone is not None else []
        return body + list(self.head.parameters())

    def values(self, mb: MicroBatch, state: Tensor | None, autocast: AbstractContextManager[Any]) -> Tensor:
        """``V`` of each call of ``mb`` (B,) float32. ``state`` (B, H): the policy's hidden state at each
        call's last prompt token (used by the ``head`` critic; a separate critic runs its own body)."""
        if self.backbone is not None:
            with autocast:
                hidden = self.backbone(
                    input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids,
                    use_cache=False,
                ).last_hidden_state  # (Bp, L, H)
            state = hidden.reshape(-1, hidden.shape[-1])[mb.gather_index[:, 0]]  # (B, H)
        if state is None:
            raise ConfigError("a value head on the policy needs the policy's state; pass logprobs_and_state()[1]")
        return self.head(state.float()).squeeze(-1)  # (B,)

    def optimizer_step(self) -> float:
        """Clip the critic's gradient norm, step, clear; returns the norm before clipping."""
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm or float("inf"))
        optimizer_step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def state_dict(self) -> dict[str, Any]:
        return {
            "head": {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()},
            "backbone": (
                {k: v.detach().cpu().clone() for k, v in self.backbone.state_dict().items()}
                if self.backbone is not None else None
            ),
            "optimizer": self.optimizer.state_dict(),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["backbone"] is None) != (self.backbone is None):
            raise ConfigError("the checkpoint's critic does not match this one (value head vs separate critic "
                              "model); resume with the same critic setting")  # fmt: skip
        self.head.load_state_dict(state["head"])
        if self.backbone is not None:
            self.backbone.load_state_dict(state["backbone"])
        self.optimizer.load_state_dict(state["optimizer"])
