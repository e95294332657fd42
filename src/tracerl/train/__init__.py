"""Orchestration of a run on one machine: the Trainer and what it is made of.

* :mod:`tracerl.train.trainer`: :class:`Trainer` (stages, steps, dynamic sampling, validation, metrics);
* :mod:`tracerl.train.launcher`: engine + gateway + runner processes started and stopped together, and
  :func:`run_rollouts` (also used by :func:`tracerl.evaluate`);
* :mod:`tracerl.train.checkpoints`, :mod:`tracerl.train.progress`, :mod:`tracerl.train.data` (task files and
  built-in datasets), :mod:`tracerl.train.cli` (``tracerl train CONFIG``).

Importing this package is light (torch loads when a run starts).
"""

from __future__ import annotations

from tracerl.train.trainer import FitResult, Stage, StageResult, Trainer

__all__ = ["FitResult", "Stage", "StageResult", "Trainer"]
