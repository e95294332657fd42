"""The SFT learner: one optimizer step of negative log-likelihood on a batch of examples.

    L = − Σ_i Σ_j w_ij · log πθ(y_ij | x_i, y_i,<j)

with the weights ``w`` of :func:`tracerl.credit.token_weights` (``token``: ``1 / Σ_i |y_i|``, every response
token of the batch counts the same; ``rollout``: each example's tokens are averaged, then the examples).
Examples are packed and micro-batched exactly as GRPO's transitions (:mod:`tracerl.algorithms.batch`:
examples that share a prompt share one row), so the gradient does not depend on ``micro_batch_size``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from tracerl.algorithms.batch import build_micro_batches
from tracerl.algorithms.learner import UpdateResult
from tracerl.algorithms.policy import Policy
from tracerl.algorithms.sft import SFTConfig, SFTExample
from tracerl.algorithms.transitions import Transition


class SFTLearner(Policy):
    """The policy plus the SFT update."""

    config: SFTConfig

    def __init__(self, model: nn.Module, config: SFTConfig, *, pad_id: int = 0, weights_version: int = 0) -> None:
        super().__init__(model, config, pad_id=pad_id, weights_version=weights_version)

    def update(self, examples: Sequence[SFTExample]) -> UpdateResult:
        """One optimizer step on ``examples``; returns the mean NLL per token and the new weights."""
        start = time.perf_counter()
        usable = [e for e in examples if e.prompt_ids and e.response_ids]
        if not usable:
            return UpdateResult({"examples": 0.0}, None, self.weights_version)
        rows = [Transition(e.prompt_ids, e.response_ids, [0.0] * len(e.response_ids), 1.0, f"{i}")
                for i, e in enumerate(usable)]  # fmt: skip
        c = self.config
        mbs = build_micro_batches(rows, micro_batch_size=c.micro_batch_size, micro_batch_tokens=c.micro_batch_tokens,
                                  norm=c.loss_norm, pad_id=self.pad_id, share_prefix_tokens=c.share_prefix_tokens)
        self.model.train()
        loss_sum, nll_sum, tokens = 0.0, 0.0, 0
        for mb in mbs:
            mb = self.to_device(mb)
            logp = self.logprobs(mb)  # (B, R)
            loss = -(logp * mb.weights).sum()
            torch.autograd.backward(loss)
            with torch.no_grad():
                loss_sum += float(loss)
                nll_sum += float(-(logp * mb.response_mask).sum())
                tokens += int(mb.response_mask.sum())
        grad_norm = self.optimizer_step()
        self.step_count += 1
        self.weights_version += 1
        metrics = {
            "loss": loss_sum,
            "nll_per_token": nll_sum / max(tokens, 1),
            "tokens": float(tokens),
            "grad_norm": grad_norm,
            "micro_batches": float(len(mbs)),
            "lr": self.lr,
            "update_s": time.perf_counter() - start,
        }
        return UpdateResult(metrics, self.engine_state_dict(), self.weights_version)
