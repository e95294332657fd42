"""Training metrics: one JSON object per line in ``metrics.jsonl``, optional TensorBoard / W&B, and a plot.

Every record has ``step`` (training steps done so far), ``kind`` (``train`` or ``val``), ``time`` (seconds
since this ``fit`` started; a resumed run counts from 0 again) and the values of that step, for example::

    {"kind": "train", "step": 3, "time": 41.2, "reward_mean": 0.42, "reward_std": 0.31, "loss": 0.013,
     "kl": 0.0004, "clip_fraction": 0.0, "tokens_per_s": 118.0, "rollout_s": 9.1, "update_s": 3.3,
     "zero_variance_groups": 1, "sampled_groups": 2, "used_groups": 1}
    {"kind": "val", "step": 3, "time": 47.0, "val_reward": 0.5, "n": 16}

``zero_variance_groups`` counts the groups whose rollouts all got the same reward (no signal for a group
baseline); ``sampled_nll`` is the mean −log p of the sampled response tokens. Many zero-variance groups with
a ``sampled_nll`` near 0 mean the sampler has become near-deterministic (typical after a warm start): a
group's samples come out the same, so their rewards do too, and more steps of the same sampling will not help.
With dynamic sampling, ``sampled_groups`` counts the groups rolled out and ``used_groups`` the informative ones
the update used; with ``balance_trim``, ``trimmed_groups`` counts the informative ones left out to keep every
kind of task even. ``lr`` is the learning rate the update used (the algorithm's ``lr`` under its
``lr_schedule``).

A resumed run appends to the file (``append=True``), so it continues the same curve; a fresh run replaces
it. :func:`plot_rewards` turns it into a PNG of train reward (per step and smoothed) and validation reward
against the step.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tracerl.errors import ConfigError

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "run_config.json"
"""The run's configuration (``config`` of :class:`MetricsLogger`), beside the metrics: the dashboard reads the
credit mode from it."""
PLOT_FILE = "rewards.png"


class MetricsLogger:
    """Appends metric records to ``run_dir/metrics.jsonl`` and mirrors them to TensorBoard/W&B if asked."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = False,
        wandb: bool = False,
        experiment: str = "tracerl",
        config: Mapping[str, Any] | None = None,
        append: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self._t0 = time.monotonic()
        self._tb: Any = None
        self._wandb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # pyright: ignore[reportMissingImports]
            except ImportError:
                raise ConfigError(
                    "trainer.tensorboard = true needs the tensorboard package; pip install tensorboard "
                    "or set tensorboard = false"
                ) from None
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module  # pyright: ignore[reportMissingImports]
            except ImportError:
                raise ConfigError(
                    "trainer.wandb = true needs the wandb package; pip install wandb or set wandb = false"
                ) from None
            self._wandb = wandb_module.init(project=experiment, dir=str(self.run_dir), config=dict(config or {}))
        if config is not None:
            text = json.dumps(dict(config), indent=2, default=str)
            (self.run_dir / CONFIG_FILE).write_text(text, encoding="utf-8")
        self._file = self.path.open("a" if append else "w", encoding="utf-8")

    def log(self, kind: str, step: int, values: Mapping[str, Any]) -> dict[str, Any]:
        """Write one record; non-finite floats are written as ``null`` (JSON has no NaN)."""
        record: dict[str, Any] = {"kind": kind, "step": step, "time": round(time.monotonic() - self._t0, 3)}
        for key, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            record[key] = value
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        numeric = {f"{kind}/{k}": v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)
        return record

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file, in order (a torn last line from a crash is ignored)."""
    records: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return records
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("ignoring a malformed line in %s", p)
    return records


def moving_average(xs: list[float], window: int) -> list[float]:
    """``m_i = mean(x_{max(0, i−window+1)} … x_i)``: the trailing mean (shorter at the start)."""
    out: list[float] = []
    total = 0.0
    for i, x in enumerate(xs):
        total += x
        if i >= window:
            total -= xs[i - window]
        out.append(total / min(i + 1, window))
    return out


def stage_boundaries(records: list[dict[str, Any]]) -> list[tuple[float, int]]:
    """``(x, stage)`` for each stage that starts after the first: x lies halfway between the last step of the
    previous stage and the first step of this one (train records carry their 1-based ``stage``)."""
    out: list[tuple[float, int]] = []
    previous: dict[str, Any] | None = None
    for r in records:
        if r.get("kind") != "train" or "stage" not in r:
            continue
        if previous is not None and r["stage"] != previous["stage"]:
            out.append(((previous["step"] + r["step"]) / 2, int(r["stage"])))
        previous = r
    return out


def plot_rewards(metrics_path: str | Path, png_path: str | Path, *, title: str = "tracerl") -> Path:
    """Plot train reward per step (and its moving average) and held-out reward into ``png_path``; a dashed
    line marks where each later stage of a multi-stage run (e.g. SFT, then GRPO) begins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r["kind"] == "train" and r.get("reward_mean") is not None]
    val = [r for r in records if r["kind"] == "val" and r.get("val_reward") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        steps = [r["step"] for r in train]
        mean = [r["reward_mean"] for r in train]
        window = max(1, len(train) // 10)
        ax.plot(steps, mean, color="tab:blue", alpha=0.3, linewidth=1, label="train reward per step (sampled)")
        if window > 1:
            smooth = moving_average(mean, window)
            ax.plot(steps, smooth, color="tab:blue", label=f"train reward, mean of {window} steps")
    if val:
        ax.plot(
            [r["step"] for r in val], [r["val_reward"] for r in val],
            marker="o", label="held-out reward (greedy)", color="tab:orange",
        )
    for x, stage in stage_boundaries(records):
        ax.axvline(x, color="gray", linestyle="--", linewidth=1)
        ax.annotate(f"stage {stage}", (x, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", color="gray", fontsize=8)
    values = [r["reward_mean"] for r in train] + [r["val_reward"] for r in val]
    if values:  # show the whole [0, 1] reward range (or more, for rewards outside it) so rises are not magnified
        ax.set_ylim(min(0.0, *values) - 0.02, max(1.0, *values) + 0.02)
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend(loc="lower right")
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
