"""Algorithms that improve an agent from its recorded rollouts.

* :mod:`tracerl.algorithms.grpo`: ``GRPO`` and its validated config (this package imports only that, so
  ``tracerl.GRPO(...)`` stays cheap; torch loads when the learner is built).
* :mod:`tracerl.algorithms.transitions`: finished rollouts in a store → transitions with advantages.
* :mod:`tracerl.algorithms.batch`: transitions → padded micro-batches.
* :mod:`tracerl.algorithms.learner`: the PyTorch PPO-clip learner, its metrics and checkpoints.
"""

from __future__ import annotations

from tracerl.algorithms.grpo import GRPO, GRPOConfig, LoRAConfig

__all__ = ["GRPO", "GRPOConfig", "LoRAConfig"]
